"""State that heals: damaged, empty, unreadable and missing state files name themselves; hosts.json is rebuilt;
a lost admin key is the user's choice, shown by plan."""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path

import pytest

from homelab.demo.launcher import FakeProxmox
from homelab.state.reading import StateFileError, read_state_json
from tests.harness.cli import run_cli
from tests.harness.labs import lab_data, make_lab, write_lab

DAMAGE = {
    "truncated": lambda p: p.write_text('{"hosts": [{"name": "web", "addr'),
    "empty": lambda p: p.write_text(""),
    "not JSON": lambda p: p.write_bytes(b"\x00\xff\xfe garbage"),
    "wrong shape": lambda p: p.write_text('{"hosts": [{"nom": 1}]}'),
    # Tests run as root, for whom chmod 000 changes nothing: a folder in the file's place cannot be read by anyone.
    "unreadable": lambda p: (p.unlink(), p.mkdir()),
    "missing": lambda p: p.unlink(),
}


@pytest.fixture
def applied(tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A lab with one VM, applied once: hosts.json records it."""
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    lab = write_lab(tmp_path / "lab.yml", lab_data(fake_pve, [{"name": "web", "ip": "10.10.0.10"}]))
    result = run_cli("apply", "--yes", lab=lab)
    assert result.exit_code == 0, result.output
    return lab


@pytest.mark.fake_pve(time_scale=0, agent_delay=0)
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_hosts_record_is_set_aside_and_rebuilt_by_apply(
    tmp_path: Path, applied: Path, fake_pve: FakeProxmox, damage: str
) -> None:
    hosts = tmp_path / "state" / "test" / "hosts.json"
    good = json.loads(hosts.read_text())
    DAMAGE[damage](hosts)

    status = run_cli("status", lab=applied)
    assert status.exit_code == 0, status.output
    result = run_cli("apply", "--yes", lab=applied)
    assert result.exit_code == 0, result.output
    output = status.output + result.output
    assert "unexpected error" not in output and "Traceback" not in output
    if damage != "missing":
        assert f"{hosts}: " in status.stderr and "rebuilds it through the guest agents" in status.stderr
        assert list(hosts.parent.glob("hosts.json.damaged-*")), "the damaged record is kept aside, not deleted"
    # rebuilt through the agent: the same address and host key as the first apply learned
    assert json.loads(hosts.read_text()) == good


@pytest.mark.fake_pve(time_scale=0, agent_delay=0)
def test_plan_says_what_apply_will_re_learn_when_the_record_is_missing(
    tmp_path: Path, applied: Path, fake_pve: FakeProxmox
) -> None:
    hosts = tmp_path / "state" / "test" / "hosts.json"
    hosts.write_text("{")
    result = run_cli("plan", lab=applied)
    assert result.exit_code == 0, result.output
    assert "left as it is" in result.stderr and hosts.read_text() == "{"  # plan changes nothing, not even here
    assert "apply re-reads the address and host key of 1 running VM(s) through the guest agent" in result.output


@pytest.mark.fake_pve(time_scale=0, agent_delay=0)
def test_a_lost_admin_key_is_the_users_choice_not_a_silent_reboot(
    tmp_path: Path, applied: Path, fake_pve: FakeProxmox
) -> None:
    key = tmp_path / "state" / "test" / "ssh" / "id_ed25519"
    old_public = key.with_suffix(".pub").read_text().strip()
    key.unlink()
    key.with_suffix(".pub").unlink()

    plan = run_cli("plan", lab=applied)
    assert plan.exit_code == 3, plan.output
    assert f"homelab's admin key {key} is missing, but 1 VM(s) carry one (web)" in plan.output
    assert "homelab apply --new-admin-key" in plan.output

    fake_pve.requests(clear=True)
    refused = run_cli("apply", "--yes", lab=applied)
    assert refused.exit_code == 2 and "--new-admin-key" in refused.stderr
    assert not [r for r in fake_pve.requests() if r[0] != "GET"] and not key.exists()

    chosen = run_cli("apply", "--yes", "--new-admin-key", lab=applied)
    assert chosen.exit_code == 0, chosen.output
    new_public = key.with_suffix(".pub").read_text().strip()
    (web,) = [v for v in fake_pve.vms() if v["name"] == "web"]
    sshkeys = urllib.parse.unquote(web["config"]["sshkeys"])
    assert new_public in sshkeys and old_public not in sshkeys
    assert run_cli("plan", lab=applied).exit_code == 0


@pytest.mark.fake_pve(time_scale=0, agent_delay=0)
def test_plan_of_a_fresh_machine_says_apply_makes_the_admin_key(tmp_path: Path, fake_pve: FakeProxmox) -> None:
    lab = write_lab(tmp_path / "lab.yml", lab_data(fake_pve, [{"name": "web", "ip": "10.10.0.10"}]))
    result = run_cli("plan", lab=lab, env={"HOMELAB_PROXMOX_TOKEN": fake_pve.token_secret})
    assert result.exit_code == 3
    assert "apply first makes homelab's admin key" in result.output


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "is empty"),
        ('{"vms": ["web"', "is not valid JSON (line 1, column"),
        ('["web"]', 'is not {"vms": [...]}'),
        (None, "is a folder, not a file"),
    ],
)
def test_a_damaged_deploy_record_names_itself_and_clears_nothing(
    text: str | None, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from homelab.deploy.plan import deployed_file, deployed_vms

    lab = make_lab(None, [{"name": "web", "ip": "10.10.0.10"}])
    path = deployed_file(lab)
    path.parent.mkdir(parents=True)
    if text is None:
        path.mkdir()
    else:
        path.write_text(text)
    assert deployed_vms(lab) == frozenset()
    line = capsys.readouterr().err
    assert line.startswith(f"homelab: {path}: the deploy record {says}")
    assert "stacks on VMs since dropped from the lab file are left as they are" in line


def test_a_damaged_rotation_log_names_the_file_and_line() -> None:
    from homelab.repokeys.core import rotation_log
    from homelab.repokeys.keys import KeyStore

    lab = make_lab(None)
    log = KeyStore(lab).rotation_log
    log.parent.mkdir(parents=True)
    log.write_text('{"date": "2026-01-01"}\n{"date": "2026-\n')
    with pytest.raises(StateFileError, match=r"rotations.jsonl: line 2 of the rotation log is not valid JSON"):
        rotation_log(lab)
    log.unlink()
    assert rotation_log(lab) == []


def test_a_damaged_deploy_key_names_the_file() -> None:
    from homelab.repokeys.keys import CURRENT, KeyStore

    lab = make_lab(None)
    store = KeyStore(lab)
    key = store.create(CURRENT)
    pub = key.private_path.with_name(key.private_path.name + ".pub")
    pub.write_text("ssh-ed25519 not-base64!!\n")
    with pytest.raises(StateFileError, match="not an OpenSSH public key line"):
        store.current()
    pub.unlink()
    assert store.current() is not None  # the public half is made again from the private one
    key.private_path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\ntruncated")
    pub.unlink(missing_ok=True)
    with pytest.raises(StateFileError, match=f"{key.private_path}: the deploy key cannot be read"):
        store.current()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode; the folder case covers it")
def test_a_state_file_without_read_permission_names_itself(tmp_path: Path) -> None:
    path = tmp_path / "hosts.json"
    path.write_text("{}")
    path.chmod(0)
    with pytest.raises(StateFileError, match="permission denied"):
        read_state_json(path, "hosts record")
