"""Real Debian guests under QEMU (TCG) on a test network, and a client for their guest agent.

A :class:`LabNetwork` is a network namespace holding a bridge (``br0``); a veth pair joins it to the
machine, whose end gets ``10.78.<n>.1/24`` (the guests' gateway; ``10.78`` so it never meets the ``10.77``
test hosts of :mod:`tests.harness.hosts`). Every guest gets a tap device on that bridge, and its QEMU runs
inside the namespace (``ip netns exec``), so the guests are on an L2 segment that only the machine's veth
end can reach. Guests use addresses ``10.78.<n>.10`` and up (:meth:`LabNetwork.address`).

A :class:`Guest` is one QEMU process: ``-M pc`` (i440fx, PVE's default), ``-accel tcg`` (KVM guests spin
forever on this machine), the image's kernel and initrd booted directly, its disk a qcow2 overlay over a
cached image (:mod:`tests.harness.guest_image`), the NoCloud seed as an IDE cdrom (``ide2``, as PVE attaches
its cloud-init drive), a virtio NIC on a tap, a QMP socket for power control and, when wanted, the guest
agent's virtio-serial port (``org.qemu.guest_agent.0``) on a Unix socket.

:class:`AgentClient` speaks the guest agent's JSON protocol over that socket (``guest-sync`` first, so a
stale answer from an earlier connection is never taken for the current one).

Everything needs root, ``qemu-system-x86_64``, ``qemu-img``, ``genisoimage`` and ``ip``; see
:func:`guest_support`. Processes are killed by their pid and the namespace deleted in :meth:`Guest.kill`
and :meth:`LabNetwork.close`.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.guest_image import GuestImage
from tests.harness.hosts import _allocation_lock, _used_networks
from tests.harness.nocloud import NoCloudSeed, write_seed_iso

__all__ = [
    "AgentClient",
    "AgentError",
    "AgentUnavailable",
    "Guest",
    "LabNetwork",
    "boot_guest",
    "guest_support",
    "lab_network",
    "make_overlay",
    "route_to_host",
]

SUBNET_PREFIX = "10.78"
QEMU = "qemu-system-x86_64"
_TOOLS = (QEMU, "qemu-img", "genisoimage", "ip")


def _run(argv: Sequence[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@functools.cache
def guest_support() -> str | None:
    """None if real guests can run here, else the reason (for ``pytest.skip``)."""
    if os.geteuid() != 0:
        return "real guests need root (network namespaces, tap devices)"
    for tool in _TOOLS:
        if shutil.which(tool) is None:
            return f"real guests need `{tool}`: run tests/harness/guest-deps.sh"
    if not os.path.exists("/dev/net/tun"):
        return "real guests need /dev/net/tun for their tap devices"
    return None


# ---------------------------------------------------------------------------------------------- network


class LabNetwork:
    """A bridge in its own network namespace, reachable from the machine at :attr:`gateway`.

    Attributes:
        netns: the namespace's name.
        bridge: the bridge inside it (``br0``).
        subnet: ``10.78.<n>.0/24``.
        gateway: the machine's address on it (``10.78.<n>.1``), the guests' default gateway.
    """

    def __init__(self, netns: str, veth: str, subnet: ipaddress.IPv4Network) -> None:
        self.netns = netns
        self.veth = veth
        self.bridge = "br0"
        self.subnet = subnet
        self.gateway = str(subnet.network_address + 1)
        self._closed = False

    def __repr__(self) -> str:
        return f"LabNetwork(netns={self.netns!r}, subnet={str(self.subnet)!r})"

    @property
    def prefix(self) -> int:
        return self.subnet.prefixlen

    def address(self, index: int) -> str:
        """The ``index``-th guest address: ``10.78.<n>.<10 + index>``."""
        return str(self.subnet.network_address + 10 + index)

    def add_tap(self) -> str:
        """A new tap device on the bridge (inside the namespace); returns its name."""
        # Random: the test process and the real-VM fake's process add taps to the same namespace.
        name = f"tap{secrets.token_hex(4)}"
        ns = ["ip", "-n", self.netns]
        _run([*ns, "tuntap", "add", "dev", name, "mode", "tap"])
        _run([*ns, "link", "set", name, "master", self.bridge])
        _run([*ns, "link", "set", name, "up"])
        return name

    def del_tap(self, name: str) -> None:
        """Remove a tap device (its QEMU must have exited)."""
        _run(["ip", "-n", self.netns, "link", "del", name], check=False)

    def pids(self) -> list[int]:
        """Processes running in the namespace."""
        res = _run(["ip", "netns", "pids", self.netns], check=False, timeout=10)
        return [int(p) for p in res.stdout.split() if p.isdigit()]

    def close(self) -> None:
        """Kill whatever still runs in the namespace, then delete it and the veth. Idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        for _ in range(5):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        _run(["ip", "link", "del", self.veth], check=False)
        _run(["ip", "netns", "del", self.netns], check=False)


