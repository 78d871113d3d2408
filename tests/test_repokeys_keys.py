"""Deploy keys without a network: key files and their modes, URLs and pages, host-key pinning rules, CLI edges."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
from pathlib import Path

import pytest

from homelab.adapters.forge import deploy_key_page, published_host_keys
from homelab.adapters.git import parse_repo_url
from homelab.adapters.ssh import HostKey, ScriptResult, ssh_command
from homelab.adapters.sshkeys import fingerprint
from homelab.errors import InputError
from homelab.lab import Lab, load_lab
from homelab.repokeys import core, hostkeys
from homelab.repokeys.hostkeys import HostKeyMismatch, ensure_pinned
from homelab.repokeys.install import NOT_INSTALLED_EXIT, Switch, _install_body, _prelude, _switch
from homelab.repokeys.install import Checkout as Target
from homelab.repokeys.keys import KeyStore
from tests.harness.cli import run_cli
from tests.harness.labs import lab_data, write_lab

# GitHub's ed25519 host key as GitHub publishes it (docs.github.com, "GitHub's SSH key fingerprints").
GITHUB_ED25519 = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


@pytest.fixture
def lab_path(tmp_path: Path) -> Path:
    repo = {"url": "git@github.com:me/homelab-config.git", "branch": "main"}
    return write_lab(tmp_path / "lab.yml", lab_data(vms=[{"name": "docker-01"}], name="example", repo=repo))


@pytest.fixture
def lab(lab_path: Path) -> Lab:
    return load_lab(lab_path)


# --- key files --------------------------------------------------------------------------------


def test_generated_files_are_accepted_by_ssh_keygen(lab: Lab) -> None:
    key = core.generate(lab).key

    for path in (key.private_path, key.public_path):
        out = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True, check=True)
        bits, fp, *_rest = out.stdout.split()
        assert (bits, fp) == ("256", key.fingerprint)
        assert out.stdout.rstrip().endswith("(ED25519)")
    # The public key derived from the private file is the one in the .pub file.
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(key.private_path)], capture_output=True, text=True)
    assert derived.stdout.split()[:2] == key.public_line.split()[:2]
    assert key.comment.startswith("homelab-example-20")


def test_private_key_is_0600_from_birth_whatever_the_umask(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[tuple[str, int, int]] = []
    real_open = os.open

    def spying_open(path: object, flags: int, mode: int = 0o777, *args: object, **kwargs: object) -> int:
        fd = real_open(path, flags, mode, *args, **kwargs)  # type: ignore[arg-type]
        if flags & os.O_CREAT:
            st = os.fstat(fd)
            created.append((os.path.basename(str(path)), stat.S_IMODE(st.st_mode), st.st_size))
        return fd

    monkeypatch.setattr(os, "open", spying_open)
    old_umask = os.umask(0)
    try:
        key = core.generate(lab).key
    finally:
        os.umask(old_umask)

    private_creations = [
        c for c in created if c[0].startswith(".id_ed25519.") and not c[0].startswith(".id_ed25519.pub")
    ]
    assert private_creations, created
    assert all(mode == 0o600 and size == 0 for _, mode, size in private_creations), private_creations
    assert stat.S_IMODE(key.private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.private_path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(key.public_path.stat().st_mode) == 0o644


def test_generate_prints_key_fingerprint_and_page_and_refuses_to_overwrite(lab_path: Path, lab: Lab) -> None:
    first = run_cli("keys", "generate", lab=lab_path)
    assert first.exit_code == 0, first.output
    key = KeyStore(lab).require_current()
    assert key.public_line in first.output
    assert f"fingerprint: {key.fingerprint}" in first.output
    assert "https://github.com/me/homelab-config/settings/keys" in first.output
    assert "PRIVATE KEY" not in first.output

    again = run_cli("keys", "generate", lab=lab_path)
    assert again.exit_code == 2
    assert "already exists" in again.output and "--force" in again.output
    assert KeyStore(lab).require_current().fingerprint == key.fingerprint  # untouched

    forced = run_cli("keys", "generate", "--force", lab=lab_path)
    assert forced.exit_code == 0
    assert KeyStore(lab).require_current().fingerprint != key.fingerprint


def test_show_prints_the_same_key_again(lab_path: Path, lab: Lab) -> None:
    missing = run_cli("keys", "show", lab=lab_path)
    assert missing.exit_code == 2
    assert "homelab keys generate" in missing.output

    run_cli("keys", "generate", lab=lab_path)
    key = KeyStore(lab).require_current()
    key.public_path.unlink()  # the .pub file is a convenience: the private key has the public half
    shown = run_cli("keys", "show", lab=lab_path)
    assert shown.exit_code == 0
    assert " ".join(key.public_line.split()[:2]) in shown.output
    assert key.fingerprint in shown.output


def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    path = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    expected = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True).stdout.split()[1]
    assert fingerprint(path.with_suffix(".pub").read_text()) == expected


# --- URLs and pages ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "project", "target"),
    [
        ("git@github.com:me/homelab-config.git", "github.com", 22, "me/homelab-config", "github.com"),
        ("git@gitlab.com:group/sub/config", "gitlab.com", 22, "group/sub/config", "gitlab.com"),
        ("ssh://git@codeberg.org/me/config.git", "codeberg.org", 22, "me/config", "codeberg.org"),
        ("ssh://git@git.home.arpa:2222/me/config.git", "git.home.arpa", 2222, "me/config", "[git.home.arpa]:2222"),
        ("ssh://git@10.0.0.5/srv/git/config.git", "10.0.0.5", 22, "srv/git/config", "10.0.0.5"),
        ("ssh://git@[fd00::5]:22/me/config.git", "fd00::5", 22, "me/config", "fd00::5"),
    ],
)
def test_parse_repo_url(url: str, host: str, port: int, project: str, target: str) -> None:
    repo = parse_repo_url(url)
    assert (repo.host, repo.port, repo.project, repo.known_hosts_target) == (host, port, project, target)


@pytest.mark.parametrize("url", ["https://github.com/me/config.git", "github.com/me/config", "ssh://git@host"])
def test_parse_repo_url_refuses_what_is_not_an_ssh_clone_url(url: str) -> None:
    with pytest.raises(InputError, match="not an SSH clone URL"):
        parse_repo_url(url)


@pytest.mark.parametrize(
    ("url", "page"),
    [
        ("git@github.com:me/homelab-config.git", "https://github.com/me/homelab-config/settings/keys"),
        ("git@gitlab.com:group/sub/config.git", "https://gitlab.com/group/sub/config/-/settings/repository"),
        ("git@gitlab.example.org:me/config.git", "https://gitlab.example.org/me/config/-/settings/repository"),
        ("ssh://git@codeberg.org/me/config.git", "https://codeberg.org/me/config/settings/keys"),
        ("git@gitea.home.arpa:me/config.git", "https://gitea.home.arpa/me/config/settings/keys"),
        ("git@forgejo.home.arpa:me/config.git", "https://forgejo.home.arpa/me/config/settings/keys"),
        ("ssh://git@10.0.0.5/srv/git/config.git", None),
    ],
)
def test_deploy_key_page(url: str, page: str | None) -> None:
    found = deploy_key_page(parse_repo_url(url))
    assert found.url == page
    assert (page or "read-only deploy key") in found.hint


# --- host-key pinning rules -------------------------------------------------------------------


def test_shipped_github_fingerprint_is_the_one_of_githubs_published_key() -> None:
    (published,) = published_host_keys("github.com")
    assert published.key_type == "ssh-ed25519"
    assert published.fingerprint == fingerprint(f"ssh-ed25519 {GITHUB_ED25519}")
    assert {p.forge for h in ("gitlab.com", "codeberg.org") for p in published_host_keys(h)} == {
        "GitLab.com",
        "Codeberg",
    }
    assert published_host_keys("github.com", port=2222) == []
    assert published_host_keys("git.home.arpa") == []


def _scan_returns(monkeypatch: pytest.MonkeyPatch, *keys: HostKey) -> list[int]:
    calls: list[int] = []

    def scan(repo: object, timeout: int = 5) -> list[HostKey]:
        calls.append(1)
        return list(keys)

    monkeypatch.setattr(hostkeys, "scan_host_keys", scan)
    return calls


def test_a_forge_key_matching_the_published_fingerprint_is_pinned_without_asking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = parse_repo_url("git@github.com:me/config.git")
    _scan_returns(monkeypatch, HostKey("github.com", "ssh-ed25519", GITHUB_ED25519))
    known_hosts = tmp_path / "known_hosts"

    pin = ensure_pinned(known_hosts, repo, lambda contact: pytest.fail("asked although the forge publishes its key"))

    assert pin.pinned_now == "published"
    assert known_hosts.read_text() == f"github.com ssh-ed25519 {GITHUB_ED25519}\n"


def test_a_forge_key_not_matching_the_published_fingerprint_is_never_pinned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = parse_repo_url("git@github.com:me/config.git")
    impostor = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))).decode()
    _scan_returns(monkeypatch, HostKey("github.com", "ssh-ed25519", impostor))
    known_hosts = tmp_path / "known_hosts"

    with pytest.raises(HostKeyMismatch, match="GitHub publishes"):
        ensure_pinned(known_hosts, repo, lambda contact: True)  # even a "yes" does not pin it

    assert not known_hosts.exists()


def test_a_pinned_key_is_used_without_scanning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = parse_repo_url("ssh://git@git.home.arpa:2222/me/config.git")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"other.host ssh-ed25519 AAAA\n[git.home.arpa]:2222 ssh-ed25519 {GITHUB_ED25519}\n")
    calls = _scan_returns(monkeypatch)

    pin = ensure_pinned(known_hosts, repo, lambda contact: pytest.fail("asked although pinned"))

    assert pin.pinned_now is None and pin.key.key == GITHUB_ED25519
    assert calls == []


def test_git_ssh_command_offers_only_the_key_and_checks_the_pinned_host_key() -> None:
    command = ssh_command("/keys/id ed25519", "/state/known hosts")
    assert command.startswith("ssh -F none -i '/keys/id ed25519' ")
    for option in ("IdentitiesOnly=yes", "StrictHostKeyChecking=yes", "'UserKnownHostsFile=/state/known hosts'"):
        assert f"-o {option}" in command
    assert "StrictHostKeyChecking=no" not in command and "accept-new" not in command


# --- scripts sent to the VMs --------------------------------------------------------------------


def test_scripts_for_the_vms_are_valid_sh(lab: Lab) -> None:
    key = core.generate(lab).key
    target = Target(parse_repo_url("ssh://git@[fd00::5]:2222/it's/config.git"), "main", "x ssh-ed25519 AAAA", "homelab")
    bodies: list[str] = []

    class Recorder:
        def run(self, script: str, *, as_user: str, timeout: float = 120) -> object:
            bodies.append(script)
            return type("R", (), {"ok": True, "returncode": 0, "detail": lambda self: ""})()

    switch = Switch(Recorder(), target, key)  # type: ignore[arg-type]
    for step in (switch.stage, switch.switch, switch.settle, switch.install, switch.roll_back, switch.can_pull):
        assert step() is None
    bodies.append(_prelude(target) + _install_body(key))
    for body in bodies:
        checked = subprocess.run(["sh", "-n"], input=body, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr


class FailingAt:
    """A session whose scripts succeed until one contains ``marker``; it records what ran."""

    def __init__(self, marker: str | None, code: int = 3):
        self.marker = marker
        self.code = code
        self.ran: list[str] = []

    def run(self, script: str, *, as_user: str, timeout: float = 120) -> ScriptResult:
        body = script[script.index('mkdir -p "$S"') :]
        step = next(name for name, mark in STEP_MARKS if mark in body)
        self.ran.append(step)
        if self.marker and self.marker in body:
            return ScriptResult(self.code, "", "fatal: something broke")
        return ScriptResult(0, "", "")


STEP_MARKS = [
    ("stage", '$K.new" <<'),
    ("switch", 'use_key "$K.new"'),
    ("settle", 'put 600 "$K" < "$K.new"'),
    ("roll_back", 'put 600 "$K" < "$K.old"'),
    ("install", "git clone"),
    ("can_pull", 'fetch_with ""'),
]


@pytest.mark.parametrize(
    ("marker", "ran", "ok", "uses_old", "rolled_back"),
    [
        (None, ["stage", "switch", "settle"], True, False, False),
        ('fetch_with "$K.new"', ["stage", "roll_back", "can_pull"], False, True, True),
        ('use_key "$K.new"', ["stage", "switch", "roll_back", "can_pull"], False, True, True),
        ('put 600 "$K" < "$K.new"', ["stage", "switch", "settle", "roll_back", "can_pull"], False, True, True),
    ],
)
def test_a_failed_step_rolls_the_vm_back_to_the_old_key(
    lab: Lab, marker: str | None, ran: list[str], ok: bool, uses_old: bool, rolled_back: bool
) -> None:
    new = core.generate(lab).key
    target = Target(parse_repo_url("git@github.com:me/config.git"), "main", "github.com ssh-ed25519 AAAA", "homelab")
    session = FailingAt(marker)
    steps: list[str] = []

    outcome = _switch(Switch(session, target, new), "vm1", "SHA256:old", lambda h, step, d: steps.append(step))  # type: ignore[arg-type]

    assert session.ran == ran
    assert outcome.ok is ok and outcome.rolled_back is rolled_back
    assert outcome.uses == ("SHA256:old" if uses_old else new.fingerprint)
    assert steps[-1] == ("settled" if ok else "rolled-back")
    if not ok:
        assert "something broke" in outcome.detail and "rolled back to the old key" in outcome.detail


def test_a_vm_without_a_deploy_key_gets_a_plain_install(lab: Lab) -> None:
    new = core.generate(lab).key
    target = Target(parse_repo_url("git@github.com:me/config.git"), "main", "github.com ssh-ed25519 AAAA", "homelab")
    session = FailingAt("grep -qsxF", code=NOT_INSTALLED_EXIT)

    outcome = _switch(Switch(session, target, new), "vm1", "SHA256:old", lambda h, s, d: None)  # type: ignore[arg-type]

    assert session.ran == ["stage", "install"]
    assert outcome.ok and outcome.uses == new.fingerprint


# --- CLI edges ----------------------------------------------------------------------------------


def test_verify_without_a_repo_section_says_what_is_missing(tmp_path: Path) -> None:
    path = write_lab(tmp_path / "lab.yml", lab_data(vms=[{"name": "docker-01"}], name="example"))
    result = run_cli("keys", "verify", lab=path)
    assert result.exit_code == 2
    assert "no repo: section" in result.output


def test_rotate_without_a_terminal_needs_yes_and_changes_nothing(lab_path: Path, lab: Lab) -> None:
    run_cli("keys", "generate", lab=lab_path)
    result = run_cli("keys", "rotate", lab=lab_path)
    assert result.exit_code == 2
    assert "--yes" in result.output
    assert KeyStore(lab).pending() is None
