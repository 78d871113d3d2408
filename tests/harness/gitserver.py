"""A git-over-SSH server on a test host, for the deploy-key tests.

:func:`make_git_server` starts a test host (:mod:`tests.harness.hosts`) with per-user
authorized_keys and turns it into a git server:

* a ``git`` user made with ``useradd`` inside the host (the ``/etc`` overlay keeps it there),
  login shell ``git-shell``;
* ``/srv`` inside the host is a bind mount of a per-host folder, holding the bare repo
  ``/srv/git/config.git`` with one commit on ``main``;
* ``/etc/ssh/authorized_keys/git`` lists the deploy keys, each forced to
  ``git-upload-pack '/srv/git/config.git'`` with ``restrict``: read-only access to that one repo,
  like a forge's read-only deploy key. (A forced ``git-shell -c "$SSH_ORIGINAL_COMMAND"`` does not
  work under a ``git-shell`` login shell: sshd runs the forced command through the login shell, and
  git-shell refuses "git-shell -c ..." and does not expand the variable.)

Other test hosts reach the server through the machine: :meth:`GitServer.connect` turns on IPv4
forwarding on just the two veth interfaces of the test (the machine's global ``ip_forward`` stays
as it is) and adds host routes in both namespaces. A host that is not connected cannot reach it.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.fixtures_hosts import skip_unless_hosts
from tests.harness.hosts import SshHost, make_host

__all__ = ["GitServer", "git_server_fixture", "make_git_server"]

REPO = "/srv/git/config.git"
AUTHORIZED_KEYS = "/etc/ssh/authorized_keys/git"


def _forwarding(veth: str, on: bool) -> None:
    path = Path(f"/proc/sys/net/ipv4/conf/{veth}/forwarding")
    if path.exists():
        path.write_text("1" if on else "0")


class GitServer:
    """A started git server; ``url`` is what a lab's repo.url names."""

    def __init__(self, host: SshHost):
        self.host = host
        self.keys: list[str] = []

    @property
    def address(self) -> str:
        """The server's address."""
        return self.host.address

    @property
    def url(self) -> str:
        """``ssh://git@<address>/srv/git/config.git``."""
        return f"ssh://git@{self.host.address}{REPO}"

    @property
    def known_hosts_line(self) -> str:
        """The server's host key as a known_hosts line."""
        return self.host.known_hosts_line

    def setup(self) -> None:
        """Make the git user, the bare repo with one commit on main, and an empty key list."""
        srv = self.host.root / "srv"
        srv.mkdir()
        h = self.host
        h.exec(["mount", "--bind", str(srv), "/srv"])
        h.exec(["useradd", "-m", "-d", "/home/git", "-s", "/usr/bin/git-shell", "-p", "*", "git"])
        h.exec(
            [
                "sh",
                "-c",
                f"""set -e
mkdir -p /srv/git /etc/ssh/authorized_keys
git init -q --bare -b main {REPO}
work=$(mktemp -d /srv/work.XXXXXX)
git -C "$work" init -q -b main
echo 'lab config' > "$work/README"
git -C "$work" add README
git -C "$work" -c user.name=test -c user.email=test@invalid commit -q -m 'first commit'
git -C "$work" push -q {REPO} main
rm -rf "$work"
chown -R git:git /srv/git
: > {AUTHORIZED_KEYS}
""",
            ]
        )

    def _write_keys(self) -> None:
        lines = "".join(f"command=\"git-upload-pack '{REPO}'\",restrict {key}\n" for key in self.keys)
        self.host.exec(
            ["sh", "-c", f"cat > {AUTHORIZED_KEYS}.tmp && mv {AUTHORIZED_KEYS}.tmp {AUTHORIZED_KEYS}"], input=lines
        )

    def add_key(self, public_line: str) -> None:
        """Accept this public key (``ssh-ed25519 AAAA... [comment]``) for reading the repo."""
        key = " ".join(public_line.split()[:2])
        if key not in self.keys:
            self.keys.append(key)
            self._write_keys()

    def remove_key(self, public_line: str) -> None:
        """Stop accepting this public key."""
        key = " ".join(public_line.split()[:2])
        self.keys = [k for k in self.keys if k != key]
        self._write_keys()

    def commit(self, message: str) -> str:
        """Add a commit on main (made as the git user); return its id."""
        script = f"""set -e
work=$(mktemp -d /srv/git/work.XXXXXX)
trap 'rm -rf "$work"' EXIT
git clone -q {REPO} "$work"
echo {shlex.quote(message)} >> "$work/README"
git -C "$work" -c user.name=test -c user.email=test@invalid commit -q -am {shlex.quote(message)}
git -C "$work" push -q origin main
git -C "$work" rev-parse HEAD
"""
        out = self.host.exec(["runuser", "-u", "git", "--", "env", "HOME=/home/git", "sh", "-c", script])
        return out.stdout.strip().splitlines()[-1]

    def head(self) -> str:
        """The commit main points at."""
        return self.host.exec(["git", "--git-dir", REPO, "rev-parse", "main"]).stdout.strip()

    def connect(self, other: SshHost) -> None:
        """Let ``other`` reach the server (forwarding on the two veths, a route each way)."""
        for veth in (self.host.veth, other.veth):
            _forwarding(veth, True)
        subprocess.run(
            ["ip", "-n", other.netns, "route", "replace", f"{self.address}/32", "via", other.machine_address],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            ["ip", "-n", self.host.netns, "route", "replace", f"{other.address}/32", "via", self.host.machine_address],
            check=True,
            capture_output=True,
        )

    def disconnect(self, other: SshHost) -> None:
        """Take ``other``'s route to the server away: it gets "Network is unreachable"."""
        subprocess.run(
            ["ip", "-n", other.netns, "route", "del", f"{self.address}/32"], check=False, capture_output=True
        )

    def stop(self) -> None:
        """Tear the server down (its veth goes with it)."""
        self.host.stop()


def make_git_server(workdir: Path, index: int = 200) -> GitServer:
    """Start a git server test host in ``workdir``; call :meth:`GitServer.stop` when done."""
    host = make_host("git", workdir, index, per_user_keys=True)
    server = GitServer(host)
    try:
        server.setup()
    except BaseException:
        host.stop()
        raise
    return server


@pytest.fixture(name="git_server")
def git_server_fixture(tmp_path: Path) -> Iterator[GitServer]:
    """The ``git_server`` fixture: a started git server with no keys yet; torn down after the test.

    Import ``git_server_fixture`` into a test module to use it.
    """
    skip_unless_hosts()
    server = make_git_server(tmp_path / "gitserver")
    try:
        yield server
    finally:
        server.stop()
