"""The Terraform export as data: a lab and facts in, HCL and notes out, no Proxmox. Each thing the provider cannot
express is one note; the files stay fmt-clean and inside the provider's schema in every case."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from homelab.adapters.proxmox.guests import Guest
from homelab.adapters.proxmox.labvms import LiveVm
from homelab.adapters.proxmox.marks import describe_vm, parse_mark
from homelab.adapters.proxmox.versions import TemplateVersion
from homelab.adapters.proxmox.vmconfig import desired_config, encode_config
from homelab.export.facts import ExportFacts
from homelab.export.files import TerraformExport, build_export
from homelab.export.hcl import quote
from homelab.export.terraform import TRANSLATED
from homelab.lab.models import Lab
from tests.harness import terraform as tf
from tests.harness.labs import SSH_KEY, make_lab

VMS = [{"name": "web", "disk": "20G", "ip": "10.10.0.10", "tags": ["docker"]}, {"name": "db", "ip": "dhcp"}]
OLD, NEW = "202601010000", "202602010000"
TEMPLATE_CONFIG = {
    "scsihw": "virtio-scsi-single",
    "scsi0": "local-lvm:base-9000-disk-0,cache=writeback,discard=on,iothread=1,size=8G",
    "ide2": "local-lvm:vm-9000-cloudinit,media=cdrom",
    "net0": "virtio=BC:24:11:00:90:00,bridge=vmbr0,firewall=1",
    "serial0": "socket",
    "vga": "serial0",
    "ostype": "l26",
    "cpu": "x86-64-v2-AES",
    "sockets": 1,
    "balloon": 0,
    "template": 1,
}


def lab(vms: list[dict[str, Any]] | None = None, **sections: Any) -> Lab:
    """Lab home (no Proxmox answers it) with ``vms``, the template debian; ``sections`` as lab_data takes them."""
    return make_lab(None, vms or VMS, "home", **{"templates": [{"name": "debian"}], **sections})


def version(v: str, vmid: int, node: str = "pve1") -> Guest:
    return Guest(vmid, node, f"debian-{v}", template=True, tags=("homelab-template",))


def running(model: Lab, name: str, vmid: int, v: str = OLD, node: str = "pve1", **config: Any) -> LiveVm:
    """A VM as homelab made it: the template's hardware, its own disk and MAC, the desired config."""
    vm = next(vm for vm in model.vms if vm.name == name)
    desired = desired_config(model, vm, TemplateVersion(9000, "pve1", f"debian-{v}", v, "debian"))
    full = {
        **TEMPLATE_CONFIG,
        **encode_config(desired),
        "scsi0": f"local-lvm:vm-{vmid}-disk-0,discard=on,iothread=1,size={vm.disk // 1024**3}G",
        "net0": f"virtio=BC:24:11:00:{vmid % 100:02d}:01,bridge=vmbr0,firewall=1",
        **config,
    }
    full.pop("template")
    description = str(full["description"])
    return LiveVm(vmid, name, node, "running", (), full, parse_mark(description))


def export(model: Lab, guests: tuple[Guest, ...], managed: tuple[LiveVm, ...], **facts: Any) -> TerraformExport:
    configs = {g.vmid: TEMPLATE_CONFIG for g in guests if g.template}
    return build_export(model, ExportFacts(guests=guests, managed=managed, template_configs=configs, **facts))