def make_network(index: int = 0) -> LabNetwork:
    """Create a lab network on the first free ``10.78.<n>.0/24``, ``n`` from ``index`` on."""
    tag = secrets.token_hex(3)
    netns, veth, peer = f"hlg-{tag}", f"hlgv{tag}", f"hlgp{tag}"
    _run(["ip", "netns", "add", netns])
    net: LabNetwork | None = None
    try:
        with _allocation_lock():
            used = [u for u in _used_networks() if u.prefixlen > 0]
            for step in range(256):
                subnet = ipaddress.IPv4Network(f"{SUBNET_PREFIX}.{(index + step) % 256}.0/24")
                if not any(subnet.overlaps(u) for u in used):
                    break
            else:
                raise RuntimeError(f"no free {SUBNET_PREFIX}.x.0/24 for a lab network")
            net = LabNetwork(netns, veth, subnet)
            _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", peer, "netns", netns])
            _run(["ip", "addr", "add", f"{net.gateway}/{subnet.prefixlen}", "dev", veth])
        ns = ["ip", "-n", netns]
        _run([*ns, "link", "set", "lo", "up"])
        _run([*ns, "link", "add", net.bridge, "type", "bridge"])
        _run([*ns, "link", "set", peer, "master", net.bridge])
        _run([*ns, "link", "set", peer, "up"])
        _run([*ns, "link", "set", net.bridge, "up"])
        _run(["ip", "link", "set", veth, "up"])
    except BaseException:
        if net is not None:
            net.close()
        else:
            _run(["ip", "link", "del", veth], check=False)
            _run(["ip", "netns", "del", netns], check=False)
        raise
    return net


def route_to_host(network: LabNetwork, host: Any) -> None:
    """Let the guests on ``network`` reach an SSH test host (:class:`tests.harness.hosts.SshHost`) through the
    machine: forwarding on just the two veth interfaces (the machine's global ``ip_forward`` stays as it is) and
    a route back from the host's namespace. The guests' default route is the machine already."""
    for veth in (network.veth, host.veth):
        path = Path(f"/proc/sys/net/ipv4/conf/{veth}/forwarding")
        if path.exists():
            path.write_text("1")
    _run(["ip", "-n", host.netns, "route", "replace", str(network.subnet), "via", host.machine_address])


@contextlib.contextmanager
def lab_network(index: int = 0) -> Iterator[LabNetwork]:
    """Context manager: a :func:`make_network` that is always closed."""
    net = make_network(index)
    try:
        yield net
    finally:
        net.close()


# ------------------------------------------------------------------------------------------ guest agent


class AgentError(RuntimeError):
    """The guest agent answered with an error (``desc`` is its message)."""

    def __init__(self, command: str, desc: str) -> None:
        super().__init__(f"{command}: {desc}")
        self.command = command
        self.desc = desc


