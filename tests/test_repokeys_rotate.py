"""Installing the deploy key on VMs and rotating it, against a real git server and two SSH test hosts."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from homelab.adapters.sshkeys import fingerprint
from homelab.lab import Lab, load_lab
from homelab.repokeys import core
from homelab.repokeys.keys import DeployKey, KeyStore
from homelab.state.hosts import Host, save_hosts
from tests.harness.cli import run_cli
from tests.harness.fixtures_hosts import HostFactory
from tests.harness.gitserver import GitServer, git_server_fixture  # noqa: F401
from tests.harness.hosts import SshHost
from tests.harness.labs import lab_data, write_lab

pytestmark = pytest.mark.integration

USER = "homelab"
ROTATE = ("keys", "rotate", "--yes", "--wait-timeout", "20")  # the CLI run the CLI tests make
HOME = f"/home/{USER}"


@dataclass
class Setup:
    """A lab whose key reads the git server, and two hosts that can reach it (nothing installed yet)."""

    lab: Lab
    lab_path: Path
    server: GitServer
    vms: list[SshHost]
    hosts: list[Host]


def _host(vm: SshHost) -> Host:
    return Host(name=vm.name, address=vm.address, user="root", host_key=vm.host_key_pub, key_file=str(vm.client_key))


@pytest.fixture
def setup(git_server: GitServer, ssh_hosts: HostFactory, tmp_path: Path) -> Iterator[Setup]:
    vms = ssh_hosts(2)
    for vm in vms:
        git_server.connect(vm)
        vm.exec(["useradd", "-m", "-d", HOME, "-s", "/bin/sh", USER])
    repo = {"url": git_server.url, "branch": "main"}
    data = lab_data(vms=[{"name": vm.name} for vm in vms], name="example", repo=repo)
    lab_path = write_lab(tmp_path / "lab.yml", data)
    lab = load_lab(lab_path)
    git_server.add_key(core.generate(lab).key.public_line)
    core.verify(lab, lambda contact: contact.key.fingerprint == fingerprint(git_server.host.host_key_pub))
    yield Setup(lab, lab_path, git_server, vms, [_host(vm) for vm in vms])


def _as_user(vm: SshHost, cmd: str, check: bool = True) -> str:
    """Run ``cmd`` on the VM as the lab user. The test looks through nsenter (fast); homelab itself uses SSH."""
    proc = vm.exec(["runuser", "-u", USER, "--", "env", f"HOME={HOME}", "sh", "-c", cmd], check=check)
    return proc.stdout.strip() if proc.returncode == 0 else f"FAILED({proc.returncode}): {proc.stderr.strip()}"


def _sh(vm: SshHost, cmd: str) -> subprocess.CompletedProcess[str]:
    """Run a shell command on the VM as root (through nsenter, to look at its state)."""
    return vm.exec(["sh", "-c", cmd])


def _pull(vm: SshHost) -> str:
    """Pull the way the VM does (its ssh config); the checkout's HEAD afterwards, or FAILED(...)."""
    return _as_user(vm, f"cd {HOME}/config && git pull -q --ff-only && git rev-parse HEAD", check=False)


def _pull_all(vms: list[SshHost]) -> list[str]:
    """Pull on every VM at once (in threads, to keep the test fast)."""
    with ThreadPoolExecutor(len(vms)) as pool:
        return list(pool.map(_pull, vms))


def _key_in_use(vm: SshHost) -> str:
    """Fingerprint of the key file the VM's ssh config points at."""
    identity = _as_user(vm, f"awk '$1 == \"IdentityFile\" {{ print $2 }}' {HOME}/.ssh/config")
    public = _as_user(vm, f"ssh-keygen -y -f {identity}")
    return fingerprint(public)


