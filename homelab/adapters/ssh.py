"""SSH: the one builder of strict pinned-host-key options, known_hosts files, and sessions to the lab's VMs.

Every ssh that homelab starts or configures (git on this machine and on the VMs, Ansible, Packer's
Ansible) gets its options from :func:`pinned_options`: only the pinned host keys, checked strictly, no
global known_hosts, no agent, only the key it is given, no prompts. A second copy of these options would
drift, and the drift is where a check goes missing.

This is also the one module that imports paramiko. A :class:`Session` uses RejectPolicy with the host's
pinned key as the only known key: a VM without a pinned key is never contacted, one presenting another
key is an error. The one exception is a template's throwaway build VM (:func:`first_contact`), which cannot
have a pinned key yet. A script goes to ``sh -s`` over stdin (nothing secret lands in a process list) and
runs as the target user: directly when we log in as that user, through ``runuser`` when we log in as
root, through ``sudo -n`` otherwise. One session keeps one connection for many scripts.
"""

from __future__ import annotations

import base64
import logging
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from homelab.adapters.process import last_lines, run
from homelab.adapters.sshkeys import fingerprint
from homelab.errors import OperationError, OperationTimeout
from homelab.state.adminkey import admin_key_file
from homelab.state.files import write_atomic
from homelab.state.hosts import Host

if TYPE_CHECKING:
    import paramiko

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10
# Seconds a connection that times out or is refused is tried again: a VM that has just come up (or just taken over
# an address from the VM it replaced, while the neighbours' ARP caches still name the old one) can miss the first.
CONNECT_PATIENCE = 60
CONNECT_RETRY_PAUSE = 3


# --- the strict options -----------------------------------------------------------------------------


def _settings(known_hosts: str | Path) -> list[tuple[str, str]]:
    """The settings that protect the user, in ssh_config's words. StrictHostKeyChecking comes last so
    that a caller's extra options read after it."""
    return [
        ("IdentitiesOnly", "yes"),
        ("IdentityAgent", "none"),
        ("BatchMode", "yes"),
        ("ConnectTimeout", str(CONNECT_TIMEOUT)),
        ("UpdateHostKeys", "no"),
        ("UserKnownHostsFile", str(known_hosts)),
        ("GlobalKnownHostsFile", "/dev/null"),
        ("StrictHostKeyChecking", "yes"),
    ]