class AgentUnavailable(RuntimeError):
    """Nothing answered on the agent's socket in time (no agent in the guest, or not started yet)."""


class AgentClient:
    """The guest agent's JSON protocol over QEMU's virtio-serial chardev socket.

    Every call opens a connection, synchronises with ``guest-sync`` (a random id, answers to earlier
    requests are skipped) and sends one command, as PVE does per API call.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)

    def _exchange(self, sock: socket.socket, message: dict[str, Any], deadline: float, want_id: int | None) -> Any:
        sock.sendall(json.dumps(message).encode() + b"\n")
        buffer = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AgentUnavailable(f"no answer to {message['execute']} on {self.path}")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise AgentUnavailable(f"no answer to {message['execute']} on {self.path}") from None
            if not chunk:
                raise AgentUnavailable(f"{self.path} closed the connection")
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                line = line.strip(b"\xff \r")
                if not line:
                    continue
                try:
                    answer = json.loads(line)
                except ValueError:
                    continue
                if want_id is not None:
                    if answer.get("return") == want_id:
                        return want_id
                    continue  # an answer to an earlier connection's request
                if "error" in answer:
                    raise AgentError(message["execute"], str(answer["error"].get("desc", answer["error"])))
                if "return" in answer:
                    return answer["return"]

    def call(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        """Run one agent command and return its ``return`` value.

        Raises :class:`AgentUnavailable` if the agent does not answer ``guest-sync`` within ``timeout``
        (PVE: "QEMU guest agent is not running") and :class:`AgentError` if the command fails.
        """
        deadline = time.monotonic() + timeout
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(self.path)
        except OSError as exc:
            raise AgentUnavailable(f"cannot connect to {self.path}: {exc}") from None
        with sock:
            sync_id = secrets.randbelow(2**31)
            sync_deadline = min(deadline, time.monotonic() + 3)
            self._exchange(sock, {"execute": "guest-sync", "arguments": {"id": sync_id}}, sync_deadline, sync_id)
            message: dict[str, Any] = {"execute": command}
            if arguments:
                message["arguments"] = arguments
            if command in ("guest-shutdown", "guest-suspend-disk", "guest-suspend-ram", "guest-suspend-hybrid"):
                # The agent may never answer these: give it a moment to read the command, then go.
                with contextlib.suppress(AgentUnavailable):
                    self._exchange(sock, message, min(deadline, time.monotonic() + 5), None)
                return None
            return self._exchange(sock, message, deadline, None)

    def ping(self, timeout: float = 3.0) -> bool:
        """True if the agent answers."""
        try:
            self.call("guest-ping", timeout=timeout)
        except (AgentUnavailable, AgentError):
            return False
        return True

    def wait(self, timeout: float, alive: Any = None) -> float:
        """Wait until the agent answers; returns the seconds waited. ``alive()`` False stops early."""
        started = time.monotonic()
        while True:
            if self.ping(timeout=2.0):
                return time.monotonic() - started
            if alive is not None and not alive():
                raise AgentUnavailable("the guest stopped before its agent answered")
            if time.monotonic() - started > timeout:
                raise AgentUnavailable(f"the guest agent did not answer within {timeout:.0f} s")
            time.sleep(1.0)

    def file_read(self, path: str, max_bytes: int = 16 * 1024 * 1024) -> bytes:
        """The content of a file in the guest (``guest-file-open``/``-read``/``-close``)."""
        handle = self.call("guest-file-open", {"path": path, "mode": "r"})
        content = b""
        try:
            while len(content) < max_bytes:
                chunk = self.call("guest-file-read", {"handle": handle, "count": min(1 << 20, max_bytes)})
                content += base64.b64decode(chunk.get("buf-b64", ""))
                if chunk.get("eof") or not chunk.get("count"):
                    break
        finally:
            with contextlib.suppress(AgentError, AgentUnavailable):
                self.call("guest-file-close", {"handle": handle})
        return content

    def network_get_interfaces(self) -> list[dict[str, Any]]:
        """The guest's interfaces and addresses."""
        result: list[dict[str, Any]] = self.call("guest-network-get-interfaces")
        return result

    def exec(self, argv: Sequence[str], input_data: bytes | None = None, timeout: float = 60) -> dict[str, Any]:
        """Run ``argv`` in the guest and wait for it; returns exec-status with out/err decoded to text."""
        args: dict[str, Any] = {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}
        if input_data is not None:
            args["input-data"] = base64.b64encode(input_data).decode()
        pid = self.call("guest-exec", args)["pid"]
        deadline = time.monotonic() + timeout
        while True:
            status: dict[str, Any] = self.call("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                for key in ("out-data", "err-data"):
                    if key in status:
                        status[key] = base64.b64decode(status[key]).decode(errors="replace")
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"{argv} still running after {timeout:.0f} s")
            time.sleep(0.3)


