"""`homelab up`: templates, VMs and the deploy-key stage in one command, idempotent, asking first."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from homelab.cli import cli
from homelab.demo.launcher import FakeProxmox
from tests.harness.labs import lab_data, write_lab

pytestmark = [pytest.mark.integration]
STORAGES = {
    "local": {"type": "dir", "active": 1, "content": "iso,vztmpl,backup,import", "files": [], "path": "/var/lib/vz"}
}
IMAGE = {"url": "https://images.example/debian-12-genericcloud-amd64.qcow2", "checksum": "sha512:" + "ab" * 64}


def homelab(lab: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--lab", str(lab), *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def lab(tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    data = lab_data(fake_pve, [{"name": "web", "ip": "10.10.0.10"}, {"name": "db", "ip": "dhcp"}])
    data["templates"] = [{"name": "debian-docker", "image": IMAGE}]
    return write_lab(tmp_path / "lab.yml", data)


@pytest.mark.fake_pve(guests=[], storages=STORAGES)
def test_up_bakes_the_template_then_brings_up_the_vms(lab: Path, fake_pve: FakeProxmox) -> None:
    code, _, err = homelab(lab, "up")
    assert code == 2 and "pass --yes" in err
    assert [vm for vm in fake_pve.vms()] == []  # refused before changing anything

    code, out, err = homelab(lab, "up", "--yes")
    assert code == 0, out + err
    templates = [vm for vm in fake_pve.vms() if vm["template"]]
    assert len(templates) == 1 and templates[0]["name"].startswith("debian-docker-")
    running = sorted(vm["name"] for vm in fake_pve.vms() if vm["status"] == "running")
    assert running == ["db", "web"]
    assert "Skipped: the lab file has no repo" in out
    assert "Skipped: no VM in the lab file lists stacks." in out

    fake_pve.requests(clear=True)
    code, out, _ = homelab(lab, "up", "--yes")
    assert code == 0
    assert "Every template the VMs use has a version on Proxmox." in out and "Plan: 2 unchanged." in out
    assert [r for r in fake_pve.requests() if r[0] != "GET"] == []
