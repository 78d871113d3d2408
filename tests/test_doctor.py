"""`homelab doctor` against the least-privilege fake: silent when the token holds the README's role, one line
with the fix per missing privilege, storage content type or version gate; `up` and `apply` stop before writing."""

from __future__ import annotations

from pathlib import Path

import pytest

from homelab.adapters.proxmox.privileges import role_privileges
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
    """A case whose fake leaves ``privilege`` out of the token's role and has no template yet (so `up` would
    build one: everything is needed)."""
    marks = pytest.mark.fake_pve(storages=IMPORTS, drop=(privilege,), guests=[], **options)
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


@pytest.mark.fake_pve(storages=IMPORTS, drop=("SDN.Use",))
def test_apply_stops_before_any_write_without_sdn_use(lab: Path, fake_pve: FakeProxmox) -> None:
    fake_pve.requests(clear=True)
    result = run_cli("apply", "--yes", lab=lab)
    assert result.exit_code == 2
    assert f"token {TOKEN} lacks SDN.Use on /sdn/zones/localnetwork/vmbr0" in result.stderr
    assert writes(fake_pve) == [] and "web" not in [vm["name"] for vm in fake_pve.vms()]


@pytest.mark.fake_pve(storages=IMPORTS, drop=("Sys.AccessNetwork",))
def test_apply_does_not_ask_for_what_only_a_download_needs(lab: Path, fake_pve: FakeProxmox) -> None:
    result = run_cli("apply", "--yes", lab=lab)
    assert result.exit_code == 0, result.stderr
    assert "web" in [vm["name"] for vm in fake_pve.vms() if vm["status"] == "running"]


@pytest.mark.fake_pve(storages=IMPORTS, version="8.3.4")
def test_pve_8_3_cannot_build_cloud_image_templates(lab: Path, fake_pve: FakeProxmox) -> None:
    result = run_cli("doctor", lab=lab)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "Proxmox VE 8.3.4 cannot build cloud-image templates (debian-docker): downloading a .qcow2 cloud image "
        "for import needs Proxmox VE 8.4.0 or later; upgrade the node (apt full-upgrade) or use builder: packer"
    ]
    fake_pve.requests(clear=True)
    result = run_cli("template", "build", "--yes", lab=lab)
    assert result.exit_code == 2 and "needs Proxmox VE 8.4.0 or later" in result.stderr
    assert writes(fake_pve) == []
    # apply clones the version already there: nothing of it needs 8.4 (the agent needs VM.Monitor on PVE 8)
    result = run_cli("apply", "--yes", lab=lab)
    assert result.exit_code == 0, result.stderr


@pytest.mark.fake_pve(storages=IMPORTS, version="8.3.4")
def test_the_build_plan_refuses_below_8_4_too(lab: Path, fake_pve: FakeProxmox) -> None:
    from homelab.adapters.proxmox.connect import connect
    from homelab.errors import OperationError
    from homelab.lab import load_lab
    from homelab.templates.build import plan_build

    built = load_lab(lab)
    with pytest.raises(OperationError, match=r"Proxmox VE 8.3.4 cannot download a cloud image .*needs 8.4.0"):
        plan_build(connect(built), built, "debian-docker", fetch=lambda url: "")


@pytest.mark.parametrize(
    ("version", "field", "message"),
    [
        pytest.param(
            "8.2.7",
            "content",
            "value 'import' does not have a value in the enumeration 'iso, vztmpl'",
            marks=pytest.mark.fake_pve(storages=IMPORTS, version="8.2.7", token_id="root@pam!homelab"),
        ),
        pytest.param(
            "8.3.4",
            "filename",
            "invalid filename or wrong extension",
            marks=pytest.mark.fake_pve(storages=IMPORTS, version="8.3.4", token_id="root@pam!homelab"),
        ),
    ],
)
def test_the_fake_refuses_import_downloads_as_old_pve_does(
    version: str, field: str, message: str, pve_api: object, fake_pve: FakeProxmox
) -> None:
    # root@pam: the refusal is the version's, not a privilege's
    from proxmoxer.core import ResourceException

    assert pve_api.version.get()["version"] == version  # type: ignore[attr-defined]
    storage = pve_api.nodes("pve1").storage("local")  # type: ignore[attr-defined]
    with pytest.raises(ResourceException) as refused:
        storage("download-url").post(url=IMAGE["url"], content="import", filename="debian-12.qcow2")
    assert refused.value.status_code == 400 and dict(refused.value.errors) == {field: message}


