"""`homelab doctor` against the least-privilege fake: silent when the token holds the README's role, one line
with the fix per missing privilege, storage content type or version gate; `up` and `apply` stop before writing."""

from __future__ import annotations

from pathlib import Path

import pytest

from homelab.demo.launcher import FakeProxmox
from tests.harness.cli import run_cli
from tests.harness.labs import lab_data, write_lab

pytestmark = [pytest.mark.integration]
IMPORTS = {"local": {"type": "dir", "active": 1, "content": "iso,vztmpl,backup,import", "path": "/var/lib/vz"}}
NO_IMPORT = {"local": {"type": "dir", "active": 1, "content": "iso,vztmpl,backup", "path": "/var/lib/vz"}}
IMAGE = {"url": "https://images.example/debian-12-genericcloud-amd64.qcow2", "checksum": "sha512:" + "ab" * 64}
TOKEN = "homelab@pve!homelab"


@pytest.fixture
def lab(tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    data = lab_data(fake_pve, [{"name": "web", "ip": "10.10.0.10"}])
    data["templates"] = [{"name": "debian-docker", "image": IMAGE}]
    return write_lab(tmp_path / "lab.yml", data)


def writes(fake: FakeProxmox) -> list[tuple[str, str]]:
    return [r for r in fake.requests() if r[0] in ("POST", "PUT", "DELETE")]


@pytest.mark.fake_pve(storages=IMPORTS)
def test_doctor_is_silent_with_the_least_privilege_role(lab: Path, fake_pve: FakeProxmox) -> None:
    assert fake_pve.token_id == TOKEN  # not root: the README's role, nothing more
    result = run_cli("doctor", lab=lab)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    result = run_cli("doctor", "-v", lab=lab)
    assert "Proxmox VE 9.1.1: can import cloud images" in result.stdout
    assert "storage local on pve1: dir, local, content iso,vztmpl,backup,import" in result.stdout


def dropping(privilege: str, path: str, **options: object) -> object:
    """A case whose fake leaves ``privilege`` out of the token's role."""
    marks = pytest.mark.fake_pve(storages=IMPORTS, drop=(privilege,), **options)
    return pytest.param(privilege, path, marks=marks, id=privilege)


@pytest.mark.parametrize(
    ("dropped", "path"),
    [
        dropping("Sys.AccessNetwork", "/nodes/pve1"),
        dropping("SDN.Use", "/sdn/zones/localnetwork/vmbr0"),
        dropping("VM.GuestAgent.Audit", "/vms"),
        dropping("VM.GuestAgent.FileRead", "/vms"),
        dropping("VM.Monitor", "/vms", version="8.4.1"),
        dropping("VM.Clone", "/vms"),
        dropping("Datastore.AllocateTemplate", "/storage/local"),
        dropping("VM.Config.Cloudinit", "/vms"),
    ],
)
def test_doctor_names_a_missing_privilege_with_its_fix_and_up_changes_nothing(
    dropped: str, path: str, lab: Path, fake_pve: FakeProxmox
) -> None:
    result = run_cli("doctor", lab=lab)
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"token {TOKEN} lacks {dropped} on {path} (")
    assert lines[0].endswith(
        f': pveum role modify Homelab --append 1 --privs "{dropped}" && '
        f"pveum acl modify {path} --roles Homelab --users homelab@pve --tokens '{TOKEN}'"
    )
    fake_pve.requests(clear=True)
    result = run_cli("up", "--yes", lab=lab)
    assert result.exit_code == 2 and lines[0] in result.stderr
    assert "homelab up stopped before changing anything" in result.stderr
    assert writes(fake_pve) == []
