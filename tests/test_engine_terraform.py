"""`engine: terraform`: apply, up and destroy change no VM and point to the export (exit 2); they still record
the running VMs' addresses and host keys, so the deploy key and the stacks keep working."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from homelab.cli import cli
from homelab.demo.launcher import FakeProxmox
from tests.harness.labs import lab_data, write_lab

pytestmark = pytest.mark.integration

VMS = [{"name": "web", "ip": "10.10.0.10"}, {"name": "cache", "ip": "dhcp"}]
WRITES = ("POST", "PUT", "DELETE")


def homelab(lab: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--lab", str(lab), *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def set_lab(lab: Path, **changes: object) -> None:
    data = yaml.safe_load(lab.read_text())
    data.update(changes)
    write_lab(lab, data)


def writes(fake: FakeProxmox) -> list[tuple[str, str]]:
    return [r for r in fake.requests() if r[0] in WRITES]


@pytest.fixture
def handed_over(tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A lab homelab applied, then handed to Terraform (engine: terraform), its hosts record gone."""
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    lab = write_lab(tmp_path / "lab.yml", lab_data(fake_pve, VMS))
    code, out, err = homelab(lab, "apply", "--yes")
    assert code == 0, out + err
    set_lab(lab, engine="terraform")
    (tmp_path / "state" / "test" / "hosts.json").unlink()
    fake_pve.requests(clear=True)
    return lab


def recorded(lab: Path) -> dict[str, str]:
    hosts = json.loads((lab.parent / "state" / "test" / "hosts.json").read_text())["hosts"]
    assert all(h["host_key"].startswith("ssh-ed25519 ") for h in hosts)
    return {h["name"]: h["address"] for h in hosts}


def test_apply_changes_nothing_points_to_the_export_and_records_addresses(
    handed_over: Path, fake_pve: FakeProxmox
) -> None:
    data = yaml.safe_load(handed_over.read_text())
    data["vms"][0]["memory"] = 4096
    write_lab(handed_over, data)
    code, out, err = homelab(handed_over, "apply", "--yes")
    assert code == 2, out + err
    assert "engine: terraform" in err and "homelab export terraform DIR" in err and "1 step(s)" in err
    assert "~ update web" in out  # the plan is shown: what Terraform will change
    assert writes(fake_pve) == []
    web = next(vm for vm in fake_pve.vms() if vm["name"] == "web")
    assert str(web["config"]["memory"]) == "2048"
    assert recorded(handed_over)["web"] == "10.10.0.10" and set(recorded(handed_over)) == {"web", "cache"}

    code, out, _ = homelab(handed_over, "plan")
    assert code == 3 and "Terraform's to make" in out


def test_apply_of_an_unchanged_lab_records_the_addresses_and_succeeds(handed_over: Path, fake_pve: FakeProxmox) -> None:
    code, out, err = homelab(handed_over, "apply", "--yes")
    assert code == 0, out + err
    assert "they are as the lab file says: 2 address(es) recorded" in out
    assert writes(fake_pve) == []
    assert recorded(handed_over)["web"] == "10.10.0.10"


def test_destroy_refuses(handed_over: Path, fake_pve: FakeProxmox) -> None:
    code, _, err = homelab(handed_over, "destroy", "--yes")
    assert code == 2 and "terraform destroy" in err
    assert writes(fake_pve) == []
    assert {vm["name"] for vm in fake_pve.vms() if not vm["template"]} == {"web", "cache"}


def test_up_creates_no_vm_but_runs_the_other_stages_once_terraform_made_them(
    handed_over: Path, fake_pve: FakeProxmox
) -> None:
    data = yaml.safe_load(handed_over.read_text())
    data["vms"].append({"name": "db", "ip": "10.10.0.11"})
    write_lab(handed_over, data)
    code, out, err = homelab(handed_over, "up", "--yes")
    assert code == 2, out + err
    assert "[1/4] templates" in out and "+ create db" in out and "[3/4]" not in out
    assert "homelab export terraform DIR" in err
    assert writes(fake_pve) == [] and "db" not in {vm["name"] for vm in fake_pve.vms()}

    data["vms"].pop()
    write_lab(handed_over, data)
    code, out, err = homelab(handed_over, "up", "--yes")
    assert code == 0, out + err
    assert "[3/4] deploy key" in out and "[4/4]" in out
    assert writes(fake_pve) == []
