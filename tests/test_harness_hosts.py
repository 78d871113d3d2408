"""Tests of the SSH test-host harness (tests/harness/hosts.py)."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest

from tests.harness import hosts as hosts_mod
from tests.harness.fixtures_hosts import HostFactory
from tests.harness.hosts import SshHost

pytestmark = pytest.mark.integration


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _passwd_names() -> set[str]:
    return {line.split(":", 1)[0] for line in Path("/etc/passwd").read_text().splitlines() if line}


def _other_key(tmp_path: Path, name: str) -> tuple[Path, str]:
    key = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pub = " ".join(key.with_name(name + ".pub").read_text().split()[:2])
    return key, pub


def test_home_is_per_host(ssh_host: SshHost) -> None:
    machine_file = Path("/home/homelab/x")
    machine_had_it = machine_file.exists()

    ssh_host.run("mkdir -p /home/homelab && echo hi > /home/homelab/x")

    assert ssh_host.run("cat /home/homelab/x").stdout.strip() == "hi"
    assert (ssh_host.home_dir / "homelab" / "x").read_text().strip() == "hi"
    if not machine_had_it:
        assert not machine_file.exists()


def test_changed_host_key_is_refused(ssh_host: SshHost, tmp_path: Path) -> None:
    _, other_pub = _other_key(tmp_path, "impostor_host_key")
    assert other_pub != ssh_host.host_key_pub
    bad_known_hosts = tmp_path / "bad_known_hosts"
    bad_known_hosts.write_text(f"{ssh_host.address} {other_pub}\n")

    proc = subprocess.run(
        ssh_host.ssh_argv("true", known_hosts_file=bad_known_hosts),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert proc.returncode != 0
    assert "Host key verification failed" in proc.stderr or "REMOTE HOST IDENTIFICATION HAS CHANGED" in proc.stderr, (
        proc.stderr
    )
    # The pinned key itself works.
    assert ssh_host.run("echo ok").stdout.strip() == "ok"


def test_useradd_stays_on_the_host(ssh_host: SshHost) -> None:
    before = _passwd_names()
    user = f"hltest{secrets.token_hex(4)}"
    assert user not in before

    if "homelab" not in before:
        ssh_host.run("useradd -m -d /home/homelab homelab")
        assert "uid=" in ssh_host.run("id homelab").stdout
        assert (ssh_host.home_dir / "homelab").is_dir()
    ssh_host.run(f"useradd -m -d /home/{user} {user}")
    assert f"({user})" in ssh_host.run(f"id {user}").stdout
    assert (ssh_host.home_dir / user).is_dir()

    after = _passwd_names()
    assert user not in after
    assert after == before
    assert not Path("/home", user).exists()
    # The overlay's upper layer holds the host's copy of /etc/passwd.
    assert user in (ssh_host.etc_upper / "passwd").read_text()


def test_two_hosts_then_teardown(ssh_hosts: HostFactory) -> None:
    h1, h2 = ssh_hosts(2)
    assert h1.address != h2.address
    assert h1.netns != h2.netns
    for host in (h1, h2):
        assert host.address in host.run("ip -o -4 addr show").stdout
        assert host.run("echo $((6*7))").stdout.strip() == "42"
    pids = [h.pid for h in (h1, h2)]
    assert all(pid is not None and _pid_alive(pid) for pid in pids)

    for host in (h1, h2):
        host.stop()
        host.stop()  # idempotent

    names = _netns_names()
    for host, pid in zip((h1, h2), pids, strict=True):
        assert host.netns not in names
        assert not _pid_alive(pid)  # type: ignore[arg-type]
        assert not _link_exists(host.veth)
        assert not host.root.exists()


def test_unauthorized_client_key_is_refused(ssh_host: SshHost, tmp_path: Path) -> None:
    stranger_key, _ = _other_key(tmp_path, "stranger")

    proc = subprocess.run(
        ssh_host.ssh_argv("true", client_key=stranger_key),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert proc.returncode == 255
    assert "Permission denied" in proc.stderr, proc.stderr


def test_exec_enters_the_host_namespaces(ssh_host: SshHost) -> None:
    out = ssh_host.exec(["ip", "-o", "-4", "addr", "show"]).stdout
    assert ssh_host.address in out
    ssh_host.exec(["sh", "-c", "echo from-exec > /home/marker"])
    assert (ssh_host.home_dir / "marker").read_text().strip() == "from-exec"


def test_context_manager_tears_down_on_error(tmp_path: Path) -> None:
    reason = hosts_mod.host_support()
    if reason is not None:
        pytest.skip(reason)
    made: list[SshHost] = []
    with pytest.raises(RuntimeError, match="boom"), hosts_mod.test_hosts(1, tmp_path) as hosts:
        made.extend(hosts)
        assert hosts[0].run("hostname").returncode == 0
        raise RuntimeError("boom")
    assert made and made[0].netns not in _netns_names()
    assert not _pid_alive(made[0].pid)  # type: ignore[arg-type]


def test_regenerated_host_key_is_presented_and_the_old_one_refused(ssh_host: SshHost, tmp_path: Path) -> None:
    old_known = tmp_path / "old_known_hosts"
    old_known.write_text(ssh_host.known_hosts_line + "\n")
    old = ssh_host.host_key_pub
    new = ssh_host.regenerate_host_key()
    assert new != old and ssh_host.host_key_pub == new
    assert ssh_host.run("echo ok").stdout.strip() == "ok"  # pinned to the new key
    refused = subprocess.run(
        ssh_host.ssh_argv("true", known_hosts_file=old_known), capture_output=True, text=True, timeout=30
    )
    assert refused.returncode == 255 and "Host key verification failed" in refused.stderr
