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
    assert "snapshotted with the data disk before its first start" in plan.stdout


@pytest.mark.parametrize("setting", [True, False])
def test_a_replacement_snapshots_the_new_vm_with_the_data_before_its_first_start(
    lab_file: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch, setting: bool
) -> None:
    settings = {"snapshots_keep": 2, "snapshot_before_changes": setting}
    write_lab(lab_file, lab_data(fake_pve, VMS, settings=settings))
    old = media(fake_pve)["vmid"]
    add_template_version(fake_pve)
    plan = run_cli("plan", lab=lab_file)
    assert ("before its first start" in plan.stdout) is setting
    fake_pve.requests(clear=True)
    result = run_cli("apply", "--yes", lab=lab_file)
    assert result.exit_code == 0, result.stdout + result.stderr
    new = media(fake_pve)["vmid"]
    assert new != old
    names = snapshot_names(fake_pve, monkeypatch)
    if not setting:
        assert names == []
        return
    assert len(names) == 1 and names[0].startswith("homelab_")
    calls = [(m, p) for m, p in fake_pve.requests() if m == "POST" and f"/qemu/{new}/" in p]
    order = [p.rsplit(f"/qemu/{new}/", 1)[1] for _, p in calls]
    # taken after the disk arrived (moved onto the stopped new VM) and before the new VM ever started
    assert order.index("snapshot") < order.index("status/start"), order
    moved = [p for m, p in fake_pve.requests() if m == "POST" and p.endswith(f"/qemu/{old}/move_disk")]
    assert moved, "the data disk was reassigned from the old VM"
    # the snapshot holds the data disk: a rollback returns the data to the moment of the handover
    result = run_cli("rollback", "--yes", "media", lab=lab_file)
    assert result.exit_code == 0, result.stderr
    assert f"back to {names[0]}" in result.stdout
    assert media(fake_pve)["status"] == "running"
    assert run_cli("plan", lab=lab_file).exit_code == 0


def test_the_deploys_hook_snapshots_the_vms_losing_stacks_through_proxmox(
    lab_file: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from homelab.adapters.proxmox.connect import connect
    from homelab.errors import InputError
    from homelab.lab.loader import load_lab
    from homelab.provision.snapshotting import removal_hook

    lab = load_lab(lab_file)
    said: list[str] = []
    connected: list[str] = []

    def connecting() -> Any:
        connected.append(lab.name)
        return connect(lab)

    hook = removal_hook(connecting, lab, said.append)
    assert hook is not None and connected == [], "the deploy's hook connects to Proxmox only when stacks go"
    hook(["media"])
    assert connected == ["test"]
    names = snapshot_names(fake_pve, monkeypatch)
    assert len(names) == 1 and any(line == f"media: {names[0]} taken" for line in said)
    with pytest.raises(InputError, match="not a VM of lab"):
        hook(["nosuch"])


def test_without_snapshot_before_changes_a_deploy_gets_no_removal_hook() -> None:
    from homelab.provision.snapshotting import removal_hook
    from tests.harness.labs import make_lab

    def never() -> Any:
        raise AssertionError("no connection without the setting")

    lab = make_lab(vms=VMS, settings={"snapshot_before_changes": False})
    assert removal_hook(never, lab, print) is None
    assert removal_hook(never, make_lab(vms=VMS), print) is not None  # the default: on
