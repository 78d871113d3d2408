"""The stages together: apply on the fake Proxmox learns each VM's address and host key through the guest
agent; the deploy key then lands on the VM over SSH pinned to exactly that key, and the repo is checked out.

The "VM" is an SSH test host: the lab's static IP is the test host's address (a static IP never comes from the
agent), the fake's agent shows the test host's host key, and the test plays cloud-init by authorising
homelab's admin key for the homelab user.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from homelab.demo.launcher import FakeProxmox
from tests.harness.cli import run_cli
from tests.harness.fixtures_hosts import HostFactory
from tests.harness.gitserver import GitServer, git_server_fixture  # noqa: F401
from tests.harness.labs import HOSTS_NETWORK, lab_data, write_lab
from tests.harness.vms import add_lab_user, authorize

pytestmark = pytest.mark.e2e


def test_apply_then_deploy_key_over_pinned_ssh(
    tmp_path: Path,
    fake_pve: FakeProxmox,
    git_server: GitServer,
    ssh_hosts: HostFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    (vm,) = ssh_hosts(1, per_user_keys=True)
    git_server.connect(vm)
    add_lab_user(vm)  # as cloud-init leaves it
    fake_pve.call("set", host_keys={vm.address: vm.host_key_pub})
    data = lab_data(fake_pve, [{"name": "web", "ip": vm.address}], repo={"url": git_server.url, "branch": "main"})
    data["network"] = dict(HOSTS_NETWORK)
    lab = write_lab(tmp_path / "lab.yml", data)

    result = run_cli("apply", "--yes", lab=lab)
    assert result.exit_code == 0, result.stdout + result.stderr
    hosts = json.loads((tmp_path / "state" / "test" / "hosts.json").read_text())["hosts"]
    (vmid,) = [v["vmid"] for v in fake_pve.vms() if v["name"] == "web"]
    assert hosts == [
        {
            "name": "web",
            "address": vm.address,
            "user": "homelab",
            "port": 22,
            "host_key": vm.host_key_pub,
            "key_file": None,
            "vmid": vmid,
        }
    ]
    # cloud-init's part: homelab's admin key (which apply put in the VM's cloud-init sshkeys) is authorised
    admin_pub = (tmp_path / "state" / "test" / "ssh" / "id_ed25519.pub").read_text()
    authorize(vm, admin_pub)

    result = run_cli("keys", "generate", lab=lab)
    assert result.exit_code == 0
    pub = next(line.strip() for line in result.stdout.splitlines() if line.strip().startswith("ssh-ed25519"))
    git_server.add_key(pub)
    assert run_cli("keys", "verify", "--yes", lab=lab).exit_code == 0

    result = run_cli("keys", "install", "--yes", lab=lab)
    assert result.exit_code == 0, result.stdout + result.stderr + vm.log()
    assert "web: ok" in result.stdout
    head = git_server.head()
    assert vm.run("runuser -u homelab -- git -C /home/homelab/config rev-parse HEAD").stdout.strip() == head
    assert (vm.home_dir / "homelab" / "config" / ".git").is_dir()
    assert not Path("/home/homelab/config").exists()

    # The pin is real: a VM whose recorded host key differs is refused, not trusted.
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    hosts[0]["host_key"] = other
    (tmp_path / "state" / "test" / "hosts.json").write_text(json.dumps({"hosts": hosts}))
    result = run_cli("keys", "install", "--yes", lab=lab)
    assert result.exit_code == 1 and "web: FAILED" in result.stdout
