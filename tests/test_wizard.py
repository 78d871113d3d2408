"""`homelab init` against the fake Proxmox: real choices from the cluster, a validated lab, no secret written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from homelab.cli import cli
from homelab.demo.launcher import FakeProxmox
from homelab.lab import load_lab

pytestmark = pytest.mark.integration


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


def run_init(tmp_path: Path, data: dict[str, object], *flags: str) -> tuple[int, str, str]:
    path = tmp_path / "answers.yml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(
        cli, ["--lab", str(tmp_path / "lab.yml"), "init", "--answers", str(path), *flags], catch_exceptions=False
    )
    return result.exit_code, result.stdout, result.stderr


def test_init_writes_a_valid_lab_from_live_choices(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    code, _, err = run_init(tmp_path, answers(fake_pve), "--defaults")
    assert code == 0, err
    lab = load_lab(tmp_path / "lab.yml")
    assert (lab.proxmox.node, lab.proxmox.storage, lab.proxmox.bridge) == ("pve1", "local-lvm", "vmbr0")
    # subnet and gateway default to what the bridge has
    assert (lab.network.subnet, lab.network.gateway) == ("192.0.2.0/24", "192.0.2.1")
    assert [(v.name, v.ip) for v in lab.vms] == [("docker-01", "192.0.2.20"), ("media-01", "192.0.2.21")]
    assert lab.vms[0].stacks == ["traefik", "homepage"]
    text = (tmp_path / "lab.yml").read_text()
    assert fake_pve.token_secret not in text
    # and it plans against the same cluster
    result = CliRunner().invoke(cli, ["--lab", str(tmp_path / "lab.yml"), "plan"], catch_exceptions=False)
    assert result.exit_code == 3 and "+ create docker-01" in result.stdout


def test_init_refuses_a_choice_the_cluster_does_not_offer(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    code, _, err = run_init(tmp_path, answers(fake_pve, **{"proxmox.storage": "ceph"}), "--defaults")
    assert code == 2
    assert err.strip() == "init: proxmox.storage: 'ceph' is not offered here; choose from local-lvm"
    assert not (tmp_path / "lab.yml").exists()


def test_init_never_overwrites_without_force(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    (tmp_path / "lab.yml").write_text("mine\n")
    code, _, err = run_init(tmp_path, answers(fake_pve), "--defaults")
    assert code == 2 and "already exists" in err
    assert (tmp_path / "lab.yml").read_text() == "mine\n"
    assert run_init(tmp_path, answers(fake_pve), "--defaults", "--force")[0] == 0


def test_init_without_terminal_or_answers_fails_fast(tmp_path: Path, fake_pve: FakeProxmox) -> None:
    code, _, err = run_init(
        tmp_path,
        {},
    )
    assert code == 2 and "not on a terminal" in err and "--answers" in err


def test_init_needs_the_secret_from_the_environment(tmp_path: Path, fake_pve: FakeProxmox) -> None:
    code, _, err = run_init(tmp_path, answers(fake_pve), "--defaults")
    assert code == 2 and "HOMELAB_PROXMOX_TOKEN" in err
