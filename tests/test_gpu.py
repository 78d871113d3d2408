"""GPU passthrough end to end against the least-privilege fake: a lab VM's ``gpu`` names a Proxmox PCI resource
mapping; apply gives the VM ``hostpci0: mapping=<name>``; a mapping the cluster lacks (or has on another node) is
refused before anything changes with the lab file's line and key; a token without Mapping.Use on the mapping is
named by doctor with its fix; and the media stack's Jellyfin gets /dev/dri with the VM's render group."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from homelab.demo.launcher import FakeProxmox
from homelab.deploy.render import render_lab, write_tree
from homelab.lab.loader import parse_lab
from tests.harness.cli import run_cli
from tests.harness.docker import COMPOSE, needs_compose
from tests.harness.labs import lab_data, write_lab
from tests.test_deploy_removed import homelab_files
from tests.test_provision import managed, writes
from tests.test_stack_files import one_vm

TOKEN = "homelab@pve!homelab"
DEVICE = "node=pve1,path=0000:00:02.0,id=8086:46a6"
IMPORTS = {"local": {"type": "dir", "active": 1, "content": "iso,vztmpl,backup,import", "path": "/var/lib/vz"}}
WITH_IMPORTS = pytest.mark.fake_pve(storages=IMPORTS)  # the lab's template is a cloud image: doctor wants one


def root_api(fake: FakeProxmox) -> Any:
    """The fake as root@pam (password login): what an admin does in the web UI."""
    from proxmoxer import ProxmoxAPI

    return ProxmoxAPI(fake.host, port=fake.port, user=fake.user, password=fake.password, verify_ssl=fake.cafile)


def add_mapping(fake: FakeProxmox, name: str = "igpu", device: str = DEVICE, use: bool = True) -> None:
    """A PCI resource mapping made by root, and (``use``) Mapping.Use on it for the token and its user."""
    root_api(fake).cluster.mapping.pci.post(id=name, map=[device])
    if use:
        for who in (TOKEN, TOKEN.split("!")[0]):
            fake.call("grant", who=who, path=f"/mapping/pci/{name}", privileges=["Mapping.Use"])


@pytest.fixture
def lab(tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    vms = [{"name": "plain", "ip": "10.10.0.11"}, {"name": "media", "ip": "10.10.0.10", "gpu": "igpu"}]
    return write_lab(tmp_path / "lab.yml", lab_data(fake_pve, vms))


def gpu_line(lab: Path) -> int:
    return next(i for i, line in enumerate(lab.read_text().splitlines(), 1) if "gpu: igpu" in line)


@pytest.mark.integration
@WITH_IMPORTS
def test_apply_passes_the_mapping_and_the_token_can_use_only_that(lab: Path, fake_pve: FakeProxmox) -> None:
    assert fake_pve.token_id == TOKEN  # the README's role, not root
    add_mapping(fake_pve)
    doctor = run_cli("doctor", lab=lab)
    assert (doctor.exit_code, doctor.stderr) == (0, "")
    result = run_cli("apply", "--yes", lab=lab)
    assert result.exit_code == 0, result.stderr
    vms = managed(fake_pve)
    assert vms["media"]["config"]["hostpci0"] == "mapping=igpu" and vms["media"]["status"] == "running"
    assert "hostpci0" not in vms["plain"]["config"]
    assert run_cli("plan", lab=lab).exit_code == 0  # the mapping is what the lab says: nothing to change
    # the fake refuses what PVE refuses a token: a raw PCI id, and a mapping it holds no Mapping.Use on
    from proxmoxer import ProxmoxAPI
    from proxmoxer.core import ResourceException

    token = ProxmoxAPI(
        fake_pve.host,
        port=fake_pve.port,
        user=TOKEN.split("!")[0],
        token_name="homelab",
        token_value=fake_pve.token_secret,
        verify_ssl=fake_pve.cafile,
    )
    vmid = vms["plain"]["vmid"]
    with pytest.raises(ResourceException, match="only root can set 'hostpci0' config for non-mapped devices"):
        token.nodes("pve1").qemu(vmid).config.put(hostpci0="0000:00:02.0")
    add_mapping(fake_pve, "other", use=False)
    with pytest.raises(ResourceException, match=r"Permission check failed \(/mapping/pci/other, Mapping.Use\)"):
        token.nodes("pve1").qemu(vmid).config.put(hostpci0="mapping=other")
    with pytest.raises(ResourceException, match="q35 machine model is not enabled"):
        token.nodes("pve1").qemu(vmid).config.put(hostpci0="mapping=igpu,pcie=1")
    assert [m["id"] for m in token.cluster.mapping.pci.get()] == ["igpu"]  # PVE lists only what it may use


@pytest.mark.integration
@WITH_IMPORTS
def test_a_missing_mapping_is_refused_with_its_line_before_anything_changes(lab: Path, fake_pve: FakeProxmox) -> None:
    line = gpu_line(lab)
    fake_pve.requests(clear=True)
    for command in ("plan", "apply"):
        result = run_cli(command, *(["--yes"] if command == "apply" else []), lab=lab)
        assert result.exit_code == 2, result.stdout
        assert result.stderr.startswith(
            f"{lab}:{line}: vms[1].gpu: PCI resource mapping 'igpu' is not in the cluster, or the token lacks "
            "Mapping.Use on /mapping/pci/igpu (mappings it may use: none)"
        ), result.stderr
        assert "Traceback" not in result.stderr + result.stdout
    assert writes(fake_pve) == []
    status = run_cli("status", lab=lab)  # reading does not need the GPU: only what creates or configures VMs
    assert "PCI resource mapping" not in status.stderr and "media" in status.stdout, status.stderr
    add_mapping(fake_pve, device=DEVICE.replace("pve1", "pve2"))  # a device on another node only
    result = run_cli("plan", lab=lab)
    assert result.exit_code == 2
    assert f"{lab}:{line}: vms[1].gpu: PCI resource mapping 'igpu' has no device on node 'pve1'" in result.stderr


@pytest.mark.integration
@WITH_IMPORTS
def test_doctor_names_a_missing_mapping_use_with_its_fix(lab: Path, fake_pve: FakeProxmox) -> None:
    add_mapping(fake_pve, use=False)
    result = run_cli("doctor", lab=lab)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"token {TOKEN} lacks Mapping.Use on /mapping/pci/igpu (pass the VM its GPU through the PCI resource "
        'mapping (vms[].gpu)): pveum role modify Homelab --append 1 --privs "Mapping.Use" && '
        f"pveum acl modify /mapping/pci/igpu --roles Homelab --users homelab@pve --tokens '{TOKEN}'"
    ]
    fake_pve.requests(clear=True)
    result = run_cli("up", "--yes", lab=lab)
    assert result.exit_code == 2 and "lacks Mapping.Use on /mapping/pci/igpu" in result.stderr
    assert writes(fake_pve) == []


def gpu_lab(**extra: Any) -> Any:
    data = one_vm(**extra)
    data["vms"][0]["gpu"] = "igpu"
    return parse_lab(yaml.safe_dump(data))


def test_jellyfin_gets_dev_dri_and_the_render_group_the_deploy_writes() -> None:
    files = {f.path: f for f in render_lab(gpu_lab())["all"].files}
    env = files["media/.env"]
    assert "RENDER_GID=@RENDER_GID@" in env.content.splitlines() and env.host_ids
    gpu = yaml.safe_load(files["media/compose.gpu.yml"].content)["services"]["jellyfin"]
    assert gpu["devices"] == ["/dev/dri:/dev/dri"] and len(gpu["group_add"]) == 1
    assert gpu["group_add"][0].startswith("${RENDER_GID:?")
    plain = {f.path: f for f in render_lab(parse_lab(yaml.safe_dump(one_vm())))["all"].files}
    assert "RENDER_GID" not in plain["media/.env"].content and "compose.gpu.yml" not in plain["media/.env"].content


@needs_compose
def test_compose_reads_the_render_group_as_the_host_puts_it_in(tmp_path: Path) -> None:
    assert COMPOSE is not None
    write_tree(render_lab(gpu_lab())["all"], tmp_path)
    env = tmp_path / "media" / ".env"
    raw = env.read_text().replace("@PUID@", "1000").replace("@PGID@", "1000")
    env.write_text(raw.replace("RENDER_GID=@RENDER_GID@\n", ""))
    unset = subprocess.run([COMPOSE, "config"], cwd=env.parent, capture_output=True, text=True)
    assert unset.returncode != 0 and "render group id" in unset.stderr  # never a container without the group
    env.write_text(raw.replace("@RENDER_GID@", "993"))
    out = subprocess.run([COMPOSE, "config"], cwd=env.parent, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    jellyfin = yaml.safe_load(out.stdout)["services"]["jellyfin"]
    assert jellyfin["devices"] == ["/dev/dri:/dev/dri"] and jellyfin["group_add"] == ["993"]


def test_the_host_side_module_puts_in_the_render_groups_id(monkeypatch: pytest.MonkeyPatch) -> None:
    module = homelab_files()
    monkeypatch.setattr(module.grp, "getgrnam", lambda name: SimpleNamespace(gr_gid=993 if name == "render" else 0))
    assert module._render_gid() == 993

    def no_group(name: str) -> Any:
        raise KeyError(name)

    monkeypatch.setattr(module.grp, "getgrnam", no_group)
    with pytest.raises(ValueError, match="no group 'render' on this host"):
        module._render_gid()