def written(result: TerraformExport, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """The files on disk, checked: fmt-clean, HCL2, inside the provider's schema; parsed."""
    for name, text in result.files.items():
        (tmp_path / name).write_text(text)
    checked = tf.fmt_check(tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    parsed = tf.parse(tmp_path)
    assert tf.schema_problems(parsed, tf.load_schema()) == []
    return parsed


def test_every_key_homelab_owns_is_written() -> None:
    model = lab()
    config = desired_config(
        model, model.vms[0], TemplateVersion(9000, "pve1", "debian-x", "x", "debian"), admin_key=SSH_KEY
    )
    assert set(config) == set(TRANSLATED)


def test_a_running_lab_is_imported_and_a_missing_vm_is_created(tmp_path: Path) -> None:
    model = lab()
    web = running(model, "web", 100)
    result = export(model, (version(OLD, 9000),), (web,))
    assert result.notes == ()
    parsed = written(result, tmp_path)
    assert [tf.unquote(b["id"]) for b in tf.blocks(parsed, "import")] == ["pve1/100"]
    vms = {name: body for (_, name), body in tf.resources(parsed).items()}
    assert vms["web"]["vm_id"] == 100 and "vm_id" not in vms["db"]  # Terraform picks the new VM's id
    assert tf.unquote(vms["web"]["network_device"][0]["mac_address"]) == "BC:24:11:00:00:01"
    assert "mac_address" not in vms["db"]["network_device"][0]  # never the template's MAC
    assert vms["db"]["clone"][0]["vm_id"] == 9000
    hardware = vms["db"]
    assert tf.unquote(hardware["scsi_hardware"]) == "virtio-scsi-single"
    assert tf.unquote(hardware["cpu"][0]["type"]) == "x86-64-v2-AES" and hardware["memory"][0]["floating"] == 0
    assert hardware["disk"][0]["iothread"] is True and tf.unquote(hardware["disk"][0]["discard"]) == "on"
    assert tf.unquote(hardware["disk"][0]["cache"]) == "writeback" and "aio" not in hardware["disk"][0]
    assert hardware["network_device"][0]["firewall"] is True
    assert tf.unquote(hardware["vga"][0]["type"]) == "serial0"
    assert tf.unquote(hardware["serial_device"][0]["device"]) == "socket"
    assert tf.unquote(vms["web"]["description"]) == web.config["description"]
    assert result.files["README.md"].count("created by Terraform") == 1


def test_a_full_clone_on_another_node_names_its_storage_and_the_templates_node(tmp_path: Path) -> None:
    model = lab([{"name": "db", "ip": "dhcp", "node": "pve2", "full": True}])
    parsed = written(export(model, (version(OLD, 9000),), ()), tmp_path)
    clone = tf.resources(parsed)[("proxmox_virtual_environment_vm", "db")]["clone"][0]
    assert clone["full"] is True and tf.unquote(clone["datastore_id"]) == "local-lvm"
    assert tf.unquote(clone["node_name"]) == "pve1"


def test_what_the_provider_cannot_say_is_one_note_each(tmp_path: Path) -> None:
    model = lab(
        [
            {"name": "web", "disk": "20G", "ip": "10.10.0.10"},
            {"name": "db", "ip": "dhcp", "disk": "1536M"},
            {"name": "01-cache", "ip": "dhcp", "template": "alpine"},
        ],
        templates=[{"name": "debian"}, {"name": "alpine", "vmid_range": [9100, 9199]}],
    )
    web = running(model, "web", 100, net0="virtio=BC:24:11:00:00:01,bridge=vmbr9")
    leftover = running(model, "web", 99)
    orphan = LiveVm(105, "old", "pve1", "running", (), {}, {"lab": "home", "vm": "old"})
    result = export(model, (version(OLD, 9000), version(NEW, 9001)), (leftover, web, orphan))
    notes = "\n".join(result.notes)
    assert len(result.notes) == 6, notes
    assert "web: VM 99 is left over from an interrupted replace" in notes
    assert "web: it runs debian-202601010000; `homelab apply` would replace it with debian-202602010000" in notes
    assert "terraform apply -replace=proxmox_virtual_environment_vm.web" in notes
    assert "web: net0 is on vmbr9 on Proxmox, the lab's bridge is vmbr0" in notes
    assert "db: disk 1536M: the provider takes whole GiB; written as 2G" in notes
    assert "01-cache: not exported: no version of template 'alpine' on Proxmox" in notes
    assert "VM 105 (old) is marked as lab home's but not in the lab file: not exported" in notes
    assert all(note in result.files["README.md"] for note in result.notes)
    parsed = written(result, tmp_path)
    vms = {name: body for (_, name), body in tf.resources(parsed).items()}
    assert sorted(vms) == ["db", "web"] and vms["db"]["disk"][0]["size"] == 2
    assert vms["web"]["vm_id"] == 100 and vms["web"]["clone"][0]["vm_id"] == 9000  # the version it runs
    assert [tf.unquote(b["id"]) for b in tf.blocks(parsed, "import")] == ["pve1/100"]


def test_a_vm_whose_version_was_pruned_keeps_its_mark_and_clones_the_newest(tmp_path: Path) -> None:
    model = lab([{"name": "web", "ip": "10.10.0.10"}])
    web = running(model, "web", 100, v=OLD)
    result = export(model, (version(NEW, 9001),), (web,))
    assert result.notes[0] == (
        "web: it runs debian-202601010000, which is no longer on Proxmox; the clone block names debian-202602010000 "
        "(Terraform clones only when it makes the VM anew)"
    )
    parsed = written(result, tmp_path)
    body = tf.resources(parsed)[("proxmox_virtual_environment_vm", "web")]
    assert body["clone"][0]["vm_id"] == 9001
    assert tf.unquote(body["description"]) == web.config["description"]  # the mark still names what it runs
    assert "| debian-202602010000 (9001) |" in result.files["README.md"]


def test_a_namesake_is_never_imported_and_a_taken_vmid_is_said() -> None:
    model = lab([{"name": "web", "ip": "10.10.0.10", "vmid": 120}])
    stranger = LiveVm(120, "web", "pve1", "running", (), {"description": "mine"}, None)
    guests = (version(OLD, 9000), Guest(120, "pve1", "web"))
    result = export(model, guests, (), namesakes=(stranger,))
    assert result.notes == (
        "web: VM 120 is also named web but is not marked as lab home's: not imported; Terraform makes a new VM "
        "beside it",
        "web: vmid 120 is taken by a VM this lab does not manage: terraform apply fails",
    )
    assert result.imported == () and "import {" not in result.files["imports.tf"]


def test_a_name_that_is_no_identifier_and_a_password_login(tmp_path: Path) -> None:
    model = lab(
        [{"name": "01-web", "ip": "10.10.0.10"}],
        proxmox={"url": "https://pve.test:8006", "node": "pve1", "user": "root@pam", "verify_tls": False},
    )
    parsed = written(export(model, (version(OLD, 9000),), ()), tmp_path)
    assert list(tf.resources(parsed)) == [("proxmox_virtual_environment_vm", "vm_01-web")]
    provider = parsed["provider.tf"]["provider"][0]['"proxmox"']
    assert provider["username"] == "${var.proxmox_username}" and "api_token" not in provider
    variables = {tf.unquote(k): v for entry in tf.blocks(parsed, "variable") for k, v in entry.items()}
    assert variables["proxmox_insecure"]["default"] is True
    assert "PROXMOX_VE_PASSWORD" in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize("text", ['a "b" c', "x${var.secret}y", "%{ if true }z%{ endif }", "back\\slash\nnew line"])
def test_strings_are_escaped_never_read_as_expressions(text: str, tmp_path: Path) -> None:
    hcl2 = pytest.importorskip("hcl2")
    parsed = hcl2.loads(f"x = {quote(text)}\n")
    assert tf.unquote(parsed["x"]) == text


def test_the_description_stays_the_one_homelab_writes() -> None:
    model = lab()
    web = running(model, "web", 100)
    line = describe_vm("home", "web", "debian", OLD, "ready")
    assert web.config["description"] == line
    assert quote(line) in export(model, (version(OLD, 9000),), (web,)).files["vms.tf"]