def test_install_puts_key_config_and_checkout_in_place(setup: Setup) -> None:
    key = KeyStore(setup.lab).require_current()

    outcomes = core.install(setup.lab, setup.hosts)

    assert [o.ok for o in outcomes] == [True, True], outcomes
    head = setup.server.head()
    for vm in setup.vms:
        stat = _sh(
            vm,
            f"stat -c '%a %U %n' {HOME}/.ssh {HOME}/.ssh/homelab_deploy_key {HOME}/.ssh/known_hosts {HOME}/.ssh/config",
        ).stdout.split("\n")
        assert stat[:4] == [
            f"700 {USER} {HOME}/.ssh",
            f"600 {USER} {HOME}/.ssh/homelab_deploy_key",
            f"644 {USER} {HOME}/.ssh/known_hosts",
            f"600 {USER} {HOME}/.ssh/config",
        ]
        assert _sh(vm, f"cat {HOME}/.ssh/known_hosts").stdout.split() == setup.server.known_hosts_line.split()
        config = _sh(vm, f"cat {HOME}/.ssh/config").stdout
        assert f"Host {setup.server.address}\n" in config
        assert "IdentitiesOnly yes" in config and "StrictHostKeyChecking yes" in config
        assert _key_in_use(vm) == key.fingerprint
        assert _as_user(vm, f"git -C {HOME}/config rev-parse --abbrev-ref HEAD") == "main"
        assert _pull(vm) == head

    # Installing again on an existing checkout fetches and fast-forwards to the new commit.
    new_head = setup.server.commit("second")
    assert [o.ok for o in core.install(setup.lab, setup.hosts)] == [True, True]
    for vm in setup.vms:
        assert _as_user(vm, f"git -C {HOME}/config rev-parse HEAD") == new_head
        assert _sh(vm, f"grep -c 'BEGIN homelab deploy key' {HOME}/.ssh/config").stdout.strip() == "1"


def test_rotation_end_to_end(setup: Setup) -> None:
    assert all(o.ok for o in core.install(setup.lab, setup.hosts))
    old = KeyStore(setup.lab).require_current()
    head = setup.server.head()
    checks: list[tuple[str, str, list[str]]] = []

    def await_added(report: core.KeyReport) -> None:
        assert report.created and report.key.fingerprint != old.fingerprint
        assert not core.can_read(setup.lab, report.key)  # not added yet
        setup.server.add_key(report.key.public_line)  # the user pastes it

    def progress(host: str, step: str, detail: str) -> None:
        # After every step, every VM can still pull.
        checks.append((host, step, _pull_all(setup.vms)))

    result = core.rotate(setup.lab, setup.hosts, await_added=await_added, progress=progress)

    assert result.complete, result.hosts
    steps = [(host, step) for host, step, _ in checks]
    assert steps == [
        ("", "verified"),
        ("h1", "staged"),
        ("h1", "switched"),
        ("h1", "settled"),
        ("h2", "staged"),
        ("h2", "switched"),
        ("h2", "settled"),
    ]
    for host, step, pulls in checks:
        assert pulls == [head, head], (host, step, pulls)
    new = KeyStore(setup.lab).require_current()
    assert new.fingerprint == result.new.fingerprint != old.fingerprint
    assert KeyStore(setup.lab).pending() is None
    for vm in setup.vms:
        assert _key_in_use(vm) == new.fingerprint
        assert "homelab_deploy_key.new" not in _sh(vm, f"ls {HOME}/.ssh").stdout

    # The user removes the old key: the old key is refused, the VMs still pull (a new commit, even).
    setup.server.remove_key(old.public_line)
    assert result.retired is not None and core.is_revoked(setup.lab, result.retired)
    new_head = setup.server.commit("after rotation")
    assert _pull_all(setup.vms) == [new_head, new_head]

    log = core.rotation_log(setup.lab)
    assert len(log) == 1
    assert log[0]["old"] == old.fingerprint and log[0]["new"] == new.fingerprint and log[0]["complete"] is True
    assert [(h["host"], h["ok"]) for h in log[0]["hosts"]] == [("h1", True), ("h2", True)]  # type: ignore[union-attr]


