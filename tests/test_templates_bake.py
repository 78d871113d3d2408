"""The bake: a cloud-image template gets qemu-guest-agent installed over SSH before it becomes a template.

The fake Proxmox is agent-less like a stock cloud image; the build VM is an SSH test host with stand-ins for
apt-get, systemctl and cloud-init (tests.harness.buildhost). The fake sees the install on that host's files
when the build VM stops, and only then does the template's (and its clones') agent answer.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from homelab.demo.launcher import FakeProxmox
from homelab.templates.build import build_template
from homelab.templates.leftovers import BuildFailed
from tests.harness.buildhost import BuildHost
from tests.harness.cli import run_cli
from tests.harness.fixtures_build import bake_network
from tests.harness.labs import lab_data, make_lab, write_lab
from tests.test_templates_support import IMAGE, LOCAL_WITH_IMPORT, api_for, vm_config

pytestmark = [pytest.mark.integration, pytest.mark.fake_pve(guests=[], storages=LOCAL_WITH_IMPORT)]
NOW = datetime(2026, 11, 2, 8, 15, 42, tzinfo=UTC)
BUILD_ONLY = ("ciuser", "sshkeys", "ipconfig0", "nameserver", "searchdomain")


def _lab_file(tmp_path: Path, fake: FakeProxmox, host: BuildHost, vms: list[dict[str, str]] | None = None) -> Path:
    data = lab_data(fake, vms, templates=[{"name": "base", "image": IMAGE}], network=bake_network(host))
    return write_lab(tmp_path / "lab.yml", data)


def test_template_build_bakes_the_agent_in_and_a_clone_of_it_has_one(
    tmp_path: Path, fake_pve: FakeProxmox, build_host: BuildHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    lab = _lab_file(tmp_path, fake_pve, build_host, [{"name": "web", "ip": "10.10.0.10"}])

    result = run_cli("template", "build", "--yes", lab=lab)

    assert result.exit_code == 0, result.stdout + result.stderr
    out = result.stdout
    # the plan shows the bake, then progress says what it does
    assert f"bake VM 9000: start it at {build_host.address}, log in over SSH as homelab" in out
    assert "taken on first contact, for this build only, never recorded" in out
    for line in (
        f"{build_host.address} offered SSH host key SHA256:",
        "bake: waiting for cloud-init to finish",
        "bake: installing qemu-guest-agent git",
        "bake: enabling qemu-guest-agent",
        "bake: shutting VM 9000 down",
    ):
        assert line in out, line
    (template,) = [vm for vm in fake_pve.vms() if vm["template"]]
    config = template["config"]
    assert set(config["tags"].split(";")) == {"guest-agent", "homelab-template", "homelab-test"}
    assert [key for key in BUILD_ONLY if key in config] == []  # the build's cloud-init settings are gone
    assert "media=cdrom" in config["ide2"]  # the cloud-init drive stays: clones get their own settings on it
    assert fake_pve.call("agent_disks") == [9000]
    # what the bake did, as the build host's files show it
    assert build_host.exists("/var/lib/dpkg/info/qemu-guest-agent.list")
    assert build_host.exists("/etc/systemd/system/multi-user.target.wants/qemu-guest-agent.service")
    assert build_host.exists("/var/lib/homelab-test/cloud-init-clean")
    assert not build_host.exists("/etc/ssh/ssh_host_ed25519_key")  # each clone makes its own
    assert build_host.host.exec(["cat", "/etc/machine-id"]).stdout == ""
    # the build VM's key was trusted for the build only: nothing recorded it
    state = tmp_path / "state" / "test"
    assert not (state / "hosts.json").exists()
    assert [p.name for p in state.rglob("*known_hosts*")] == []

    result = run_cli("apply", "--yes", lab=lab)
    assert result.exit_code == 0, result.stdout + result.stderr
    (web,) = [vm for vm in fake_pve.vms() if vm["name"] == "web"]
    assert web["agent"] and web["vmid"] in fake_pve.call("agent_disks")
    hosts = json.loads((state / "hosts.json").read_text())["hosts"]
    assert [(h["name"], h["address"]) for h in hosts] == [("web", "10.10.0.10")]


def test_a_bake_whose_install_fails_removes_the_build_vm_and_says_why(
    tmp_path: Path, fake_pve: FakeProxmox, build_host: BuildHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    lab = _lab_file(tmp_path, fake_pve, build_host)
    build_host.fail_apt("E: Unable to locate package qemu-guest-agent")

    result = run_cli("template", "build", "--yes", lab=lab)

    assert result.exit_code != 0
    message = result.stdout + result.stderr
    assert "installing qemu-guest-agent git failed: E: Unable to locate package qemu-guest-agent" in message
    assert "VM 9000 was removed" in message and "Traceback" not in message
    assert fake_pve.vms() == [] and fake_pve.call("agent_disks") == []


def test_a_held_dpkg_lock_is_waited_out(
    tmp_path: Path, fake_pve: FakeProxmox, build_host: BuildHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = make_lab(fake_pve, templates=[{"name": "base", "image": IMAGE}], network=bake_network(build_host))
    api = api_for(fake_pve, lab, monkeypatch)
    build_host.hold_apt_lock_once()  # cloud-init's or an unattended upgrade's apt holds it at first boot

    result = build_template(api, lab, "base", now=NOW)

    assert fake_pve.call("agent_disks") == [result.version.vmid]


def test_ctrl_c_during_the_bake_removes_the_build_vm(
    fake_pve: FakeProxmox, build_host: BuildHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = make_lab(fake_pve, templates=[{"name": "base", "image": IMAGE}], network=bake_network(build_host))
    api = api_for(fake_pve, lab, monkeypatch)
    lines: list[str] = []

    def progress(line: str) -> None:
        lines.append(line)
        if line.startswith("bake: installing"):
            assert vm_config(fake_pve, 9000) is not None
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_template(api, lab, "base", progress, now=NOW)

    assert vm_config(fake_pve, 9000) is None
    assert any("removing VM 9000" in line for line in lines)


def test_no_ssh_at_the_build_address_fails_the_build_and_removes_the_vm(
    fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 192.0.2.0/24 is TEST-NET-1: nothing answers there
    network = {"subnet": "192.0.2.0/24", "gateway": "192.0.2.1", "build_ip": "192.0.2.249"}
    lab = make_lab(
        fake_pve, templates=[{"name": "base", "image": IMAGE}], network=network, settings={"timeouts": {"agent": 2}}
    )
    api = api_for(fake_pve, lab, monkeypatch)

    with pytest.raises(BuildFailed, match=r"did not let homelab in over SSH within 2 s.*VM 9000 was removed"):
        build_template(api, lab, "base", now=NOW)
    assert fake_pve.vms() == []


AGENTLESS = {
    "vmid": 9000,
    "name": "debian-docker-202611010930",
    "template": True,
    "config": {
        "name": "debian-docker-202611010930",
        "scsi0": "local-lvm:base-9000-disk-0,size=8G",
        "ide2": "local-lvm:vm-9000-cloudinit,media=cdrom",
        "net0": "virtio=BC:24:11:00:90:00,bridge=vmbr0",
        "agent": "1",
        "tags": "homelab-template",  # built by a homelab that did not bake the agent in
    },
}


@pytest.mark.fake_pve(guests=[AGENTLESS])
def test_a_template_without_the_agent_fails_apply_at_once_naming_it(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    # the lab's agent timeout stays 600 s: only the template's missing tag can end the wait this early
    lab = write_lab(tmp_path / "lab.yml", lab_data(fake_pve, [{"name": "web", "ip": "dhcp"}]))

    result = run_cli("apply", "--yes", lab=lab)

    assert result.exit_code != 0
    assert (
        "web: no guest agent runs in it: its template debian-docker-202611010930 was built without "
        "qemu-guest-agent (it lacks the guest-agent tag); build a new version with `homelab template build "
        "debian-docker`"
    ) in result.stdout


@pytest.mark.fake_pve(guests=[dict(AGENTLESS, config=dict(AGENTLESS["config"], tags="guest-agent;homelab-template"))])
def test_a_clone_of_a_template_whose_image_lacks_the_agent_has_none(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    data = lab_data(fake_pve, [{"name": "web", "ip": "dhcp"}], settings={"timeouts": {"agent": 1}})

    result = run_cli("apply", "--yes", lab=write_lab(tmp_path / "lab.yml", data))

    assert result.exit_code != 0
    assert "web: the guest agent did not answer within 1s: the template lacks qemu-guest-agent" in result.stdout
    assert "(last answer: 500 QEMU guest agent is not running)" in result.stdout
    (web,) = [vm for vm in fake_pve.vms() if vm["name"] == "web"]
    assert web["status"] == "running" and not web["agent"]
