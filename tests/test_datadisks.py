"""Data disks against the fake Proxmox: they survive replacement, interruption, destroy; only --purge-data deletes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from homelab.demo.launcher import FakeProxmox
from tests.harness.cli import run_cli
from tests.harness.labs import add_template_version, lab_data, write_lab

pytestmark = pytest.mark.integration

VMS = [
    {"name": "media", "ip": "10.10.0.20", "data_disk": "50G", "stacks": []},
    {"name": "box", "ip": "dhcp", "data_disk": "30G"},
    {"name": "plain", "ip": "10.10.0.21"},
]
GIB = 1024**3


@pytest.fixture
def lab_file(tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    return write_lab(tmp_path / "lab.yml", lab_data(fake_pve, VMS))


def by_name(fake: FakeProxmox) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for vm in fake.vms():
        if not vm["template"]:
            found.setdefault(vm["name"], []).append(vm)
    return found


def data_drive(vm: dict[str, Any]) -> str | None:
    """The config value of the VM's data disk (serial homelab-data), or None."""
    found = [str(v) for k, v in vm["config"].items() if "serial=homelab-data" in str(v)]
    assert len(found) <= 1
    return found[0] if found else None


def volumes(fake: FakeProxmox) -> dict[str, dict[str, Any]]:
    """Every VM image volume of local-lvm: name -> {size, vmid, ...}."""
    return dict(fake.call("storages")["local-lvm"].get("volumes", {}))


def data_volumes(fake: FakeProxmox) -> dict[str, int]:
    """Volumes of the data disks' sizes (50G and 30G): name -> size."""
    return {n: v["size"] for n, v in volumes(fake).items() if v["size"] in (50 * GIB, 30 * GIB)}


def test_created_vms_get_their_data_disk_and_a_second_plan_is_clean(lab_file: Path, fake_pve: FakeProxmox) -> None:
    result = run_cli("plan", lab=lab_file)
    assert "new data disk 50G" in result.stdout and "new data disk 30G" in result.stdout
    assert run_cli("apply", "--yes", lab=lab_file).exit_code == 0
    vms = {n: v[0] for n, v in by_name(fake_pve).items()}
    assert "size=50G" in str(data_drive(vms["media"])) and "size=30G" in str(data_drive(vms["box"]))
    assert data_drive(vms["plain"]) is None
    assert sorted(data_volumes(fake_pve).values()) == [30 * GIB, 50 * GIB]
    assert run_cli("plan", lab=lab_file).exit_code == 0


def test_a_new_template_version_moves_the_data_disk_without_a_copy(lab_file: Path, fake_pve: FakeProxmox) -> None:
    assert run_cli("apply", "--yes", lab=lab_file).exit_code == 0
    before = {n: v[0] for n, v in by_name(fake_pve).items()}
    data_before = data_volumes(fake_pve)
    add_template_version(fake_pve)
    result = run_cli("plan", lab=lab_file)
    assert result.exit_code == 3
    assert result.stdout.count("the data disk moves from") == 2
    fake_pve.requests(clear=True)
    assert run_cli("apply", "--yes", lab=lab_file).exit_code == 0, "apply failed"
    after = {n: v for n, v in by_name(fake_pve).items()}
    assert all(len(v) == 1 for v in after.values()), "one VM per name"
    for name in ("media", "box"):
        vm = after[name][0]
        assert vm["vmid"] != before[name]["vmid"] and vm["status"] == "running"
        volume = str(data_drive(vm)).split(",")[0]
        assert volume.startswith(f"local-lvm:vm-{vm['vmid']}-disk-")
    # the same two volumes, renamed to their new owners: reassigned, not copied, none deleted
    data_after = data_volumes(fake_pve)
    assert sorted(data_after.values()) == sorted(data_before.values())
    assert not set(data_after) & set(data_before)
    moves = [p for m, p in fake_pve.requests() if m == "POST" and p.endswith("/move_disk")]
    assert len(moves) == 2
    assert run_cli("plan", lab=lab_file).exit_code == 0


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("POST", "/move_disk"),  # after the old VM stopped, before the disk moved
        ("POST", "/status/start"),  # after the disk moved, the new VM does not start: it goes back
    ],
)
def test_an_interrupted_replacement_converges_with_one_holder(
    lab_file: Path, fake_pve: FakeProxmox, method: str, suffix: str
) -> None:
    assert run_cli("apply", "--yes", lab=lab_file).exit_code == 0
    data_before = sorted(data_volumes(fake_pve).values())
    add_template_version(fake_pve)
    fake_pve.call("fail", method=method, suffix=suffix, status=500, message="injected fault", times=1)
    assert run_cli("apply", "--yes", lab=lab_file).exit_code != 0
    holders = [vm for vms in by_name(fake_pve).values() for vm in vms if data_drive(vm)]
    assert len(holders) == 2 and sorted(data_volumes(fake_pve).values()) == data_before
    fake_pve.call("clear_failures")
    result = run_cli("apply", "--yes", lab=lab_file)
    assert result.exit_code == 0, result.stdout + result.stderr
    vms = by_name(fake_pve)
    assert all(len(v) == 1 for v in vms.values()), {n: [x["vmid"] for x in v] for n, v in vms.items()}
    for name in ("media", "box"):
        assert data_drive(vms[name][0]) and '"version":"202611201200"' in vms[name][0]["config"]["description"]
    assert sorted(data_volumes(fake_pve).values()) == data_before
    assert run_cli("plan", lab=lab_file).exit_code == 0


