"""Talking to the lab's VMs: SSH through paramiko, the VM's pinned host key only, the lab's login key only.

This is the one module that imports paramiko. The host key policy is RejectPolicy with the host's
pinned key as the only known key: a VM without a pinned key is never contacted, one presenting another
key is an error. A script goes to ``sh -s`` over stdin (nothing secret lands in a process list) and
runs as the target user: directly when we log in as that user, through ``runuser`` when we log in as
root, through ``sudo -n`` otherwise. One :class:`Session` keeps one connection for many scripts.
"""

from __future__ import annotations

import base64
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from homelab.adapters.process import last_lines
from homelab.errors import OperationError, OperationTimeout
from homelab.state.adminkey import admin_key_file
from homelab.state.hosts import Host

if TYPE_CHECKING:
    import paramiko

log = logging.getLogger("homelab.repokeys")

CONNECT_TIMEOUT = 10


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
    return Path(host.key_file) if host.key_file else admin_key_file(lab_name)


def _as_user(user: str) -> str:
    u = shlex.quote(user)
    return (
        f'if [ "$(id -un)" = {u} ]; then exec sh -s; '
        f'elif [ "$(id -u)" = 0 ]; then exec runuser -u {u} -- sh -s; '
        f"else exec sudo -n -H -u {u} sh -s; fi"
    )


def wrap_script(body: str) -> str:
    """``body`` as a function run under ``set -e`` with stdin closed (the script itself arrives on stdin)."""
    # set -e holds inside the subshell (it would not inside `main || ...`).
    return f"main() {{\n{body}\n}}\n(set -e; main) </dev/null\n"


class Session:
    """One SSH connection to a VM; use as a context manager."""

    def __init__(self, host: Host, lab_name: str):
        self.host = host
        self.lab_name = lab_name
        self._client: paramiko.SSHClient | None = None

    def __enter__(self) -> Session:
        import paramiko

        host = self.host
        if not host.host_key:
            raise OperationError(f"{host.name}: its SSH host key is not pinned (run `homelab apply` first)")
        key_file = login_key(host, self.lab_name)
        if not key_file.is_file():
            raise OperationError(f"{host.name}: homelab's login key {key_file} is missing")
        target, key_type, key_b64 = host.known_hosts_line().split()[:3]
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            pinned = paramiko.PKey.from_type_string(key_type, base64.b64decode(key_b64))
        except (ValueError, paramiko.SSHException) as exc:
            raise OperationError(f"{host.name}: the pinned host key is not usable: {exc}") from None
        client.get_host_keys().add(target, key_type, pinned)
        where = f"{host.user}@{host.address}" + (f":{host.port}" if host.port != 22 else "")
        try:
            client.connect(
                host.address,
                port=host.port,
                username=host.user,
                key_filename=str(key_file),
                look_for_keys=False,
                allow_agent=False,
                timeout=CONNECT_TIMEOUT,
                banner_timeout=CONNECT_TIMEOUT,
                auth_timeout=CONNECT_TIMEOUT,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise OperationError(
                f"{host.name}: {where} presented host key {_fp(exc.key)}, not the pinned one {_fp(exc.expected_key)}"
            ) from None
        except paramiko.AuthenticationException:
            client.close()
            raise OperationError(f"{host.name}: {where} refused homelab's login key") from None
        except (paramiko.SSHException, OSError) as exc:
            client.close()
            raise OperationError(f"{host.name}: cannot connect to {where}: {exc}") from None
        self._client = client
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def run(self, script: str, *, as_user: str, timeout: float = 120) -> ScriptResult:
        """Run a POSIX sh script as ``as_user``. A failing script is a result; a broken connection raises."""
        import paramiko

        if self._client is None:
            raise RuntimeError("Session.run outside `with`")
        log.debug("%s: run a script as %s", self.host.name, as_user)
        try:
            stdin, stdout, stderr = self._client.exec_command(_as_user(as_user), timeout=timeout)
            stdin.write(wrap_script(script))
            stdin.channel.shutdown_write()
            out = stdout.read().decode("utf-8", "replace")
            err = stderr.read().decode("utf-8", "replace")
            code = stdout.channel.recv_exit_status()
        except TimeoutError:
            raise OperationTimeout(f"{self.host.name}: a script did not finish within {timeout:.0f} s") from None
        except (paramiko.SSHException, OSError) as exc:
            raise OperationError(f"{self.host.name}: the SSH connection failed: {exc}") from None
        return ScriptResult(code, out, err)


def _fp(key: Any) -> str:
    from homelab.adapters.sshkeys import fingerprint

    try:
        return fingerprint(f"{key.get_name()} {key.get_base64()}")
    except (AttributeError, ValueError):
        return "?"


def run_script(host: Host, lab_name: str, script: str, *, as_user: str, timeout: float = 120) -> ScriptResult:
    """Connect, run one script, disconnect."""
    with Session(host, lab_name) as session:
        return session.run(script, as_user=as_user, timeout=timeout)
