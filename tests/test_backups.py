"""Backups against the fake Proxmox: `homelab backup` runs vzdump; backup.schedule keeps the lab's backup job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from homelab.demo.launcher import FakeProxmox
from tests.harness.cli import run_cli
from tests.harness.labs import add_template_version, lab_data, write_lab

pytestmark = pytest.mark.integration

VMS = [{"name": "media", "ip": "10.10.0.20", "data_disk": "20G"}, {"name": "box", "ip": "dhcp"}]


@pytest.fixture
def token(fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)


def backups(fake: FakeProxmox) -> dict[str, Any]:
    return {n: v for n, v in fake.call("storages")["local"].get("volumes", {}).items() if n.startswith("backup/")}


def lab_vmids(fake: FakeProxmox) -> list[int]:
    return sorted(vm["vmid"] for vm in fake.vms() if not vm["template"])


def test_backup_runs_vzdump_for_the_lab_vms(tmp_path: Path, fake_pve: FakeProxmox, token: None) -> None:
    lab = write_lab(tmp_path / "lab.yml", lab_data(fake_pve, VMS))
    assert run_cli("backup", "--yes", lab=lab).exit_code == 2  # no VM exists yet
    assert run_cli("apply", "--yes", lab=lab).exit_code == 0
    result = run_cli("backup", "--yes", "media", lab=lab)
    assert result.exit_code == 0, result.stderr
    media = next(vm["vmid"] for vm in fake_pve.vms() if vm["name"] == "media")
    assert f"back up media ({media}) on pve1 to local" in result.stdout
    made = backups(fake_pve)
    assert [v["vmid"] for v in made.values()] == [media]
    assert f"vzdump-qemu-{media}-" in result.stdout
    assert run_cli("backup", "--yes", lab=lab).exit_code == 0
    assert sorted(v["vmid"] for v in backups(fake_pve).values()) == sorted([media, *lab_vmids(fake_pve)])
    refused = run_cli("backup", "--yes", "nosuch", lab=lab)
    assert refused.exit_code == 2 and "not a VM of lab test: nosuch" in refused.stderr


def test_a_storage_without_backup_content_is_named(tmp_path: Path, fake_pve: FakeProxmox, token: None) -> None:
    data = lab_data(fake_pve, VMS, backup={"storage": "local-lvm"})
    lab = write_lab(tmp_path / "lab.yml", data)
    assert run_cli("apply", "--yes", lab=lab).exit_code == 0
    result = run_cli("backup", "--yes", lab=lab)
    assert result.exit_code != 0 and "local-lvm" in result.stderr and "backup" in result.stderr
    assert backups(fake_pve) == {}


def test_schedule_keeps_the_lab_backup_job_in_step_with_its_vms(
    tmp_path: Path, fake_pve: FakeProxmox, token: None
) -> None:
    lab = write_lab(tmp_path / "lab.yml", lab_data(fake_pve, VMS, backup={"schedule": "sun 02:00", "keep_last": 3}))
    # The README's role leaves out Sys.Audit and Sys.Modify on /, which backup jobs need: the refusal says so.
    refused = run_cli("plan", lab=lab)
    assert refused.exit_code == 2 and "backup.schedule needs Sys.Audit and Sys.Modify on /" in refused.stderr
    for who in (fake_pve.token_id, fake_pve.token_id.split("!")[0]):
        fake_pve.call("grant", who=who, path="/", privileges=["Sys.Audit", "Sys.Modify"])
    result = run_cli("plan", lab=lab)
    assert result.exit_code == 3 and "backup job homelab-test: create it: sun 02:00" in result.stdout
    assert run_cli("apply", "--yes", lab=lab).exit_code == 0
    jobs = fake_pve.call("backup_jobs")
    job = jobs["homelab-test"]
    assert job["schedule"] == "sun 02:00" and job["prune-backups"] == "keep-last=3" and job["storage"] == "local"
    assert sorted(int(v) for v in job["vmid"].split(",")) == lab_vmids(fake_pve)
    assert run_cli("plan", lab=lab).exit_code == 0
    # a VM replaced by a new template version: the job follows its new vmid
    add_template_version(fake_pve)
    assert run_cli("apply", "--yes", lab=lab).exit_code == 0
    job = fake_pve.call("backup_jobs")["homelab-test"]
    assert sorted(int(v) for v in job["vmid"].split(",")) == lab_vmids(fake_pve)
    assert run_cli("plan", lab=lab).exit_code == 0
