"""A replacement that does not finish goes back, says why, and the next run keeps the VM that last ran well.

The fake's monitor (homelab.demo.fake_monitor) records any moment two running VMs share a static address.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from homelab.adapters.proxmox.datadisks import DATA_KEY
from homelab.adapters.proxmox.marks import parse_mark
from homelab.demo.launcher import FakeProxmox
from tests.harness.cli import run_cli
from tests.harness.labs import add_template_version, lab_data, write_lab
from tests.harness.runs import homelab_env, start

pytestmark = pytest.mark.integration


def named(fake: FakeProxmox, name: str) -> dict[int, dict[str, Any]]:
    """The fake's VMs called ``name``, by vmid, each with its parsed mark."""
    return {
        vm["vmid"]: dict(vm, mark=parse_mark(vm["config"].get("description")))
        for vm in fake.vms()
        if vm["name"] == name
    }


def planned(name: str) -> list[tuple[str, Any]]:
    """(kind, vmid or old vmid) of the actions `homelab plan --json` shows for VM ``name``."""
    data = json.loads(run_cli("plan", "--json").stdout)
    return [(a["action"], a.get("vmid", a.get("old_vmid"))) for a in data["actions"] if a["vm"] == name]


@pytest.mark.fake_pve(time_scale=0.02, agent_delay=20)
def test_a_new_vm_that_does_not_come_up_is_stopped_before_the_old_one_starts_and_the_old_one_is_kept(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    vms = [{"name": "web", "ip": "10.10.0.10", "data_disk": "1G"}]
    lab = write_lab(tmp_path / "lab.yml", lab_data(fake_pve, vms, settings={"timeouts": {"agent": 2}}))
    monkeypatch.setenv("HOMELAB_LAB", str(lab))
    assert run_cli("apply", "--yes").exit_code == 0
    (old,) = named(fake_pve, "web")
    # a version whose image lost the agent (its tags still say it has one): its VMs never come up
    fake_pve.call(
        "add_vm",
        vmid=9001,
        name="debian-docker-202611201200",
        template=True,
        guest_agent=False,
        config={"agent": "1", "scsi0": "local-lvm:base-9001-disk-0,size=8G", "tags": "guest-agent;homelab-template"},
    )
    fake_pve.call("monitor_clear")
    result = run_cli("apply", "--yes")
    assert result.exit_code == 1, result.output
    (new,) = set(named(fake_pve, "web")) - {old}
    assert f"new VM {new} did not come up (" in result.output and f"going back to {old}" in result.output
    assert "interrupted" not in result.output
    assert f"rolling {new} back to" in result.output  # to the snapshot of its first start: the data as it was
    web = named(fake_pve, "web")
    assert web[old]["status"] == "running" and web[new]["status"] == "stopped"
    assert DATA_KEY in web[old]["config"] and DATA_KEY not in web[new]["config"]  # the data disk came back
    assert web[new]["mark"]["state"] == "replacing"
    assert fake_pve.call("monitor_overlaps") == []
    # the next run keeps the old VM (it last ran well): the new one goes first, then the replacement again
    assert planned("web") == [("remove", new), ("replace", old)]
    assert "the new VM of a replacement that did not finish" in run_cli("plan").output
    fake_pve.call("agent_disks", add=[9001])  # the image is fixed
    assert run_cli("apply", "--yes").exit_code == 0
    (final,) = named(fake_pve, "web").values()
    assert final["vmid"] not in (old, new) and final["mark"]["state"] == "ready" and DATA_KEY in final["config"]
    assert fake_pve.call("monitor_overlaps") == []


@pytest.mark.fake_pve(time_scale=0.02, agent_delay=100)
def test_ctrl_c_during_a_handover_goes_back_says_interrupted_and_never_runs_two_vms_on_one_address(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    vms = [{"name": "web", "ip": "10.10.0.10"}, {"name": "db", "ip": "10.10.0.11", "data_disk": "1G"}]
    lab = write_lab(tmp_path / "lab.yml", lab_data(fake_pve, vms))
    monkeypatch.setenv("HOMELAB_LAB", str(lab))
    assert run_cli("apply", "--yes").exit_code == 0
    before = {name: set(named(fake_pve, name)) for name in ("web", "db")}
    add_template_version(fake_pve)
    fake_pve.call("monitor_clear")
    run = start(homelab_env(tmp_path / "state", fake_pve.token_secret), "--lab", str(lab), "apply", "--yes")
    assert run.stdout is not None
    lines, waiting = [], set()
    for line in run.stdout:  # Ctrl-C once both new VMs wait for their agents (the old ones are stopped)
        lines.append(line)
        if "waiting for the guest agent" in line:
            waiting.add(line.split("] ", 1)[1].split(":")[0])
            if waiting == {"web", "db"}:
                run.send_signal(signal.SIGINT)
                break
    lines += run.stdout.readlines()
    output = "".join(lines)
    assert run.wait(60) == 130, output
    assert "did not come up" not in output and "Traceback" not in output
    for name in ("web", "db"):
        vms_now = named(fake_pve, name)
        (old,) = before[name]
        (new,) = set(vms_now) - before[name]
        assert f"{name}: interrupted while replacing it with {new}; going back to {old}, stopping {new} first" in output
        assert vms_now[old]["status"] == "running" and vms_now[new]["status"] == "stopped", output
        assert vms_now[new]["mark"]["state"] == "replacing"
    db = named(fake_pve, "db")
    assert [vmid for vmid, vm in db.items() if DATA_KEY in vm["config"]] == list(before["db"])
    assert fake_pve.call("monitor_overlaps") == []
    assert run_cli("apply", "--yes").exit_code == 0
    for name in ("web", "db"):
        (final,) = named(fake_pve, name).values()
        assert final["status"] == "running" and final["mark"]["state"] == "ready"
    assert fake_pve.call("monitor_overlaps") == []


@pytest.mark.fake_pve(time_scale=0.02, agent_delay=100)
def test_a_run_killed_after_the_snapshot_before_the_first_start_is_put_right_by_the_next_one(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL while the new VM boots: the data disk is on it, with the snapshot of its first start. The next run
    keeps the old VM: the new one is rolled back to that snapshot (the data as the old one left it), the disk moves
    back, the new one goes, and the replacement runs again; never two VMs on the address."""
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    lab = write_lab(tmp_path / "lab.yml", lab_data(fake_pve, [{"name": "db", "ip": "10.10.0.11", "data_disk": "1G"}]))
    monkeypatch.setenv("HOMELAB_LAB", str(lab))
    assert run_cli("apply", "--yes").exit_code == 0
    (old,) = named(fake_pve, "db")
    add_template_version(fake_pve)
    fake_pve.call("monitor_clear")
    run = start(homelab_env(tmp_path / "state", fake_pve.token_secret), "--lab", str(lab), "apply", "--yes")
    assert run.stdout is not None
    for line in run.stdout:
        if "db: waiting for the guest agent" in line:
            run.send_signal(signal.SIGKILL)
            break
    run.wait(30)
    (new,) = set(named(fake_pve, "db")) - {old}
    assert DATA_KEY in named(fake_pve, "db")[new]["config"] and named(fake_pve, "db")[new]["status"] == "running"
    assert planned("db")[:2] == [("move-data-disk", None), ("remove", new)]
    result = run_cli("apply", "--yes")
    assert result.exit_code == 0, result.output
    assert f"rolling {new} back to" in result.output
    (final,) = named(fake_pve, "db").values()
    assert final["vmid"] not in (old, new) and DATA_KEY in final["config"] and final["mark"]["state"] == "ready"
    assert fake_pve.call("monitor_overlaps") == []


def mac_of(vm: dict[str, Any]) -> str:
    """net0's MAC address (``virtio=BC:24:11:..,bridge=vmbr0``)."""
    return str(vm["config"]["net0"]).split(",")[0].split("=")[1].lower()


def test_a_handover_keeps_the_mac_address_and_no_two_running_vms_ever_share_one(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    vms = [{"name": "web", "ip": "10.10.0.10"}, {"name": "spare", "ip": "dhcp"}]
    monkeypatch.setenv("HOMELAB_LAB", str(write_lab(tmp_path / "lab.yml", lab_data(fake_pve, vms))))
    assert run_cli("apply", "--yes").exit_code == 0
    before = {vm["name"]: (vm["vmid"], mac_of(vm)) for vm in fake_pve.vms() if not vm["template"]}
    add_template_version(fake_pve)
    fake_pve.call("monitor_clear")
    result = run_cli("apply", "--yes")
    assert result.exit_code == 0, result.output
    after = {vm["name"]: (vm["vmid"], mac_of(vm)) for vm in fake_pve.vms() if not vm["template"]}
    # web (static address) hands over: the new VM starts once the old one stopped, with the old one's MAC
    assert after["web"][0] != before["web"][0] and after["web"][1] == before["web"][1]
    assert f"giving {after['web'][0]} the MAC address of {before['web'][0]}" in result.output
    # spare (DHCP, no data disk) is blue/green: both run for a while, so the new one keeps PVE's new MAC
    assert after["spare"][0] != before["spare"][0] and after["spare"][1] != before["spare"][1]
    assert fake_pve.call("monitor_overlaps") == []
    assert run_cli("plan").exit_code == 0