def test_destroy_keeps_data_disks_and_apply_gives_them_back(lab_file: Path, fake_pve: FakeProxmox) -> None:
    assert run_cli("apply", "--yes", lab=lab_file).exit_code == 0
    data_before = sorted(data_volumes(fake_pve).values())
    result = run_cli("destroy", "--yes", lab=lab_file)
    assert result.exit_code == 0, result.stderr
    assert "data disks are kept" in result.stdout + result.stderr or "its data disk is kept" in result.stdout
    left = by_name(fake_pve)
    assert sorted(left) == ["test-kept-data"], left
    keeper = left["test-kept-data"][0]
    assert keeper["status"] == "stopped" and sorted(k for k in keeper["config"] if k.startswith("unused")) == [
        "unused0",
        "unused1",
    ]
    assert sorted(data_volumes(fake_pve).values()) == data_before
    status = run_cli("status", lab=lab_file)
    assert status.stdout.count("data kept") == 2
    assert run_cli("plan", lab=lab_file).stdout.count("its kept data disk back from VM") == 2
    assert run_cli("apply", "--yes", lab=lab_file).exit_code == 0
    vms = by_name(fake_pve)
    for name in ("media", "box"):
        assert data_drive(vms[name][0]), name
    assert not any(k.startswith("unused") for k in vms["test-kept-data"][0]["config"])
    assert sorted(data_volumes(fake_pve).values()) == data_before
    assert run_cli("plan", lab=lab_file).exit_code == 0


def test_purge_data_deletes_the_data_disks_and_nothing_else(lab_file: Path, fake_pve: FakeProxmox) -> None:
    assert run_cli("apply", "--yes", lab=lab_file).exit_code == 0
    assert run_cli("destroy", "--yes", lab=lab_file).exit_code == 0  # parks them on the keeper
    assert run_cli("apply", "--yes", lab=lab_file).exit_code == 0
    result = run_cli("destroy", "--yes", "--purge-data", lab=lab_file)
    assert result.exit_code == 0, result.stderr
    assert "ITS DATA DISK IS DELETED" in result.stdout
    assert by_name(fake_pve) == {}
    assert data_volumes(fake_pve) == {}
    assert [vm["vmid"] for vm in fake_pve.vms() if vm["template"]] == [9000], "the template stays"


def test_a_vm_holding_a_data_disk_is_never_pruned_with_it(lab_file: Path, fake_pve: FakeProxmox) -> None:
    assert run_cli("apply", "--yes", lab=lab_file).exit_code == 0
    write_lab(lab_file, lab_data(fake_pve, [vm for vm in VMS if vm["name"] != "media"]))
    result = run_cli("apply", "--yes", "--prune", lab=lab_file)
    assert result.exit_code == 0, result.stderr
    vms = by_name(fake_pve)
    assert "media" not in vms and sorted(data_volumes(fake_pve).values()) == [30 * GIB, 50 * GIB]
    assert [k for k in vms["test-kept-data"][0]["config"] if k.startswith("unused")] == ["unused0"]
