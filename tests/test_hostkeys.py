"""Host keys that stay true: apply reads a VM's SSH host key through the guest agent only once cloud-init has
finished for the instance Proxmox seeded, re-reads it after every boot (a new instance regenerates it), and a
static-IP VM's address never comes from the agent.

The fake's guest (homelab/demo/fake_guest.py) shows the previous boot's files (no key on a first boot, the old
key after a reboot) until its cloud-init finishes some time after its agent came up, so reading too early
records a wrong or no key. The last test maps the VM onto real SSH test hosts: the deploy's own pinned SSH
session connects with the key apply recorded, and refuses the old one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from homelab.demo.fake_guest import HOST_KEY_FILE, instance_id, network_config, user_data
from homelab.demo.launcher import FakeProxmox
from homelab.errors import OperationError
from tests.harness.cli import run_cli
from tests.harness.fixtures_hosts import HostFactory
from tests.harness.labs import HOSTS_NETWORK, lab_data, write_lab
from tests.harness.nocloud import HostDns, nocloud_seed
from tests.harness.vms import add_lab_user, authorize

SLOW_GUEST = pytest.mark.fake_pve(time_scale=0.01, agent_delay=5, cloud_init_secs=40)


def hosts_json(tmp_path: Path, lab: str = "test") -> dict[str, dict[str, Any]]:
    data = json.loads((tmp_path / "state" / lab / "hosts.json").read_text())
    return {h["name"]: h for h in data["hosts"]}


def vmid_of(fake: FakeProxmox, name: str) -> int:
    return next(vm["vmid"] for vm in fake.vms() if vm["name"] == name and not vm["template"])


def key_reads(guest: dict[str, Any], since: int = 0) -> list[int]:
    """Indexes of the agent's reads of the host key file, from request ``since`` on."""
    return [
        i
        for i, (command, params) in enumerate(guest["agent_requests"])
        if i >= since and command == "file-read" and params.get("file") == HOST_KEY_FILE
    ]


@pytest.mark.parametrize(
    "conf",
    [
        {
            "name": "web",
            "net0": "virtio=BC:24:11:AA:00:01,bridge=vmbr0",
            "ipconfig0": "ip=10.10.0.10/24,gw=10.10.0.1",
            "ciuser": "homelab",
            "sshkeys": "ssh-ed25519%20AAAAC3Nza%20a%40b%0Assh-ed25519%20AAAAC3Nzb%20c%40d",
            "nameserver": "10.10.0.1 1.1.1.1",
            "searchdomain": "home.arpa",
            "ciupgrade": "0",
            "ide2": "local-lvm:vm-100-cloudinit,media=cdrom",
        },
        {"name": "cache.lab.example", "net0": "virtio=bc:24:11:aa:00:02", "ipconfig0": "ip=dhcp", "ciuser": "root"},
        {"net0": "e1000=BC:24:11:AA:00:03", "ipconfig0": "gw=10.0.0.1", "cipassword": "$5$x$y"},
    ],
)
def test_the_fakes_instance_id_is_the_one_the_real_vm_harness_seeds(conf: dict[str, Any]) -> None:
    """Two models of qemu-server's Cloudinit.pm (the fake's and the real-VM harness's seed) must agree."""
    dns = HostDns(search=("lan",), servers=("10.0.0.1",))
    seed = nocloud_seed(conf, 100, dns)
    host_dns = {"search": list(dns.search), "servers": list(dns.servers)}
    assert user_data(conf, 100) == seed.user_data
    assert network_config(conf, host_dns) == seed.network_config
    assert instance_id(conf, 100, host_dns) == seed.instance_id


