"""list and prune: which VMs use each version; prune never deletes a version a VM was cloned from."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from homelab.adapters.proxmox.versions import TemplateVersion
from homelab.demo.launcher import FakeProxmox
from homelab.errors import InputError
from homelab.templates.build import build_template
from homelab.templates.facts import VersionDetails, VersionUse
from homelab.templates.usage import gather_prune, list_templates, plan_prune, prune
from tests.harness.buildhost import BuildHost
from tests.harness.cli import run_cli
from tests.harness.fixtures_build import bake_network
from tests.harness.labs import lab_data, make_lab, write_lab
from tests.test_templates_support import IMAGE, LOCAL_WITH_IMPORT, api_for, vm_config

NOW = datetime(2026, 11, 2, 8, 15, tzinfo=UTC)


def version(vmid: int, stamp: str, tags: tuple[str, ...] = ("homelab-template", "homelab-test")) -> TemplateVersion:
    return TemplateVersion(vmid, "pve1", f"base-{stamp}", stamp, "base", tags)


def details(*items: tuple[TemplateVersion, tuple[VersionUse, ...]]) -> list[VersionDetails]:
    return [VersionDetails(v, {}, used) for v, used in items]


WEB = (VersionUse(120, "pve1", "web", "cloned"),)
# Each case: versions (oldest first) with their users, --keep, the pin -> the vmids prune deletes.
CASES: list[tuple[str, list[VersionDetails], int, str | None, list[int]]] = [
    (
        "keeps the newest n",
        details((version(9001, "202601010000"), ()), (version(9002, "202602010000"), ())),
        1,
        None,
        [9001],
    ),
    ("nothing old", details((version(9001, "202601010000"), ())), 1, None, []),
    (
        "never a version a vm uses, however old",
        details(
            (version(9001, "202601010000"), WEB),
            (version(9002, "202602010000"), ()),
            (version(9003, "202603010000"), ()),
        ),
        1,
        None,
        [9002],
    ),
    (
        "never a linked clone's base",
        details(
            (version(9001, "202601010000"), (VersionUse(121, "pve1", "hand-made", "linked clone"),)),
            (version(9002, "202602010000"), ()),
        ),
        1,
        None,
        [],
    ),
    (
        "never the pinned version",
        details(
            (version(9001, "202601010000"), ()),
            (version(9002, "202602010000"), ()),
            (version(9003, "202603010000"), ()),
        ),
        1,
        "202601010000",
        [9002],
    ),
    (
        "never another lab's",
        details(
            (version(9001, "202601010000", ("homelab-template", "homelab-other")), ()),
            (version(9002, "202602010000"), ()),
        ),
        1,
        None,
        [],
    ),
    (
        "keep two",
        details(
            (version(9001, "202601010000"), ()),
            (version(9002, "202602010000"), ()),
            (version(9003, "202603010000"), ()),
        ),
        2,
        None,
        [9001],
    ),
]


@pytest.mark.parametrize(("versions", "keep", "pin", "deleted"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_prune_plan(versions: list[VersionDetails], keep: int, pin: str | None, deleted: list[int]) -> None:
    lab = make_lab(templates=[{"name": "base", "image": IMAGE, **({"version": pin} if pin else {})}])
    plan = plan_prune(lab, lab.templates[0], versions, keep)
    assert sorted(a.version.vmid for a in plan.delete) == deleted
    assert len(plan.keep) + len(plan.delete) == len(versions)
    kept_for_use = [k for k in plan.keep if any("used by" in r for r in k.reasons)]
    for item in kept_for_use:
        assert "web (120)" in " ".join(item.reasons) or "linked clone" in " ".join(item.reasons)


def test_keep_zero_is_refused() -> None:
    lab = make_lab(templates=[{"name": "base", "image": IMAGE}])
    with pytest.raises(InputError, match="--keep must be 1 or more"):
        plan_prune(lab, lab.templates[0], [], 0)


def _cluster(
    fake: FakeProxmox, host: BuildHost, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, Any, list[TemplateVersion]]:
    """Four versions of base: the oldest cloned by `web` (as apply describes it), the second the base of a
    hand-made linked clone, the third unused, the fourth the newest. Plus an untagged old one."""
    lab = make_lab(fake, templates=[{"name": "base", "image": IMAGE}], network=bake_network(host))
    api = api_for(fake, lab, monkeypatch)
    built = [build_template(api, lab, "base", now=NOW).version for _ in range(4)]
    api.run_task("POST", f"/nodes/pve1/qemu/{built[0].vmid}/clone", "pve1", 30, "clone", newid=120, name="web")
    line = json.dumps({"lab": "test", "state": "ready", "template": "base", "version": built[0].version, "vm": "web"})
    api.put("/nodes/pve1/qemu/120/config", description=f"Managed by homelab\nhomelab: {line}", tags="homelab-test")
    fake.call(
        "add_vm",
        vmid=121,
        name="hand-made",
        config={"scsi0": f"local-lvm:base-{built[1].vmid}-disk-1/vm-121-disk-0,size=8G", "memory": 1024},
    )
    fake.call(
        "add_vm",
        vmid=9050,
        name="base-202001010000",
        template=True,
        config={"tags": "homelab-template", "scsi0": "local-lvm:base-9050-disk-0,size=8G"},
    )
    return lab, api, built


@pytest.mark.integration
@pytest.mark.fake_pve(storages=LOCAL_WITH_IMPORT)
def test_prune_deletes_only_the_unused_version(
    fake_pve: FakeProxmox, build_host: BuildHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab, api, built = _cluster(fake_pve, build_host, monkeypatch)
    [plan] = gather_prune(api, lab, [], keep=1)
    assert [a.version.vmid for a in plan.delete] == [built[2].vmid]
    reasons = {k.version.vmid: " ".join(k.reasons) for k in plan.keep}
    assert "used by web (120)" in reasons[built[0].vmid]
    assert "hand-made (121, linked clone)" in reasons[built[1].vmid]
    assert "newest" in reasons[built[3].vmid]
    assert "not tagged homelab-test" in reasons[9050]

    deleted = prune(api, lab, [plan], lambda _line: None)

    assert deleted == [built[2]]
    assert vm_config(fake_pve, built[2].vmid) is None
    for kept in (built[0].vmid, built[1].vmid, built[3].vmid, 9050, 9000, 120, 121):
        assert vm_config(fake_pve, kept) is not None, kept
    [again] = gather_prune(api, lab, [], keep=1)
    assert again.delete == ()


@pytest.mark.integration
@pytest.mark.fake_pve(storages=LOCAL_WITH_IMPORT)
def test_list_shows_versions_and_their_vms(
    fake_pve: FakeProxmox, build_host: BuildHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab, api, built = _cluster(fake_pve, build_host, monkeypatch)
    [listing] = list_templates(api, lab)
    assert listing.selected == built[3]
    users = {d.version.vmid: [(u.name, u.how) for u in d.used_by] for d in listing.versions}
    assert users[built[0].vmid] == [("web", "cloned")]
    assert users[built[1].vmid] == [("hand-made", "linked clone")]
    assert users[built[2].vmid] == users[built[3].vmid] == []
    assert listing.versions[-1].record["checksum"] == IMAGE["checksum"]


@pytest.mark.integration
@pytest.mark.fake_pve(storages=LOCAL_WITH_IMPORT)
def test_cli_build_list_prune(
    fake_pve: FakeProxmox, build_host: BuildHost, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lab_file = tmp_path / "lab.yml"
    data = lab_data(fake_pve, templates=[{"name": "base", "image": IMAGE}], network=bake_network(build_host))
    write_lab(lab_file, data)
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)

    dry = run_cli("template", "build", "--dry-run", lab=lab_file)
    assert dry.exit_code == 0, dry.output
    assert "build version" in dry.output and "1. download https://images.example/" in dry.output
    assert vm_config(fake_pve, 9001) is None

    # no terminal, no --yes: the plan is shown, nothing is built
    unconfirmed = run_cli("template", "build", lab=lab_file)
    assert unconfirmed.exit_code == 2 and "pass --yes" in unconfirmed.stderr
    assert "build version" in unconfirmed.output and vm_config(fake_pve, 9001) is None

    for _ in range(3):
        done = run_cli("template", "build", "-y", lab=lab_file)
        assert done.exit_code == 0, done.output
    assert "template base: version" in done.output and "API calls" in done.output

    listed = run_cli("template", "list", lab=lab_file)
    assert listed.exit_code == 0 and listed.output.count("base") >= 1
    rows = [line for line in listed.output.splitlines() if line[2:3].isdigit()]
    assert len(rows) == 3 and rows[0].startswith("* ")
    as_json = json.loads(run_cli("template", "list", "--json", lab=lab_file).output)
    assert [v["vmid"] for v in as_json[0]["versions"]] == [9001, 9002, 9003]

    refused = run_cli("template", "prune", "--keep", "1", lab=lab_file)
    assert refused.exit_code == 2 and "pass --yes" in refused.stderr
    assert "delete base-" in refused.output
    assert vm_config(fake_pve, 9001) is not None

    pruned = run_cli("template", "prune", "--keep", "1", "--yes", lab=lab_file)
    assert pruned.exit_code == 0 and "Deleted 2 template version(s)." in pruned.output
    assert vm_config(fake_pve, 9001) is None and vm_config(fake_pve, 9003) is not None
    assert "Nothing to delete." in run_cli("template", "prune", "--keep", "1", lab=lab_file).output


@pytest.mark.parametrize("source", ["iso", "clone"])
def test_cli_render_writes_the_packer_folder_and_keeps_private_keys_in_the_state_dir(
    tmp_path: Path, source: str
) -> None:
    lab_file = tmp_path / "lab.yml"
    settings = (
        {"source": "iso", "iso_file": "local:iso/debian-12.iso"}
        if source == "iso"
        else {"source": "clone", "clone_vm": "debian-docker"}
    )
    write_lab(
        lab_file, lab_data(templates=[{"name": "golden", "builder": "packer", "packer": settings}], password=True)
    )
    out = tmp_path / "repo" / "packer"
    result = run_cli("template", "render", str(out), "--version", "202611020815", "--vmid", "9010", lab=lab_file)
    assert result.exit_code == 0, result.output
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert names == [
        "README.md",
        "ansible/bake.yml",
        "build-known-hosts",
        "homelab.pkr.hcl",
        "required-plugins.pkr.hcl",
    ]
    for path in out.rglob("*"):
        assert not path.is_file() or "PRIVATE KEY" not in path.read_text(), path  # nothing secret in the lab repo

    private = [p for p in (tmp_path / "state" / "test").rglob("*") if p.is_file()]
    folder = private[0].parent if source == "clone" else next(p.parent for p in private if p.name == "build-key")
    hcl = (out / "homelab.pkr.hcl").read_text()
    if source == "iso":
        assert sorted(str(p.relative_to(folder)) for p in private) == [
            "build-key",
            "http/preseed.cfg",
        ]
        assert f'ssh_private_key_file = "{folder}/build-key"' in hcl
        assert f'http_directory = "{folder}/http"' in hcl
    else:
        assert [p.name for p in private] == ["proxy-host-key"]
        assert f'ssh_host_key_file = "{folder}/proxy-host-key"' in hcl
    for path in private:
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert folder.stat().st_mode & 0o777 == 0o700
    assert str(folder) in (out / "README.md").read_text() and str(folder) in result.output
    assert 'default     = "202611020815"' in hcl and "default     = 9010" in hcl
    not_packer = run_cli("template", "render", str(out), "--template", "nope", lab=lab_file)
    assert not_packer.exit_code != 0
