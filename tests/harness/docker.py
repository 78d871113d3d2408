"""dockerd inside an SSH test host, and images made offline from a static busybox (no image can be pulled here).

dockerd runs in the host's own mount and network namespaces: /run is a tmpfs there (its socket stays inside),
its data lives in the host's /home, and the cgroup hierarchies are mounted there (``ip netns exec`` hides the
machine's). ``needs_dockerd`` skips a test with the reason when this machine cannot; ``needs_compose`` when
docker-compose (v1) is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.hosts import SshHost

COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    COMPOSE is None, reason="docker-compose is not installed (Debian package docker-compose)"
)

BUSYBOX = "/usr/bin/busybox"
CGROUPS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids")


def is_static(path: str) -> bool:
    """An ELF executable without a program interpreter (PT_INTERP) runs in an image with nothing else in it."""
    with open(path, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:  # 64-bit only
            return False
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def dockerd_support() -> str | None:
    """Why dockerd cannot run in a test host here, or None."""
    if shutil.which("dockerd") is None:
        return "dockerd is not installed (Debian package docker.io)"
    if shutil.which("docker-compose") is None:
        return "docker-compose is not installed (Debian package docker-compose)"
    if not os.path.exists(BUSYBOX) or not is_static(BUSYBOX):
        return f"no static {BUSYBOX} to build an image from offline (Debian package busybox-static)"
    if not os.path.isdir("/sys/fs/cgroup/devices"):
        return "dockerd needs the cgroup v1 hierarchies, which this machine does not mount"
    return None


_DOCKERD = dockerd_support()
needs_dockerd = pytest.mark.skipif(_DOCKERD is not None, reason=_DOCKERD or "")


def busybox_image(vm: SshHost, folder: Path, tag: str, entrypoint: str = "[]", sh: bool = False) -> None:
    """Import an image ``tag`` into the host's dockerd holding only the static busybox (and /bin/sh, ``sh``)."""
    rootfs = folder / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    if sh:
        (rootfs / "bin" / "sh").symlink_to("busybox")
    vm.exec(["sh", "-c", f"tar -C {rootfs} -c . | docker import -c 'ENTRYPOINT {entrypoint}' - {tag}"])


@contextlib.contextmanager
def dockerd(vm: SshHost, group: str) -> Iterator[str]:
    """dockerd inside the host's namespaces; yields the cgroup parent its containers live under."""
    parent = f"homelab-test-{secrets.token_hex(3)}"
    mounts = [
        "mount -t tmpfs -o mode=755 tmpfs /run",
        "mkdir -m 755 /run/sshd",  # sshd needs it for every new connection
        "mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup",
        *(f"mkdir /sys/fs/cgroup/{c} && mount -t cgroup -o {c} cgroup /sys/fs/cgroup/{c}" for c in CGROUPS),
    ]
    vm.exec(["sh", "-c", " && ".join(mounts)])
    argv = ["nsenter", "-t", str(vm.pid), "-n", "-m", "--", "dockerd", "--data-root", "/home/.docker"]
    argv += ["--exec-root", "/run/docker", "--pidfile", "/run/docker.pid", "-H", "unix:///run/docker.sock"]
    argv += ["--group", group, "--storage-driver=vfs", "--iptables=false", "--ip6tables=false", "--bridge=none"]
    argv += ["--cgroup-parent", f"/{parent}", "--shutdown-timeout", "1"]
    with open(vm.root / "dockerd.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while vm.exec(["docker", "version"], check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dockerd did not start:\n{(vm.root / 'dockerd.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield parent
    finally:
        with contextlib.suppress(Exception):
            ids = vm.exec(["docker", "ps", "-aq"], check=False).stdout.split()
            if ids:
                vm.exec(["docker", "rm", "-f", *ids], check=False)
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # containers have their own network namespace, so the host's teardown would not see a leftover one
        for controller in CGROUPS:
            root = Path("/sys/fs/cgroup", controller, parent)
            for procs in sorted(root.rglob("cgroup.procs"), reverse=True):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            with contextlib.suppress(OSError):
                root.rmdir()


def containers(vm: SshHost) -> dict[str, dict[str, Any]]:
    """Every container by its compose service name: docker inspect's record."""
    ids = vm.exec(["docker", "ps", "-aq"]).stdout.split()
    found = json.loads(vm.exec(["docker", "inspect", *ids]).stdout) if ids else []
    return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in found}