@pytest.mark.integration
@SLOW_GUEST
def test_first_boot_reads_the_key_only_once_cloud_init_finished(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    vms = [{"name": "web", "ip": "10.10.0.10"}, {"name": "cache", "ip": "dhcp"}]
    lab = write_lab(tmp_path / "lab.yml", lab_data(fake_pve, vms))
    result = run_cli("apply", "--yes", lab=lab)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "waiting for the guest agent and cloud-init for instance" in result.stderr
    hosts = hosts_json(tmp_path)
    for name in ("web", "cache"):
        guest = fake_pve.call("guest", vmid=vmid_of(fake_pve, name))
        assert guest["finished"], name
        # homelab asked the agent while cloud-init still ran (the wait was real) ...
        assert guest["finished_after"] > 0, name
        # ... and read the host key only after it had finished: an earlier read finds no key on a first boot
        reads = key_reads(guest)
        assert reads and min(reads) >= guest["finished_after"], (name, guest["agent_requests"])
        assert hosts[name]["host_key"] == guest["host_key"]
    # A static IP is the lab's: the agent is never asked for web's address; the DHCP VM's comes from it.
    web, cache = vmid_of(fake_pve, "web"), vmid_of(fake_pve, "cache")
    paths = [path for _, path in fake_pve.requests()]
    assert not [p for p in paths if p.endswith(f"/qemu/{web}/agent/network-get-interfaces")]
    assert [p for p in paths if p.endswith(f"/qemu/{cache}/agent/network-get-interfaces")]
    assert hosts["web"]["address"] == "10.10.0.10"
    assert hosts["cache"]["address"].startswith("10.99.0.")  # the fake's DHCP range


@pytest.mark.integration
@SLOW_GUEST
def test_a_reboot_into_a_new_instance_re_pins_a_same_instance_reboot_keeps_the_key(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    data = lab_data(fake_pve, [{"name": "web", "ip": "10.10.0.10", "cores": 1}])
    lab = write_lab(tmp_path / "lab.yml", data)
    assert run_cli("apply", "--yes", lab=lab).exit_code == 0
    vmid = vmid_of(fake_pve, "web")
    first = fake_pve.call("guest", vmid=vmid)
    old_key = hosts_json(tmp_path)["web"]["host_key"]
    assert old_key == first["host_key"]

    # nameserver changes PVE's network-config, so the instance id: the reboot regenerates the host key
    data["network"]["dns"] = ["10.10.0.1", "10.10.0.2"]
    before = len(first["agent_requests"])
    result = run_cli("apply", "--yes", lab=write_lab(lab, data))
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "(reboot)" in result.stdout
    second = fake_pve.call("guest", vmid=vmid)
    assert second["instance"] != first["instance"] and second["host_key"] != old_key
    assert hosts_json(tmp_path)["web"]["host_key"] == second["host_key"]
    # Until the new instance finished, the agent showed the old key: homelab read none of it.
    assert min(key_reads(second, before)) >= second["finished_after"] > before
    assert "web: host key changed (cloud-init instance" in result.stderr
    assert "read through the Proxmox API" in result.stderr

    # cores needs a reboot too, but the cloud-init config is the same: same instance, same key, no new pin
    data["vms"][0]["cores"] = 2
    result = run_cli("apply", "--yes", lab=write_lab(lab, data))
    assert result.exit_code == 0 and "(reboot)" in result.stdout, result.stdout + result.stderr
    third = fake_pve.call("guest", vmid=vmid)
    assert third["instance"] == second["instance"] and third["host_key"] == second["host_key"]
    assert hosts_json(tmp_path)["web"]["host_key"] == second["host_key"]
    assert "host key changed" not in result.stderr


@pytest.mark.e2e
@SLOW_GUEST
def test_an_ipconfig0_change_re_pins_address_and_key_and_ssh_uses_the_new_key(
    tmp_path: Path, fake_pve: FakeProxmox, ssh_hosts: HostFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The VM moves from test host h1 to h2 (ipconfig0), then gets a new nameserver (same address): each time
    cloud-init makes a new instance and the host key changes; the deploy's pinned SSH follows."""
    from homelab.adapters.ssh import run_script
    from homelab.state.hosts import Host

    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    h1, h2 = ssh_hosts(2, per_user_keys=True)
    for host in (h1, h2):
        add_lab_user(host)
    fake_pve.call("set", host_keys={h1.address: h1.host_key_pub, h2.address: h2.host_key_pub})
    data = lab_data(fake_pve, [{"name": "web", "ip": h1.address}])
    data["network"] = dict(HOSTS_NETWORK)
    lab = write_lab(tmp_path / "lab.yml", data)
    assert run_cli("apply", "--yes", lab=lab).exit_code == 0
    admin_pub = (tmp_path / "state" / "test" / "ssh" / "id_ed25519.pub").read_text()
    for host in (h1, h2):  # cloud-init's part: the admin key apply put into sshkeys is authorised
        authorize(host, admin_pub)

    def connect() -> str:
        host = Host(**hosts_json(tmp_path)["web"])
        return run_script(host, "test", "hostname -I", as_user="homelab").stdout

    assert hosts_json(tmp_path)["web"]["host_key"] == h1.host_key_pub
    assert h1.address in connect()

    # ipconfig0: a new address, a new instance, the key of the host at that address
    data["vms"][0]["ip"] = h2.address
    result = run_cli("apply", "--yes", lab=write_lab(lab, data))
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "ipconfig0" in result.stdout and "(reboot)" in result.stdout
    web = hosts_json(tmp_path)["web"]
    assert (web["address"], web["host_key"]) == (h2.address, h2.host_key_pub)
    assert h2.address in connect()

    # same address, new nameserver: a new instance regenerates h2's key (as cloud-init would)
    old = h2.host_key_pub
    new = h2.regenerate_host_key()
    fake_pve.call("set", host_keys={h2.address: new})
    data["network"]["dns"] = ["10.77.0.1", "10.77.0.2"]
    result = run_cli("apply", "--yes", lab=write_lab(lab, data))
    assert result.exit_code == 0, result.stdout + result.stderr
    web = hosts_json(tmp_path)["web"]
    assert (web["address"], web["host_key"]) == (h2.address, new)
    assert "web: host key changed" in result.stderr
    assert h2.address in connect()
    # a changed key met over SSH is still refused: pinned to the old key, the session does not connect
    stale = Host(**dict(web, host_key=old))
    with pytest.raises(OperationError, match="not the pinned one"):
        run_script(stale, "test", "true", as_user="homelab")