@pytest.mark.fake_pve(storages=IMPORTS, version="8.4.1")
def test_pve_8_4_builds_and_applies_with_the_pve_8_role(lab: Path, fake_pve: FakeProxmox) -> None:
    result = run_cli("doctor", lab=lab)
    assert (result.exit_code, result.stderr) == (0, "")
    result = run_cli("up", "--yes", "--no-deploy", lab=lab)
    assert result.exit_code == 0, result.stderr


@pytest.mark.fake_pve(storages=NO_IMPORT)
def test_a_storage_without_import_gets_a_pvesm_line_that_keeps_its_content(lab: Path, fake_pve: FakeProxmox) -> None:
    result = run_cli("doctor", lab=lab)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "no storage on node pve1 takes cloud images to import (content type import): "
        "pvesm set local --content iso,vztmpl,backup,import"
    ]


@pytest.mark.fake_pve(
    storages={**IMPORTS, "local-lvm": {"type": "lvmthin", "active": 1, "content": "rootdir", "vgname": "pve"}}
)
def test_a_storage_without_images_gets_a_pvesm_line_that_keeps_its_content(lab: Path, fake_pve: FakeProxmox) -> None:
    result = run_cli("doctor", lab=lab)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "storage local-lvm does not take VM disks (content images): pvesm set local-lvm --content rootdir,images"
    ]


NOTHING = tuple(role_privileges((9, 1, 1)))


@pytest.mark.fake_pve(drop=NOTHING)
def test_init_offers_the_token_lines_when_the_token_sees_nothing(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_wizard import answers, run_init

    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    result = run_init(tmp_path, answers(fake_pve), "--defaults")
    assert result.exit_code == 2 and not (tmp_path / "lab.yml").exists()
    lines = result.stderr.splitlines()
    assert lines[0] == "init: the token sees no storage for VM disks"
    assert "  pveum user add homelab@pve" in lines
    assert "  pveum user token add homelab@pve homelab --privsep 1   # prints the secret once" in lines
    assert any(
        line.startswith('  pveum role add Homelab --privs "') and "VM.GuestAgent.Audit" in line for line in lines
    )
    assert (
        "  pveum acl modify /sdn/zones/localnetwork/vmbr0 --roles Homelab --users homelab@pve --tokens "
        "'homelab@pve!homelab'" in lines
    )


@pytest.mark.fake_pve(storages=IMPORTS, drop=("VM.Clone",))
def test_init_writes_the_lab_then_names_what_is_missing(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_wizard import answers, run_init

    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    result = run_init(tmp_path, answers(fake_pve), "--defaults")
    assert result.exit_code == 2 and (tmp_path / "lab.yml").exists(), result.stderr
    assert result.stderr.splitlines()[0].startswith(f"token {TOKEN} lacks VM.Clone on /vms")


def test_the_readme_gives_the_role_of_the_table_for_pve_8_and_9() -> None:
    import re

    from homelab.adapters.proxmox.privileges import setup_lines

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    roles = re.findall(r'pveum role add Homelab --privs "([^"]+)"', readme)
    assert [r.split(",") for r in roles] == [role_privileges((9, 0, 0)), role_privileges((8, 4, 0))]
    places = {"node": "pve1", "storage": "local-lvm", "import_storage": "local", "bridge": "vmbr0"}
    for line in setup_lines((9, 0, 0), places):
        assert line.split("   #")[0] in readme
