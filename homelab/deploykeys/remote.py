"""Talking to the lab's VMs: the ssh binary, the VM's pinned host key, the lab's login key. Nothing else.

A script goes to ``sh -s`` on the VM over stdin (so nothing secret lands in a process list) and runs
as the target user: directly when we log in as that user, through ``runuser`` when we log in as root,
through ``sudo -n`` otherwise.
"""

from __future__ import annotations

import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

from homelab.deploykeys.proc import last_lines, run
from homelab.errors import OperationError
from homelab.hosts import Host
from homelab.paths import state_dir

SSH_FAILED = 255


@dataclass(frozen=True)
class ScriptResult:
    """What a script on a host returned."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """The script exited 0."""
        return self.returncode == 0

    def detail(self) -> str:
        """The last lines of its error output, for a one-line report."""
        return last_lines(self.stderr) or last_lines(self.stdout) or f"exit code {self.returncode}"


def login_key(host: Host, lab_name: str) -> Path:
    """The private key homelab logs in to ``host`` with."""
    return Path(host.key_file) if host.key_file else state_dir(lab_name) / "ssh" / "id_ed25519"


def _as_user(user: str) -> str:
    u = shlex.quote(user)
    return (
        f'if [ "$(id -un)" = {u} ]; then exec sh -s; '
        f'elif [ "$(id -u)" = 0 ]; then exec runuser -u {u} -- sh -s; '
        f"else exec sudo -n -H -u {u} sh -s; fi"
    )


def run_script(host: Host, lab_name: str, script: str, *, as_user: str, timeout: float = 120) -> ScriptResult:
    """Run a POSIX sh script on ``host`` as ``as_user``.

    Raises OperationError when the host cannot be reached or refuses the login (ssh's own failure);
    a failing script is a result, not an exception.
    """
    if not host.host_key:
        raise OperationError(f"{host.name}: its SSH host key is not pinned (run `homelab apply` first)")
    with tempfile.TemporaryDirectory(prefix="homelab-ssh-") as tmp:
        known_hosts = Path(tmp) / "known_hosts"
        known_hosts.write_text(host.known_hosts_line() + "\n", encoding="utf-8")
        argv = [
            "ssh",
            "-F",
            "none",
            "-i",
            str(login_key(host, lab_name)),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-p",
            str(host.port),
            "--",
            f"{host.user}@{host.address}",
            _as_user(as_user),
        ]
        proc = run(argv, input=wrap_script(script), timeout=timeout)
    result = ScriptResult(proc.returncode, proc.stdout, proc.stderr)
    if proc.returncode == SSH_FAILED:
        # Scripts never exit 255 (see wrap_script), so this is ssh itself: unreachable, or login refused.
        raise OperationError(f"{host.name}: cannot log in over SSH as {host.user}@{host.address}: {result.detail()}")
    return result


def wrap_script(body: str) -> str:
    """``body`` as a function run with stdin closed (the script itself arrives on stdin), never exiting 255."""
    # set -e holds inside the subshell (it would not inside `main || ...`).
    return f"main() {{\n{body}\n}}\n(set -e; main) </dev/null\nrc=$?\n[ $rc -eq 255 ] && rc=254\nexit $rc\n"
