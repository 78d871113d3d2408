"""Disposable SSH "test hosts" made of Linux namespaces.

A test host is an ``sshd`` running in its own network namespace (reached from
the machine over a veth pair) and its own mount namespace, in which:

* ``/etc`` is an overlay whose upper layer lives in the host's directory, so
  ``useradd`` and other edits on the host never reach the machine's ``/etc``;
* ``/home`` is a bind mount of a per-host directory (``SshHost.home_dir``);
* ``/var/log`` is an overlay too, so the ``lastlog``/``faillog`` records that
  ``useradd`` writes stay on the host.

Everything else (``/usr``, ``/var`` outside ``/var/log``, ``/tmp``, ...) is the
machine's own file system: a test must not write there through a host.

Commands reach a host through real SSH (:meth:`SshHost.run`) with a pinned host
key and a generated client key, or directly through ``nsenter``
(:meth:`SshHost.exec`) for setup work.

The generated ``sshd_config`` sets ``AuthorizedKeysFile`` to an absolute path,
so the one generated ``authorized_keys`` file applies to *every* user on the
host: the harness client key can log in as root and as any user that a test
adds with ``useradd``. That is intended. ``make_host(..., per_user_keys=True)``
instead gives every user but root its own file, ``/etc/ssh/authorized_keys/<user>``
inside the host (in the ``/etc`` overlay), for hosts that play a server whose
users must accept only their own keys (a git server); root keeps the harness key.

Requires root, iproute2 (``ip``), util-linux (``unshare``, ``nsenter``),
OpenSSH (``/usr/sbin/sshd``, ``ssh``, ``ssh-keygen``) and overlayfs; see
:func:`host_support`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = [
    "SSHD",
    "HostCommandError",
    "SshHost",
    "host_support",
    "make_host",
    "test_hosts",
]

SSHD = "/usr/sbin/sshd"
"""The sshd binary the hosts run (must be an absolute path for sshd's re-exec)."""

SUBNET_PREFIX = "10.77"
"""Each host gets ``10.77.<octet>.0/30``: machine end ``.1``, host end ``.2``."""

START_TIMEOUT = 10.0
"""Seconds to wait for a host's sshd to accept TCP connections."""

PER_USER_KEYS = "/etc/ssh/authorized_keys/%u"
"""``AuthorizedKeysFile`` of users other than root on a ``per_user_keys`` host (a path inside the host)."""

_LOCK_FILE = Path("/run/lock/homelab-test-hosts.lock")
_TOOLS = ("ip", "unshare", "nsenter", "ssh", "ssh-keygen", "mount")


class HostCommandError(subprocess.CalledProcessError):
    """A command on a test host failed; ``str()`` includes its output."""

    def __str__(self) -> str:
        text = super().__str__()
        for label, value in (("stdout", self.stdout), ("stderr", self.stderr)):
            if value:
                text += f"\n--- {label} ---\n{str(value).rstrip()}"
        return text


def _run(
    argv: Sequence[str], check: bool = True, timeout: float = 30, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a machine-side command quietly (``input`` on its stdin, else none), capturing text output."""
    proc = subprocess.run(
        list(argv),
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise HostCommandError(proc.returncode, list(argv), proc.stdout, proc.stderr)
    return proc


@functools.cache
def host_support() -> str | None:
    """Tell whether test hosts can be made on this machine.

    Returns ``None`` when they can, otherwise a human-readable reason (meant
    for ``pytest.skip``). The result is computed once and cached.
    """
    if os.geteuid() != 0:
        return "test hosts need root (network and mount namespaces)"
    for tool in _TOOLS:
        if shutil.which(tool) is None:
            return f"test hosts need `{tool}`, which is not on PATH"
    if not os.access(SSHD, os.X_OK):
        return f"test hosts need {SSHD} (Debian package openssh-server)"
    probe = f"hl-probe-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        added = _run(["ip", "netns", "add", probe], check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns add` failed: {exc}"
    if added.returncode != 0:
        return f"`ip netns add` failed: {added.stderr.strip()}"
    _run(["ip", "netns", "del", probe], check=False)
    # The /etc overlay must work from a directory like the tests' tmp_path.
    with tempfile.TemporaryDirectory(prefix="hl-probe-") as tmp:
        lower, upper, work, target = (Path(tmp, d) for d in ("lower", "upper", "work", "target"))
        for d in (lower, upper, work, target):
            d.mkdir()
        opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
        script = f"mount -t overlay overlay -o {shlex.quote(opts)} {shlex.quote(str(target))}"
        try:
            res = _run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"mounting an overlay in a mount namespace failed: {exc}"
        if res.returncode != 0:
            return f"mounting an overlay in a mount namespace failed: {res.stderr.strip()}"
    return None


def _short(name: str, limit: int = 12) -> str:
    """Reduce ``name`` to a short ``[a-z0-9-]`` token for namespace names."""
    token = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return (token or "host")[:limit]


class SshHost:
    """One disposable test host; made by :func:`make_host`.

    Attributes:
        name: the name given to :func:`make_host`.
        netns: name of the network namespace (see ``ip netns list``).
        address: the host's IPv4 address (inside its namespace).
        machine_address: the machine's end of the veth pair.
        port: the SSH port (22).
        veth: name of the machine-side veth interface.
        root: per-host directory on the machine (``<workdir>/<name>``).
        home_dir: machine-side directory that the host sees as ``/home``.
        etc_upper: machine-side overlay upper dir of the host's ``/etc``.
        host_key_pub: the host's public key line, ``"ssh-ed25519 AAAA..."``.
        known_hosts_line: ``"<address> <keytype> <base64>"``.
        known_hosts_file: a file that holds just ``known_hosts_line``.
        client_key: path to an ed25519 private key (0600) authorized on the host.
        sshd_config: path of the generated sshd configuration.
        log_file: sshd's output (``-e``: log to stderr).
        process: the ``Popen`` of sshd (its pid is sshd's pid), or ``None``.
    """

    def __init__(self, name: str, root: Path, netns: str, veth: str, octet: int) -> None:
        self.name = name
        self.root = root
        self.netns = netns
        self.veth = veth
        self.octet = octet
        self.address = f"{SUBNET_PREFIX}.{octet}.2"
        self.machine_address = f"{SUBNET_PREFIX}.{octet}.1"
        self.port = 22
        self.home_dir = root / "home"
        self.etc_upper = root / "etc-upper"
        self.etc_work = root / "etc-work"
        self.varlog_upper = root / "varlog-upper"
        self.varlog_work = root / "varlog-work"
        self.host_key = root / "ssh_host_ed25519_key"
        self.client_key = root / "client_ed25519"
        self.authorized_keys = root / "authorized_keys"
        self.known_hosts_file = root / "known_hosts"
        self.sshd_config = root / "sshd_config"
        self.pid_file = root / "sshd.pid"
        self.log_file = root / "sshd.log"
        self.host_key_pub = ""
        self.known_hosts_line = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.per_user_keys = False
        self._stopped = False

    def __repr__(self) -> str:
        return f"SshHost(name={self.name!r}, address={self.address!r}, netns={self.netns!r})"

    @property
    def pid(self) -> int | None:
        """Pid of the host's sshd (also the holder of its namespaces)."""
        return self.process.pid if self.process is not None else None

    def ssh_argv(
        self,
        cmd: str | None = None,
        *,
        user: str = "root",
        client_key: Path | str | None = None,
        known_hosts_file: Path | str | None = None,
    ) -> list[str]:
        """The ``ssh`` argv that :meth:`run` uses; override key or known_hosts to test refusals.

        No ssh config file is read (``-F none``), so the machine's or user's
        ssh settings cannot change the outcome.
        """
        argv = [
            "ssh",
            "-F",
            "none",
            "-i",
            str(client_key or self.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts_file or self.known_hosts_file}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-p",
            str(self.port),
            f"{user}@{self.address}",
        ]
        if cmd is not None:
            argv += ["--", cmd]
        return argv

    def run(
        self,
        cmd: str,
        check: bool = True,
        *,
        user: str = "root",
        input: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run the shell command ``cmd`` on the host over real SSH.

        Output is captured as text. With ``check`` a non-zero exit raises
        :class:`HostCommandError` (a ``CalledProcessError``) showing the output.
        """
        return _run(self.ssh_argv(cmd, user=user), check, timeout, input)

    def exec(
        self,
        argv: Sequence[str],
        check: bool = True,
        *,
        input: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` directly inside the host's network and mount namespaces (no SSH).

        Meant for setup tasks. Uses ``nsenter`` on sshd's pid; output is
        captured as text; ``check`` raises :class:`HostCommandError`.
        """
        if self.pid is None or self._stopped:
            raise RuntimeError(f"{self!r} is not running")
        return _run(["nsenter", "-t", str(self.pid), "-n", "-m", "--", *argv], check, timeout, input)

    def regenerate_host_key(self, timeout: float = 10.0) -> str:
        """Give the host a new ed25519 host key, as cloud-init does for a new instance, and make sshd present it
        (SIGHUP: sshd re-executes itself and reads its keys again). Returns the new ``"<type> <base64>"``;
        ``host_key_pub``, ``known_hosts_line`` and ``known_hosts_file`` follow it."""
        if self.pid is None or self._stopped:
            raise RuntimeError(f"{self!r} is not running")
        for path in (self.host_key, self.host_key.with_name(self.host_key.name + ".pub")):
            path.unlink(missing_ok=True)
        pub = _keygen(self.host_key, f"homelab-test-host-{self.name}")
        os.kill(self.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while True:
            scan = _run(["ssh-keyscan", "-t", "ed25519", "-T", "2", self.address], check=False, timeout=10)
            if pub.split()[1] in scan.stdout:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd of {self.name} did not present its new host key:\n{self.log()}")
            time.sleep(0.05)
        self.host_key_pub = pub
        self.known_hosts_line = f"{self.address} {pub}"
        self.known_hosts_file.write_text(self.known_hosts_line + "\n")
        return pub

    def log(self) -> str:
        """sshd's log so far (empty if unreadable)."""
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Tear the host down: kill sshd and its sessions, delete the netns and veth, remove ``root``.

        Idempotent; never raises.
        """
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            self._stop_processes()
        with contextlib.suppress(Exception):
            _run(["ip", "link", "del", self.veth], check=False)
        with contextlib.suppress(Exception):
            _run(["ip", "netns", "del", self.netns], check=False)
        with contextlib.suppress(Exception):
            shutil.rmtree(self.root, ignore_errors=True)

    def _stop_processes(self) -> None:
        """Kill sshd, then anything else left in the network namespace (sessions)."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=3)
        for _ in range(3):
            res = _run(["ip", "netns", "pids", self.netns], check=False, timeout=10)
            pids = [int(p) for p in res.stdout.split() if p.isdigit()]
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _keygen(path: Path, comment: str) -> str:
    """Make an ed25519 key without passphrase at ``path``; return ``"<type> <base64>"``."""
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    os.chmod(path, 0o600)
    return " ".join(path.with_name(path.name + ".pub").read_text().split()[:2])


def _used_networks() -> list[ipaddress.IPv4Network]:
    """IPv4 networks already in use in the root namespace (addresses and routes)."""
    nets: list[ipaddress.IPv4Network] = []
    addrs = _run(["ip", "-o", "-4", "addr", "show"], check=False).stdout
    for match in re.finditer(r"\binet (\d+\.\d+\.\d+\.\d+/\d+)", addrs):
        nets.append(ipaddress.IPv4Network(match.group(1), strict=False))
    routes = _run(["ip", "-4", "route", "show", "table", "all"], check=False).stdout
    for line in routes.splitlines():
        fields = line.split()
        if fields and fields[0] in {"local", "broadcast", "unicast"} and len(fields) > 1:
            fields = fields[1:]
        if fields and re.fullmatch(r"\d+\.\d+\.\d+\.\d+(/\d+)?", fields[0]):
            nets.append(ipaddress.IPv4Network(fields[0], strict=False))
    return nets


@contextlib.contextmanager
def _allocation_lock() -> Iterator[None]:
    """Serialise subnet choice + veth creation across processes on the machine."""
    _LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(_LOCK_FILE, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _setup_network(host: SshHost, index: int) -> None:
    """Create the netns and veth pair; pick a free ``10.77.<octet>.0/30`` starting at ``index``."""
    _run(["ip", "netns", "add", host.netns])
    with _allocation_lock():
        used = _used_networks()
        for step in range(256):
            octet = (index + step) % 256
            net = ipaddress.ip_network(f"{SUBNET_PREFIX}.{octet}.0/30")
            if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
                break
        else:
            raise RuntimeError(f"no free {SUBNET_PREFIX}.x.0/30 subnet for test host {host.name!r}")
        host.octet = octet
        host.address = f"{SUBNET_PREFIX}.{octet}.2"
        host.machine_address = f"{SUBNET_PREFIX}.{octet}.1"
        peer = "hlp" + host.veth[3:]
        _run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", peer, "netns", host.netns])
        _run(["ip", "addr", "add", f"{host.machine_address}/30", "dev", host.veth])
    _run(["ip", "link", "set", host.veth, "up"])
    ns = ["ip", "-n", host.netns]
    _run([*ns, "link", "set", "lo", "up"])
    _run([*ns, "addr", "add", f"{host.address}/30", "dev", peer])
    _run([*ns, "link", "set", peer, "up"])


def _sshd_config(host: SshHost) -> str:
    """The sshd configuration text for ``host``."""
    return "\n".join(
        [
            f"ListenAddress {host.address}",
            f"Port {host.port}",
            f"HostKey {host.host_key}",
            f"PidFile {host.pid_file}",
            # Absolute path: read for every user (root and any useradd'ed user), unless per_user_keys.
            f"AuthorizedKeysFile {PER_USER_KEYS if host.per_user_keys else host.authorized_keys}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "StrictModes no",
            "UsePAM no",
            "UseDNS no",
            "PrintMotd no",
            "Subsystem sftp internal-sftp",
            # Match blocks must come last: everything after one belongs to it.
            *(["Match User root", f"    AuthorizedKeysFile {host.authorized_keys}"] if host.per_user_keys else []),
            "",
        ]
    )


def _mount_script(host: SshHost, extra_mounts: Sequence[str] = ()) -> str:
    """The ``sh -c`` script that sets up the host's mounts (then ``extra_mounts``, more such commands), then
    execs sshd."""
    q = shlex.quote
    etc_opts = f"lowerdir=/etc,upperdir={host.etc_upper},workdir={host.etc_work}"
    log_opts = f"lowerdir=/var/log,upperdir={host.varlog_upper},workdir={host.varlog_work}"
    return "; ".join(
        [
            "set -e",
            f"mount -t overlay overlay -o {q(etc_opts)} /etc",
            f"mount -t overlay overlay -o {q(log_opts)} /var/log",
            f"mount --bind {q(str(host.home_dir))} /home",
            *extra_mounts,
            f"exec {q(SSHD)} -D -e -f {q(str(host.sshd_config))}",
        ]
    )


def _wait_for_sshd(host: SshHost, timeout: float = START_TIMEOUT) -> None:
    """Poll until ``address:22`` accepts TCP; raise ``RuntimeError`` with the log if sshd dies."""
    assert host.process is not None
    deadline = time.monotonic() + timeout
    while True:
        if host.process.poll() is not None:
            raise RuntimeError(f"sshd of test host {host.name!r} exited with {host.process.returncode}:\n{host.log()}")
        try:
            with socket.create_connection((host.address, host.port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"sshd of test host {host.name!r} did not listen on {host.address}:{host.port} "
                f"within {timeout:.0f} s:\n{host.log()}"
            )
        time.sleep(0.02)


def make_host(
    name: str, workdir: Path, index: int, *, per_user_keys: bool = False, extra_mounts: Sequence[str] = ()
) -> SshHost:
    """Create and start one test host; call :meth:`SshHost.stop` when done.

    ``name`` names ``<workdir>/<name>`` (must not exist yet) and goes into the
    netns name ``hl-<name>-<random>``. ``index`` (0-255) picks the preferred
    subnet ``10.77.<index>.0/30``; if that subnet is in use on the machine
    (e.g. by a parallel test), the next free one is taken, so ``host.address``
    is authoritative. On any failure the partial host is torn down and the
    error re-raised (``RuntimeError`` with sshd's log if sshd did not come up).

    With ``per_user_keys`` users other than root log in with the keys in
    ``/etc/ssh/authorized_keys/<user>`` inside the host (see the module doc). ``extra_mounts``: more shell
    commands run inside the host's mount namespace before sshd starts (see :mod:`tests.harness.buildhost`).
    """
    if not 0 <= index <= 255:
        raise ValueError(f"index must be 0..255, not {index}")
    tag = secrets.token_hex(3)
    root = Path(workdir) / name
    root.mkdir(parents=True, exist_ok=False)
    host = SshHost(
        name=name,
        root=root,
        netns=f"hl-{_short(name)}-{tag}",
        veth=f"hlv{index}{tag}",  # at most 3 + 3 + 6 = 12 chars (limit 15)
        octet=index,
    )
    host.per_user_keys = per_user_keys
    try:
        for d in (host.home_dir, host.etc_upper, host.etc_work, host.varlog_upper, host.varlog_work):
            d.mkdir()
        host_pub = _keygen(host.host_key, f"homelab-test-host-{name}")
        client_pub = _keygen(host.client_key, f"homelab-test-client-{name}")
        _write_private(host.authorized_keys, client_pub + "\n")
        host.host_key_pub = host_pub
        _setup_network(host, index)
        host.known_hosts_line = f"{host.address} {host_pub}"
        host.known_hosts_file.write_text(host.known_hosts_line + "\n")
        host.sshd_config.write_text(_sshd_config(host))
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        with open(host.log_file, "wb") as log:
            host.process = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    host.netns,
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    _mount_script(host, extra_mounts),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_for_sshd(host)
    except BaseException:
        host.stop()
        raise
    return host


@contextlib.contextmanager
def test_hosts(n: int, workdir: Path, first_index: int = 1) -> Iterator[list[SshHost]]:
    """Context manager: ``n`` started hosts named ``h1``..``hN`` in ``workdir``; always torn down."""
    hosts: list[SshHost] = []
    try:
        for i in range(n):
            hosts.append(make_host(f"h{i + 1}", Path(workdir), (first_index + i) % 256))
        yield hosts
    finally:
        for host in hosts:
            host.stop()


test_hosts.__test__ = False  # type: ignore[attr-defined]  # not a pytest test if imported into one