# ------------------------------------------------------------------------------------------------ QEMU


def make_overlay(backing: Path, path: Path, size: int | None = None) -> Path:
    """A qcow2 overlay at ``path`` backed by ``backing`` (its format probed), optionally larger."""
    info = json.loads(_run(["qemu-img", "info", "--output=json", str(backing)]).stdout)
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(backing), "-F", info["format"], str(path)]
    if size and size > int(info["virtual-size"]):
        argv.append(str(size))
    _run(argv)
    return path


def qmp(path: Path | str, command: str, timeout: float = 5.0, **arguments: Any) -> Any:
    """One QMP command on QEMU's monitor socket (after the capabilities handshake)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        reader = sock.makefile("rb")
        json.loads(reader.readline())  # greeting
        for message in ({"execute": "qmp_capabilities"}, {"execute": command, "arguments": arguments}):
            sock.sendall(json.dumps(message).encode() + b"\n")
            while True:
                answer = json.loads(reader.readline())
                if "event" in answer:
                    continue
                if "error" in answer:
                    raise RuntimeError(f"QMP {message['execute']}: {answer['error'].get('desc')}")
                break
        return answer.get("return")


@dataclass
class Guest:
    """One QEMU guest; made by :func:`boot_guest` (or the real-VM fake). Kill it with :meth:`kill`.

    Attributes:
        name: a label (goes into QEMU's ``-name``).
        workdir: its folder: disk overlay, seed ISO, sockets, logs.
        disk: the qcow2 overlay it runs on.
        mac: the NIC's MAC address.
        tap: the tap device on the lab network's bridge.
        agent_socket: the agent's chardev socket, or None when the VM has no agent port.
        console_log: the serial console's output.
        process: QEMU's Popen (its pid is QEMU's: ``ip netns exec`` execs it).
    """

    name: str
    workdir: Path
    disk: Path
    kernel: Path
    initrd: Path
    mac: str
    network: LabNetwork
    seed_iso: Path | None = None
    agent: bool = True
    memory: int = 1024
    cpus: int = 1
    disk_bus: str = "virtio"
    tap: str = ""
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    instance_id: str = ""
    extra_args: list[str] = field(default_factory=list)
    # More disks after the boot disk: (PVE drive key such as scsi1, qcow2 file, serial or None).
    extra_disks: list[tuple[str, Path, str | None]] = field(default_factory=list)
    # Unix socket paths are limited to 108 bytes: the sockets live in a short folder of their own.
    sockets: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="hlq-")))

    @property
    def qmp_socket(self) -> Path:
        return self.sockets / "qmp.sock"

    @property
    def agent_socket(self) -> Path | None:
        return self.sockets / "qga.sock" if self.agent else None

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.workdir / "qemu.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def agent_client(self) -> AgentClient:
        """A client for the guest's agent socket (raises if the VM has no agent port)."""
        if self.agent_socket is None:
            raise AgentUnavailable(f"{self.name} has no guest agent port")
        return AgentClient(self.agent_socket)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def argv(self) -> list[str]:
        """QEMU's command line."""
        root = "LABEL=root"
        args = [
            QEMU,
            "-name",
            self.name,
            "-machine",
            "pc",
            "-accel",
            "tcg",
            "-m",
            str(self.memory),
            "-smp",
            str(self.cpus),
            "-nodefaults",
            "-display",
            "none",
            "-vga",
            "none",
            "-serial",
            f"file:{self.console_log}",
            "-qmp",
            f"unix:{self.qmp_socket},server=on,wait=off",
            "-kernel",
            str(self.kernel),
            "-initrd",
            str(self.initrd),
            "-append",
            # mitigations=off: on TCG's default CPU the guest kernel turns page-table isolation on, and every
            # kernel entry then flushes the emulated TLB (boot to cloud-init done: 138-145 s with it off,
            # 152-173 s with it on, quiet machine). Guests under KVM on PVE pay little for them.
            f"root={root} rw console=ttyS0 net.ifnames=1 mitigations=off",
            "-drive",
            f"file={self.disk},format=qcow2,if=none,id=drive0,cache=unsafe,discard=unmap",
            "-device",
            "virtio-rng-pci",
            "-netdev",
            f"tap,id=net0,ifname={self.tap},script=no,downscript=no",
            "-device",
            f"virtio-net-pci,netdev=net0,mac={self.mac}",
        ]
        scsi = self.disk_bus == "scsi" or any(key.startswith("scsi") for key, _, _ in self.extra_disks)
        if scsi:
            args += ["-device", "virtio-scsi-pci,id=scsihw0"]
        if self.disk_bus == "scsi":
            args += ["-device", "scsi-hd,bus=scsihw0.0,channel=0,scsi-id=0,lun=0,drive=drive0"]
        else:
            args += ["-device", "virtio-blk-pci,drive=drive0"]
        for key, path, serial in self.extra_disks:
            # As PVE attaches them: scsiN on the virtio-scsi controller at LUN N, virtioN on virtio-blk; the
            # serial names the disk in the guest's /dev/disk/by-id (scsi-0QEMU_QEMU_HARDDISK_<serial>).
            drive = f"drive-{key}"
            args += ["-drive", f"file={path},format=qcow2,if=none,id={drive},cache=unsafe,discard=unmap"]
            extra = f",serial={serial}" if serial else ""
            if key.startswith("scsi"):
                lun = int(key[4:])
                args += ["-device", f"scsi-hd,bus=scsihw0.0,channel=0,scsi-id=0,lun={lun},drive={drive}{extra}"]
            else:
                args += ["-device", f"virtio-blk-pci,drive={drive}{extra}"]
        if self.seed_iso is not None:
            args += ["-drive", f"file={self.seed_iso},if=ide,index=2,media=cdrom,readonly=on"]
        if self.agent_socket is not None:
            args += [
                "-chardev",
                f"socket,path={self.agent_socket},server=on,wait=off,id=qga0",
                "-device",
                "virtio-serial",
                "-device",
                "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            ]
        return args + self.extra_args

    def start(self) -> None:
        """Start QEMU (in the lab network's namespace); returns once QMP answers."""
        if self.running():
            raise RuntimeError(f"{self.name} is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.tap:
            self.tap = self.network.add_tap()
        for sock in (self.qmp_socket, self.agent_socket):
            if sock is not None:
                with contextlib.suppress(FileNotFoundError):
                    sock.unlink()
        with open(self.qemu_log, "ab") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.network.netns, *self.argv()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started_at = time.monotonic()
        deadline = time.monotonic() + 15
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"QEMU for {self.name} exited with {self.process.returncode}: {self.log_tail()}")
            try:
                qmp(self.qmp_socket, "query-status", timeout=2)
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"QEMU for {self.name} did not answer QMP: {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of QEMU's own log and of the serial console."""
        parts = []
        for path in (self.qemu_log, self.console_log):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name} ---\n" + path.read_text(errors="replace")[-chars:])
        return "\n".join(parts)

    def powerdown(self) -> None:
        """Press the ACPI power button (the guest shuts down if it handles ACPI)."""
        qmp(self.qmp_socket, "system_powerdown")

    def reset(self) -> None:
        """Hard reset (as PVE's ``reset``)."""
        qmp(self.qmp_socket, "system_reset")

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for QEMU to exit; True if it did."""
        if self.process is None:
            return True
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def shutdown(self, timeout: float = 60) -> bool:
        """ACPI shutdown, waiting for QEMU to exit; True if it did (else it still runs)."""
        if not self.running():
            return True
        with contextlib.suppress(OSError, RuntimeError):
            self.powerdown()
        return self.wait_exit(timeout)

    def kill(self) -> None:
        """Stop QEMU now (SIGTERM, then SIGKILL by pid). Idempotent; never raises. Keeps the disk."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)

    def destroy(self) -> None:
        """Kill QEMU and remove its tap and folder."""
        self.kill()
        if self.tap:
            self.network.del_tap(self.tap)
            self.tap = ""
        shutil.rmtree(self.sockets, ignore_errors=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- what a test waits for

    def wait_agent(self, timeout: float = 180) -> float:
        """Seconds from QEMU's start until the agent answered."""
        self.agent_client().wait(timeout, alive=self.running)
        return time.monotonic() - self.started_at

    def cloud_init_finished(self) -> bool:
        """Whether cloud-init finished this boot for the current seed (through the agent).

        ``/run/cloud-init/result.json`` is written at the end of each boot (``/run`` is fresh per boot) and
        ``/var/lib/cloud/data/instance-id`` names the instance it ran for; ``boot-finished`` of an earlier
        instance stays on disk until cloud-init switches instances, so it alone proves nothing.
        """
        client = self.agent_client()
        try:
            client.file_read("/run/cloud-init/result.json")
            current = client.file_read("/var/lib/cloud/data/instance-id").decode().strip()
        except AgentError:
            return False
        return not self.instance_id or current == self.instance_id

    def wait_cloud_init(self, timeout: float = 300) -> float:
        """Seconds from QEMU's start until cloud-init finished (needs the agent)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.cloud_init_finished():
                    return time.monotonic() - self.started_at
            except AgentUnavailable:
                pass
            if not self.running():
                raise RuntimeError(f"{self.name} stopped before cloud-init finished: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"cloud-init did not finish on {self.name} within {timeout:.0f} s")
            time.sleep(1.0)


def random_mac() -> str:
    """A MAC in Proxmox's prefix (BC:24:11), as PVE gives new NICs."""
    tail = secrets.token_bytes(3)
    return "bc:24:11:" + ":".join(f"{b:02x}" for b in tail)


def boot_guest(
    image: GuestImage,
    network: LabNetwork,
    workdir: Path,
    seed: NoCloudSeed | None,
    *,
    name: str = "guest",
    mac: str | None = None,
    agent: bool = True,
    memory: int = 1024,
    cpus: int = 1,
    disk_size: int | None = None,
) -> Guest:
    """Start a guest on a fresh overlay of ``image`` with ``seed`` as its cloud-init drive."""
    workdir.mkdir(parents=True, exist_ok=True)
    disk = make_overlay(image.disk, workdir / "disk.qcow2", disk_size)
    iso = write_seed_iso(seed, workdir / "cloudinit.iso") if seed is not None else None
    guest = Guest(
        name=name,
        workdir=workdir,
        disk=disk,
        kernel=image.kernel,
        initrd=image.initrd,
        mac=mac or random_mac(),
        network=network,
        seed_iso=iso,
        agent=agent,
        memory=memory,
        cpus=cpus,
        instance_id=seed.instance_id if seed is not None else "",
    )
    try:
        guest.start()
    except BaseException:
        guest.destroy()
        raise
    return guest
