"""`homelab up`: templates, VMs and the deploy-key stage in one command, idempotent, asking first."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from homelab.adapters.ansible import FileDiff, HostStats, RunRequest, TaskEvent
from homelab.adapters.proxmox.connect import connect
from homelab.demo.launcher import FakeProxmox
from homelab.errors import Aborted
from homelab.lab import load_lab
from homelab.pipeline import up
from homelab.provision.executor import SilentReporter
from tests.harness.buildhost import BuildHost
from tests.harness.cli import run_cli
from tests.harness.fixtures_build import bake_network
from tests.harness.labs import lab_data, write_lab
from tests.harness.playbooks import FakeRunner, inventory_hosts

pytestmark = [pytest.mark.integration]
STORAGES = {
    "local": {"type": "dir", "active": 1, "content": "iso,vztmpl,backup,import", "files": [], "path": "/var/lib/vz"}
}
IMAGE = {"url": "https://images.example/debian-12-genericcloud-amd64.qcow2", "checksum": "sha512:" + "ab" * 64}


@pytest.fixture
def lab(tmp_path: Path, fake_pve: FakeProxmox, build_host: BuildHost, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A lab whose template is baked on ``build_host``: the fake starts agent-less, as a stock cloud image."""
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    vms = [{"name": "web", "ip": "10.10.0.10"}, {"name": "db", "ip": "dhcp"}]
    data = lab_data(fake_pve, vms, network=bake_network(build_host))
    data["templates"] = [{"name": "debian-docker", "image": IMAGE}]
    return write_lab(tmp_path / "lab.yml", data)


@pytest.mark.fake_pve(guests=[], storages=STORAGES)
def test_up_bakes_the_template_then_brings_up_the_vms(lab: Path, fake_pve: FakeProxmox) -> None:
    result = run_cli("up", lab=lab)
    assert result.exit_code == 2 and "pass --yes" in result.stderr
    assert [vm for vm in fake_pve.vms()] == []  # refused before changing anything

    result = run_cli("up", "--yes", lab=lab)
    assert result.exit_code == 0, result.stdout + result.stderr
    templates = [vm for vm in fake_pve.vms() if vm["template"]]
    assert len(templates) == 1 and templates[0]["name"].startswith("debian-docker-")
    running = sorted(vm["name"] for vm in fake_pve.vms() if vm["status"] == "running")
    assert running == ["db", "web"]
    assert "Skipped: the lab file has no repo" in result.stdout
    assert "Skipped: no VM in the lab file lists stacks." in result.stdout

    fake_pve.requests(clear=True)
    result = run_cli("up", "--yes", lab=lab)
    assert result.exit_code == 0
    assert (
        "Every template the VMs use has a version on Proxmox." in result.stdout
        and "Plan: 2 unchanged." in result.stdout
    )
    assert [r for r in fake_pve.requests() if r[0] != "GET"] == []


def check_only(request: RunRequest) -> tuple[list[TaskEvent], dict[str, HostStats]]:
    """The check run finds a new file on each host; a real run fails the test."""
    assert request.check, "the deploy ran for real after it was declined"
    hosts = inventory_hosts(request)
    diff = FileDiff("/home/homelab/stacks/traefik/.env", "new", "", "X=1\n")
    events = [TaskEvent("changed", host, "Stack files", diffs=(diff,)) for host in hosts]
    return events, {host: HostStats(ok=1, changed=1) for host in hosts}


def refuse(prefix: str, asked: list[str]) -> Callable[[str], None]:
    """A user who says yes to every question but the one starting with ``prefix``."""

    def confirm(question: str) -> None:
        asked.append(question)
        if question.startswith(prefix):
            raise Aborted("Nothing was changed.")

    return confirm


@pytest.mark.fake_pve(guests=[], storages=STORAGES)
def test_declining_the_deploy_says_what_the_earlier_stages_did(lab: Path, fake_pve: FakeProxmox) -> None:
    data = yaml.safe_load(lab.read_text())
    data["vms"][0]["stacks"] = ["traefik"]
    model = load_lab(write_lab(lab, data))
    asked: list[str] = []
    runner = FakeRunner(check_only)
    with pytest.raises(Aborted) as declined:
        up(connect(model), model, lambda line: None, refuse("Deploy", asked), SilentReporter(), deploy_runner=runner)
    template = next(vm["name"] for vm in fake_pve.vms() if vm["template"])
    assert str(declined.value) == (
        f"templates: built {template}; VMs: 2 created; deploy key: skipped (no repo: section); "
        "deploy: declined, nothing deployed"
    )
    assert asked[-1] == "Deploy to 1 VM(s)?" and [r.check for r in runner.requests] == [True]
    assert sorted(vm["name"] for vm in fake_pve.vms() if vm["status"] == "running") == ["db", "web"]


@pytest.mark.fake_pve(guests=[], storages=STORAGES)
def test_declining_the_vms_after_a_template_was_built(lab: Path, fake_pve: FakeProxmox) -> None:
    model = load_lab(lab)
    with pytest.raises(Aborted) as declined:
        up(connect(model), model, lambda line: None, refuse("Apply", []), SilentReporter())
    template = next(vm["name"] for vm in fake_pve.vms() if vm["template"])
    assert str(declined.value) == f"templates: built {template}; VMs: declined, nothing changed"
    assert [vm for vm in fake_pve.vms() if not vm["template"]] == []

    with pytest.raises(Aborted) as declined:  # the template is there now: nothing is built, nothing changes
        up(connect(model), model, lambda line: None, refuse("Apply", []), SilentReporter())
    assert str(declined.value) == "Nothing was changed (templates: none missing; VMs: declined)."