def pinned_options(
    known_hosts: str | Path,
    *,
    key_file: str | Path | None = None,
    no_config: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    """ssh's arguments for a connection that accepts only the host keys in ``known_hosts``.

    key_file: ``-i``, the only key offered (Ansible names its key itself). no_config: ``-F none``, so no ssh
    config can add identities, agents or relaxed host checking (git). extra: ``Key=value`` options of one
    caller, after the strict ones (ssh takes the first value it reads, so they cannot relax them).
    """
    args = ["-F", "none"] if no_config else []
    if key_file is not None:
        args += ["-i", str(key_file)]
    for key, value in _settings(known_hosts):
        args += ["-o", f"{key}={value}"]
    for option in extra:
        args += ["-o", option]
    return args


def ssh_args(
    known_hosts: str | Path, *, key_file: str | Path | None = None, no_config: bool = False, extra: Sequence[str] = ()
) -> str:
    """:func:`pinned_options` as one shell-quoted string: Ansible's ssh_common_args, Packer's
    ``--ssh-extra-args``, the options of a script on a VM."""
    return shlex.join(pinned_options(known_hosts, key_file=key_file, no_config=no_config, extra=extra))


def ssh_command(key_file: str | Path, known_hosts: str | Path) -> str:
    """The GIT_SSH_COMMAND that offers only ``key_file`` and accepts only the host keys in ``known_hosts``."""
    return shlex.join(["ssh", *pinned_options(known_hosts, key_file=key_file, no_config=True)])


def config_lines(known_hosts: str | Path) -> list[str]:
    """The same settings as ssh_config lines, for a ``Host`` block (its IdentityFile is the caller's)."""
    return [f'{key} "{value}"' if " " in value else f"{key} {value}" for key, value in _settings(known_hosts)]


# --- known_hosts ------------------------------------------------------------------------------------

# Preferred first: the forges publish ed25519 fingerprints, and it is the strongest common type.
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")


def known_hosts_target(host: str, port: int = 22) -> str:
    """How a host appears in a known_hosts file: ``host`` or ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


@dataclass(frozen=True)
class HostKey:
    """One host key of a server, as a known_hosts entry."""

    target: str
    key_type: str
    key: str

    @property
    def line(self) -> str:
        """The known_hosts line."""
        return f"{self.target} {self.key_type} {self.key}"

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` as ``ssh-keygen -l`` shows it."""
        return fingerprint(f"{self.key_type} {self.key}")


def pinned_keys(known_hosts: Path, target: str) -> list[HostKey]:
    """The keys ``known_hosts`` holds for ``target`` (empty when there is no such file or entry)."""
    try:
        text = known_hosts.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    keys = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and not fields[0].startswith("#") and target in fields[0].split(","):
            keys.append(HostKey(target, fields[1], fields[2]))
    return keys


def scan_host_keys(host: str, port: int = 22, timeout: int = 5) -> list[HostKey]:
    """Ask a server for its host keys (ssh-keyscan), strongest type first. Not trusted by itself."""
    target = known_hosts_target(host, port)
    proc = run(
        ["ssh-keyscan", "-T", str(timeout), "-p", str(port), "-t", "ed25519,ecdsa,rsa", host],
        capture=True,
        check=False,
        timeout=timeout * 4 + 5,
        what=f"read the SSH host key of {target}",
    )
    keys = []
    for line in proc.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and not line.startswith("#") and fields[1] in KEY_TYPES:
            keys.append(HostKey(target, fields[1], fields[2]))
    if not keys:
        detail = last_lines(proc.stderr) or "no answer"
        raise OperationError(f"could not read the SSH host key of {target}: {detail}")
    return sorted(keys, key=lambda k: KEY_TYPES.index(k.key_type))


def add_known_host(known_hosts: Path, key: HostKey) -> None:
    """Append ``key`` to ``known_hosts`` (atomically; the file holds no secret)."""
    try:
        text = known_hosts.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    if text and not text.endswith("\n"):
        text += "\n"
    write_atomic(known_hosts, text + key.line + "\n", mode=0o644)


# --- sessions to the lab's VMs ----------------------------------------------------------------------


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


class _Unreachable(Exception):
    """A connection attempt the host did not answer (timed out, refused, no banner): worth another try."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Session:
    """One SSH connection to a VM; use as a context manager."""

    def __init__(self, host: Host, lab_name: str, *, first_contact: bool = False):
        self.host = host
        self.lab_name = lab_name
        # Only for a template's throwaway build VM (see :func:`first_contact`): take the key it offers.
        self.first_contact = first_contact
        self.offered_key: str | None = None  # what the server offered, as "type base64"
        self._client: paramiko.SSHClient | None = None

    def __enter__(self) -> Session:

        host = self.host
        if not host.host_key and not self.first_contact:
            raise OperationError(f"{host.name}: its SSH host key is not pinned (run `homelab apply` first)")
        key_file = login_key(host, self.lab_name)
        if not key_file.is_file():
            raise OperationError(f"{host.name}: homelab's login key {key_file} is missing")
        where = f"{host.user}@{host.address}" + (f":{host.port}" if host.port != 22 else "")
        deadline = time.monotonic() + CONNECT_PATIENCE
        while True:
            try:
                client = self._connect(key_file, where)
                break
            except _Unreachable as exc:
                if time.monotonic() + CONNECT_RETRY_PAUSE >= deadline:
                    raise OperationError(f"{host.name}: cannot connect to {where}: {exc.reason}") from None
                log.info("%s: %s did not answer (%s); trying again", host.name, where, exc.reason)
                time.sleep(CONNECT_RETRY_PAUSE)
        self._client = client
        transport = client.get_transport()
        if transport is not None:
            offered = transport.get_remote_server_key()
            self.offered_key = f"{offered.get_name()} {offered.get_base64()}"
        return self

    def _connect(self, key_file: Path, where: str) -> paramiko.SSHClient:
        """One connection attempt; :class:`_Unreachable` when the host did not answer (worth trying again)."""
        import paramiko

        host = self.host
        client = paramiko.SSHClient()
        if self.first_contact:
            # Kept in this client's memory only: never loaded from nor saved to any known_hosts file.
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507 - see first_contact
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            target, key_type, key_b64 = host.known_hosts_line().split()[:3]
            try:
                pinned = paramiko.PKey.from_type_string(key_type, base64.b64decode(key_b64))
            except (ValueError, paramiko.SSHException) as exc:
                raise OperationError(f"{host.name}: the pinned host key is not usable: {exc}") from None
            client.get_host_keys().add(target, key_type, pinned)
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
        except OSError as exc:  # timed out, refused, no route
            client.close()
            raise _Unreachable(str(exc)) from None
        except paramiko.SSHException as exc:
            client.close()
            if "banner" in str(exc):  # sshd not answering yet
                raise _Unreachable(str(exc)) from None
            raise OperationError(f"{host.name}: cannot connect to {where}: {exc}") from None
        return client

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
    try:
        return fingerprint(f"{key.get_name()} {key.get_base64()}")
    except (AttributeError, ValueError):
        return "?"


@contextmanager
def first_contact(
    address: str, user: str, lab_name: str, wait: float, note: Callable[[str], None], port: int = 22
) -> Iterator[Session]:
    """An open session to a template's build VM, whose host key cannot be known beforehand (the image has no
    guest agent yet to read it through): the key it offers is taken for this session only, never written to
    a known_hosts file nor to hosts.json, and its fingerprint is shown through ``note``.

    Retries for up to ``wait`` seconds while the VM boots (connection refused or timed out, or homelab's key
    refused until cloud-init has installed it). A context manager: the session closes when it ends.
    """
    import time

    host = Host(name=f"build VM {address}", address=address, user=user, port=port)
    if not login_key(host, lab_name).is_file():
        raise OperationError(f"homelab's login key {login_key(host, lab_name)} is missing")
    deadline = time.monotonic() + wait
    delay = 1.0
    while True:
        session = Session(host, lab_name, first_contact=True)
        try:
            session.__enter__()
        except OperationError as exc:
            if time.monotonic() + delay > deadline:
                raise OperationTimeout(
                    f"the build VM did not let homelab in over SSH within {wait:.0f} s: {exc}"
                ) from None
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)
            continue
        break
    try:
        note(f"{address} offered SSH host key {fingerprint(session.offered_key or '')}, taken for this build only")
        yield session
    finally:
        session.__exit__(None, None, None)


def run_script(host: Host, lab_name: str, script: str, *, as_user: str, timeout: float = 120) -> ScriptResult:
    """Connect, run one script, disconnect."""
    with Session(host, lab_name) as session:
        return session.run(script, as_user=as_user, timeout=timeout)
