"""`homelab init` against the fake Proxmox: real choices from the cluster, a validated lab, no secret written."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import yaml
from click.testing import Result

from homelab.demo.launcher import FakeProxmox
from homelab.lab import load_lab
from tests.harness.cli import run_cli

# local takes cloud images to import (a stock install's does not: doctor, which init runs last, would say so)
IMPORTS = {"local": {"type": "dir", "active": 1, "content": "iso,vztmpl,backup,import", "path": "/var/lib/vz"}}
pytestmark = [pytest.mark.integration, pytest.mark.fake_pve(storages=IMPORTS)]


def answers(fake: FakeProxmox, **extra: object) -> dict[str, object]:
    data: dict[str, object] = {
        "proxmox.url": fake.url,
        "proxmox.token_id": fake.token_id,
        "proxmox.ca_bundle": fake.cafile,
        "name": "home",
        "proxmox.node": "pve1",
        "proxmox.storage": "local-lvm",
        "proxmox.bridge": "vmbr0",
        "vms": "docker-01, media-01",
        "vm.stacks": ["traefik", "homepage"],
    }
    data.update(extra)
    return data


def run_init(tmp_path: Path, data: dict[str, object], *flags: str) -> Result:
    """`homelab init` with ``data`` as its answers file, writing tmp_path/lab.yml."""
    path = tmp_path / "answers.yml"
    path.write_text(yaml.safe_dump(data))
    return run_cli("init", "--answers", str(path), *flags, lab=tmp_path / "lab.yml")


def test_init_writes_a_valid_lab_from_live_choices(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    result = run_init(tmp_path, answers(fake_pve), "--defaults")
    assert result.exit_code == 0, result.stderr
    lab = load_lab(tmp_path / "lab.yml")
    assert (lab.proxmox.node, lab.proxmox.storage, lab.proxmox.bridge) == ("pve1", "local-lvm", "vmbr0")
    # subnet and gateway default to what the bridge has
    assert (lab.network.subnet, lab.network.gateway) == ("192.0.2.0/24", "192.0.2.1")
    assert [(v.name, v.ip) for v in lab.vms] == [("docker-01", "192.0.2.20"), ("media-01", "192.0.2.21")]
    # the template's build VM gets a free-looking address high in the subnet, away from the VMs'
    assert lab.network.build_ip == "192.0.2.249"
    assert lab.vms[0].stacks == ["traefik", "homepage"]
    text = (tmp_path / "lab.yml").read_text()
    assert fake_pve.token_secret not in text
    # and it plans against the same cluster
    result = run_cli("plan", lab=tmp_path / "lab.yml")
    assert result.exit_code == 3 and "+ create docker-01" in result.stdout


def test_init_refuses_a_choice_the_cluster_does_not_offer(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    result = run_init(tmp_path, answers(fake_pve, **{"proxmox.storage": "ceph"}), "--defaults")
    assert result.exit_code == 2
    assert result.stderr.strip() == "init: proxmox.storage: 'ceph' is not offered here; choose from local-lvm"
    assert not (tmp_path / "lab.yml").exists()


def test_init_never_overwrites_without_force(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    (tmp_path / "lab.yml").write_text("mine\n")
    result = run_init(tmp_path, answers(fake_pve), "--defaults")
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert (tmp_path / "lab.yml").read_text() == "mine\n"
    assert run_init(tmp_path, answers(fake_pve), "--defaults", "--force").exit_code == 0


def test_init_without_terminal_or_answers_fails_fast(tmp_path: Path, fake_pve: FakeProxmox) -> None:
    result = run_init(
        tmp_path,
        {},
    )
    assert result.exit_code == 2 and "not on a terminal" in result.stderr and "--answers" in result.stderr


def test_init_needs_the_secret_from_the_environment(tmp_path: Path, fake_pve: FakeProxmox) -> None:
    result = run_init(tmp_path, answers(fake_pve), "--defaults")
    assert result.exit_code == 2 and "HOMELAB_PROXMOX_TOKEN" in result.stderr


def test_init_on_a_terminal_drives_the_real_prompts(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every question goes through questionary (select, checkbox, text), answered by keystrokes."""
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from homelab.wizard import Question, run_init

    monkeypatch.delenv("HOMELAB_PROXMOX_TOKEN", raising=False)
    enter, clear = "\r", "\x15"  # Enter; Ctrl-U clears a pre-filled default
    keys = {
        "proxmox.url": clear + fake_pve.url + enter,
        "proxmox.token_id": clear + fake_pve.token_id + enter,
        "proxmox.ca_bundle": fake_pve.cafile + enter,
        "secret": fake_pve.token_secret + enter,  # the hidden prompt: HOMELAB_PROXMOX_TOKEN is not set
        "name": clear + "den" + enter,
        "vms": clear + "docker-01, nas" + enter,
        "vm.stacks": " " + enter,  # untick the first (homepage), keep the rest
    }
    asked: list[str] = []
    opened = contextlib.ExitStack()

    def terminal(q: Question) -> dict[str, object]:
        asked.append(q.key)
        pipe = opened.enter_context(create_pipe_input())
        pipe.send_text(keys.get(q.key, enter))  # everything else: take what is offered
        return {"input": pipe, "output": DummyOutput()}

    with opened:
        result = run_init(tmp_path / "lab.yml", interactive=True, terminal=terminal)
    assert asked[:4] == ["proxmox.url", "proxmox.token_id", "proxmox.ca_bundle", "secret"]
    assert "proxmox.node" in asked and "vm.stacks" in asked
    lab = load_lab(result.path)
    assert lab.name == "den" and [v.name for v in lab.vms] == ["docker-01", "nas"]
    assert lab.proxmox.node == "pve1" and lab.proxmox.bridge == "vmbr0"
    assert lab.vms[0].stacks == ["media", "portainer", "traefik"]
    assert fake_pve.token_secret not in result.path.read_text()


@pytest.mark.parametrize(
    ("extra", "packer"),
    [
        ({"template.packer_source": "clone", "template.clone_vm": "debian-12-cloud"}, ("clone", "debian-12-cloud")),
        ({"template.packer_source": "iso", "template.iso_file": "local:iso/debian-12.iso"}, ("iso", None)),
    ],
)
def test_init_with_packer_asks_what_packer_starts_from(
    tmp_path: Path,
    fake_pve: FakeProxmox,
    monkeypatch: pytest.MonkeyPatch,
    extra: dict[str, str],
    packer: tuple[str, str | None],
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    result = run_init(tmp_path, answers(fake_pve, **{"template.builder": "packer", **extra}), "--defaults")
    assert result.exit_code == 0, result.stderr
    template = load_lab(tmp_path / "lab.yml").templates[0]
    assert template.builder == "packer" and template.packer is not None
    assert (template.packer.source, template.packer.clone_vm) == packer
