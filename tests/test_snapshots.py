"""Snapshots against the fake Proxmox: homelab snapshot / rollback, pruning only homelab's own, and a
replacement that moves a data disk out of a VM with snapshots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from homelab.demo.launcher import FakeProxmox
from tests.harness.cli import run_cli
from tests.harness.labs import add_template_version, lab_data, write_lab

pytestmark = pytest.mark.integration

VMS = [{"name": "media", "ip": "10.10.0.20", "data_disk": "20G"}]


@pytest.fixture
def lab_file(tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    lab = write_lab(tmp_path / "lab.yml", lab_data(fake_pve, VMS, settings={"snapshots_keep": 2}))
    assert run_cli("apply", "--yes", lab=lab).exit_code == 0
    return lab


def media(fake: FakeProxmox) -> dict[str, Any]:
    return next(vm for vm in fake.vms() if vm["name"] == "media")


def snapshot_names(fake: FakeProxmox, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from proxmoxer import ProxmoxAPI

    user, token = fake.token_id.split("!")
    api = ProxmoxAPI(
        fake.host, port=fake.port, user=user, token_name=token, token_value=fake.token_secret, verify_ssl=fake.cafile
    )
    listed = api.nodes("pve1").qemu(media(fake)["vmid"]).snapshot.get()
    return sorted(s["name"] for s in listed if s["name"] != "current")


def test_snapshot_prunes_only_its_own_and_rollback_returns(
    lab_file: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    vmid = media(fake_pve)["vmid"]
    result = run_cli("rollback", "--yes", "media", lab=lab_file)
    assert result.exit_code == 2 and "no snapshot homelab took" in result.stderr
    taken = []
    for note in ("first", "second", "third"):
        result = run_cli("snapshot", "--yes", "--note", note, "media", lab=lab_file)
        assert result.exit_code == 0, result.stderr
        taken.append(result.stdout.split(" as ")[1].split()[0])
        time.sleep(1.1)  # names carry the second they were taken
    names = snapshot_names(fake_pve, monkeypatch)
    assert names == sorted(taken[1:]), "settings.snapshots_keep: 2 keeps the newest two of homelab's"
    memory_before = str(media(fake_pve)["config"]["memory"])
    write_lab(lab_file, lab_data(fake_pve, [dict(VMS[0], memory=4096)], settings={"snapshots_keep": 2}))
    assert run_cli("apply", "--yes", lab=lab_file).exit_code == 0
    assert str(media(fake_pve)["config"]["memory"]) == "4096"
    result = run_cli("rollback", "--yes", "media", lab=lab_file)
    assert result.exit_code == 0, result.stderr
    assert f"roll media ({vmid}) back to {taken[2]} (third)" in result.stdout
    vm = media(fake_pve)
    assert str(vm["config"]["memory"]) == memory_before and vm["status"] == "running"
    assert run_cli("rollback", "--yes", "--snapshot", "nosuch", "media", lab=lab_file).exit_code == 2


def test_a_replacement_moves_the_data_disk_of_a_vm_with_snapshots(
    lab_file: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_cli("snapshot", "--yes", "media", lab=lab_file).exit_code == 0
    old = media(fake_pve)["vmid"]
    add_template_version(fake_pve)
    plan = run_cli("plan", lab=lab_file)
    assert f"the snapshots of {old} go with it" in plan.stdout
    result = run_cli("apply", "--yes", lab=lab_file)
    assert result.exit_code == 0, result.stdout + result.stderr
    vm = media(fake_pve)
    assert vm["vmid"] != old and "serial=homelab-data" in str(vm["config"].get("scsi1"))
    assert run_cli("plan", lab=lab_file).exit_code == 0