def test_rotation_with_an_unreachable_host_leaves_it_on_the_old_key(setup: Setup) -> None:
    assert all(o.ok for o in core.install(setup.lab, setup.hosts))
    save_hosts(setup.lab, setup.hosts)
    h1, h2 = setup.vms
    store = KeyStore(setup.lab)
    old = store.require_current()
    head = setup.server.head()
    setup.server.disconnect(h2)  # h2 cannot reach the git server any more

    with _forge_user(store, setup.server):
        first = run_cli(*ROTATE, lab=setup.lab_path)

    assert first.exit_code == 1, first.output
    new = store.pending()
    assert new is not None and new.fingerprint != old.fingerprint
    assert "h1: new key: switched to the new key" in first.output
    assert "h2: OLD key: the new key cannot fetch here" in first.output
    assert "rolled back to the old key" in first.output
    assert f"1 VM(s) still use the old key {old.fingerprint}: h2. Keep the old key" in first.output
    assert "can now be removed" not in first.output
    assert _key_in_use(h1) == new.fingerprint
    assert _key_in_use(h2) == old.fingerprint
    assert "homelab_deploy_key.new" not in _sh(h2, f"ls {HOME}/.ssh").stdout
    assert store.require_current().fingerprint == old.fingerprint  # the old key stays the current one
    entry = core.rotation_log(setup.lab)[-1]
    assert entry["complete"] is False
    assert [(h["host"], h["ok"], h["uses"]) for h in entry["hosts"]] == [  # type: ignore[union-attr]
        ("h1", True, new.fingerprint),
        ("h2", False, old.fingerprint),
    ]

    # Once h2 is back it pulls with the old key; rotate again takes up the same new key and finishes.
    setup.server.connect(h2)
    assert _pull_all(setup.vms) == [head, head]
    second = run_cli(*ROTATE, lab=setup.lab_path)
    assert second.exit_code == 0, second.output
    assert "Taking up the new key of an unfinished rotation" in second.output
    assert store.require_current().fingerprint == new.fingerprint and store.pending() is None
    assert [_key_in_use(vm) for vm in setup.vms] == [new.fingerprint] * 2
    setup.server.remove_key(old.public_line)
    assert _pull_all(setup.vms) == [head, head]


@contextlib.contextmanager
def _forge_user(store: KeyStore, server: GitServer, remove_old: DeployKey | None = None) -> Iterator[None]:
    """Plays the user at the forge in a thread: adds the new key once rotate shows it, and with
    ``remove_old`` removes that key once rotate has retired it."""
    stop = threading.Event()

    def user() -> None:
        while not stop.is_set() and store.pending() is None:
            time.sleep(0.05)
        if stop.is_set():
            return
        server.add_key(store.pending().public_line)  # type: ignore[union-attr]
        while remove_old and not stop.is_set() and not (store.root / "retired").exists():
            time.sleep(0.05)
        if remove_old and not stop.is_set():
            server.remove_key(remove_old.public_line)

    thread = threading.Thread(target=user, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def test_cli_rotate_non_interactive(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """--yes polls until the key is added, --check-old-revoked until the old one is removed."""
    import homelab.cli.keys as cli_keys

    monkeypatch.setattr(cli_keys, "POLL_INTERVAL", 0.2)
    assert all(o.ok for o in core.install(setup.lab, setup.hosts))
    save_hosts(setup.lab, setup.hosts)
    store = KeyStore(setup.lab)
    old = store.require_current()

    with _forge_user(store, setup.server, remove_old=old):
        result = run_cli(*ROTATE, "--check-old-revoked", lab=setup.lab_path)

    assert result.exit_code == 0, result.output
    new = store.require_current()
    assert new.fingerprint != old.fingerprint
    assert new.public_line in result.output
    assert "h1: new key" in result.output and "h2: new key" in result.output
    assert f"The old key {old.fingerprint} ({old.comment}) can now be removed" in result.output
    assert f"Checked: the old key {old.fingerprint} no longer works." in result.output
    assert [_key_in_use(vm) for vm in setup.vms] == [new.fingerprint] * 2
    entry = json.loads(store.rotation_log.read_text().splitlines()[-1])
    assert entry["old"] == old.fingerprint and entry["new"] == new.fingerprint


@pytest.mark.parametrize("recorded", [["h1"], None], ids=["one-vm-unrecorded", "no-hosts-file"])
def test_cli_rotate_refuses_while_a_lab_vm_has_no_host_record(setup: Setup, recorded: list[str] | None) -> None:
    """A VM that apply did not record would keep the old key and stop pulling once it is removed: refuse."""
    assert all(o.ok for o in core.install(setup.lab, setup.hosts))
    if recorded is not None:
        save_hosts(setup.lab, [h for h in setup.hosts if h.name in recorded])
    store = KeyStore(setup.lab)
    old = store.require_current()

    with _forge_user(store, setup.server, remove_old=old):
        result = run_cli(*ROTATE, lab=setup.lab_path)

    assert result.exit_code == 2, result.output
    missing = "h2" if recorded else "h1, h2"
    assert f"no host record for {missing}" in result.output
    assert store.pending() is None and store.require_current().fingerprint == old.fingerprint
    assert core.rotation_log(setup.lab) == []
    assert setup.server.keys == [" ".join(old.public_line.split()[:2])]
    assert [_key_in_use(vm) for vm in setup.vms] == [old.fingerprint] * 2
