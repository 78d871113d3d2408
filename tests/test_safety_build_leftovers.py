"""A `template build` killed outright (SIGKILL: no clean-up runs) leaves a half-built VM marked as the lab's; the
next build names it in its plan and removes it before it builds, and never touches a namesake it did not make."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from homelab.adapters.proxmox.marks import describe_template
from homelab.demo.launcher import FakeProxmox
from tests.harness.buildhost import BuildHost
from tests.harness.cli import run_cli
from tests.harness.fixtures_build import bake_network
from tests.harness.labs import lab_data, write_lab
from tests.harness.runs import homelab_env, start
from tests.test_templates_support import IMAGE, LOCAL_WITH_IMPORT

pytestmark = [pytest.mark.integration]
RECORD = {"lab": "test", "template": "base", "version": "209911300100", "builder": "cloud-image", "os": "debian-12"}


def _half_built(fake: FakeProxmox, vmid: int, record: dict[str, str]) -> None:
    """A VM as a killed cloud-image build leaves it: named as a version, described, not (yet) a template."""
    fake.call(
        "add_vm",
        vmid=vmid,
        name=f"base-{record['version']}",
        status="running",
        config={"description": describe_template(record), "tags": "homelab-template;homelab-test"},
    )


def _lab(tmp_path: Path, fake: FakeProxmox, network: dict[str, object] | None = None) -> Path:
    sections = {"network": network} if network else {}
    return write_lab(tmp_path / "lab.yml", lab_data(fake, templates=[{"name": "base", "image": IMAGE}], **sections))


@pytest.mark.fake_pve(guests=[], storages=LOCAL_WITH_IMPORT)
def test_the_build_plan_names_a_half_built_vm_and_leaves_others_alone(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    _half_built(fake_pve, 9000, RECORD)
    _half_built(fake_pve, 9001, dict(RECORD, lab="other", version="209911300107"))  # another lab's build
    _half_built(fake_pve, 9002, dict(RECORD, version="209911300108", template="web"))  # mark names another template
    result = run_cli("template", "build", "--dry-run", lab=_lab(tmp_path, fake_pve))
    assert result.exit_code == 0, result.output
    plan = [line.strip() for line in result.output.splitlines()]
    # the new version is past the half-built one's (versions only grow), at a free vmid; the removal comes first
    assert plan[:2] == [
        "template base: build version 209911300101 as VM 9003 base-209911300101 (cloud-image)",
        "1. remove VM 9000 base-209911300100: a build of version 209911300100 that never finished",
    ]
    assert "remove VM 9001" not in result.output and "remove VM 9002" not in result.output
    assert {vm["vmid"] for vm in fake_pve.vms()} == {9000, 9001, 9002}  # a dry run changes nothing


@pytest.mark.fake_pve(guests=[], storages=LOCAL_WITH_IMPORT, time_scale=0.02)
def test_a_sigkilled_build_is_cleaned_up_by_the_next_one(
    tmp_path: Path, fake_pve: FakeProxmox, build_host: BuildHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    lab = _lab(tmp_path, fake_pve, bake_network(build_host))
    run = start(homelab_env(tmp_path / "state", fake_pve.token_secret), "--lab", str(lab), "template", "build", "--yes")
    assert run.stdout is not None
    lines = []
    for line in run.stdout:  # killed while the build VM runs at the build address, mid-bake
        lines.append(line)
        if "bake:" in line:
            run.send_signal(signal.SIGKILL)
            break
    run.wait(30)
    killed = "".join(lines)
    (left,) = [vm for vm in fake_pve.vms() if vm["name"].startswith("base-")]
    assert not left["template"] and left["status"] == "running", killed
    fake_pve.call("monitor_clear")

    result = run_cli("template", "build", "--yes", lab=lab)

    assert result.exit_code == 0, result.output
    assert f"remove VM {left['vmid']} {left['name']}: a build of version" in result.output
    bases = [vm for vm in fake_pve.vms() if vm["name"].startswith("base-")]
    assert [vm["template"] for vm in bases] == [True], bases  # exactly one template, the leftover gone
    assert bases[0]["vmid"] != left["vmid"] and bases[0]["name"] != left["name"]
    assert fake_pve.call("monitor_overlaps") == []  # the leftover stopped before the new build VM started
    again = run_cli("template", "build", "--dry-run", lab=lab)
    assert "never finished" not in again.output


@pytest.mark.fake_pve(guests=[], storages=LOCAL_WITH_IMPORT)
def test_an_unmarked_vm_of_a_killed_packer_build_is_removed_only_with_this_machines_record(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from homelab.adapters.proxmox.connect import connect
    from homelab.lab.loader import load_lab
    from homelab.state.builds import BuildUnderWay, builds_under_way, record_build
    from homelab.templates.leftovers import remove_half_built
    from homelab.templates.plan import RemoveHalfBuilt

    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    lab_path = _lab(tmp_path, fake_pve)
    # Packer's VM while it builds: named as the version, no description yet
    for vmid, version in ((9000, "209911300100"), (9001, "209911300105")):
        fake_pve.call("add_vm", vmid=vmid, name=f"base-{version}", status="running", config={})
    result = run_cli("template", "build", "--dry-run", lab=lab_path)
    assert result.exit_code == 0, result.output
    assert "never finished" not in result.output, "an unmarked VM without this machine's record is not ours"
    record_build("test", BuildUnderWay(9000, "base-209911300100", "base", "209911300100"), 9000)
    result = run_cli("template", "build", "--dry-run", lab=lab_path)
    assert result.exit_code == 0, result.output
    assert "remove VM 9000 base-209911300100: a build of version 209911300100 that never finished" in result.output
    assert "remove VM 9001" not in result.output  # no record names it: left alone
    lab = load_lab(lab_path)
    remove_half_built(
        connect(lab), lab, "base", RemoveHalfBuilt("pve1", 9000, "base-209911300100", "209911300100", True)
    )
    assert {vm["vmid"] for vm in fake_pve.vms()} == {9001}
    assert builds_under_way("test") == {}, "the record goes with the VM"
