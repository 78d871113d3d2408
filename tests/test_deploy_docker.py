"""`docker compose up` through the deploy, for real: dockerd inside an SSH test host, an image built offline.

No image can be pulled here, so the test makes one: a static busybox imported as ``traefik:test`` and tagged
``portainer/portainer-ce:test``, and the lab pins both stacks' version to ``test``. The shipped compose files
and their rendered .env then start that image on the ``homelab`` network the stacks role creates; dropping
portainer from the lab takes its container down. dockerd runs in the host's own mount and
network namespaces: /run is a tmpfs there (its socket stays inside), its data lives in the host's /home,
and the cgroup hierarchies are mounted there (``ip netns exec`` hides the machine's). The homelab user owns
the socket group, so the role runs docker without sudo (homelab_docker_become=false). The docker role runs
as on a baked VM: it finds Docker and compose (the machine's, through the shared /usr) and installs nothing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from homelab.adapters.sshkeys import ensure_admin_key
from homelab.deploy.plan import DeployOptions
from homelab.deploy.service import deploy_stacks
from homelab.state.hosts import Host, save_hosts
from tests.harness.fixtures_hosts import HostFactory
from tests.harness.hosts import SshHost
from tests.harness.labs import make_lab

pytestmark = pytest.mark.integration

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


def why_not() -> str | None:
    if shutil.which("dockerd") is None:
        return "dockerd is not installed (Debian package docker.io)"
    if shutil.which("docker-compose") is None:
        return "docker-compose is not installed (Debian package docker-compose)"
    if not os.path.exists(BUSYBOX) or not is_static(BUSYBOX):
        return f"no static {BUSYBOX} to build an image from offline (Debian package busybox-static)"
    if not os.path.isdir("/sys/fs/cgroup/devices"):
        return "dockerd needs the cgroup v1 hierarchies, which this machine does not mount"
    return None


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


def test_deploy_starts_the_stacks_with_compose_takes_a_dropped_one_down_and_a_second_deploy_changes_nothing(
    tmp_path: Path, ssh_hosts: HostFactory
) -> None:
    reason = why_not()
    if reason:
        pytest.skip(reason)
    web = {"name": "web", "ip": "10.10.0.10", "stacks": ["traefik", "portainer"]}
    stacks = {"traefik": {"version": "test"}, "portainer": {"version": "test"}}
    lab = make_lab(vms=[web], domain="lab.example", stacks=stacks)
    (vm,) = ssh_hosts(1, per_user_keys=True)
    vm.exec(["useradd", "-m", "-d", "/home/homelab", "-s", "/bin/sh", "homelab"])
    vm.exec(["usermod", "-p", "*", "homelab"])
    authorize = "mkdir -p /etc/ssh/authorized_keys && cat > /etc/ssh/authorized_keys/homelab"
    vm.exec(["sh", "-c", authorize], input=ensure_admin_key(lab))
    save_hosts(lab, [Host("web", vm.address, "homelab", host_key=vm.host_key_pub)])

    with dockerd(vm, group="homelab"):
        rootfs = tmp_path / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
        entrypoint = '["/bin/busybox", "sh", "-c", "trap \\"exit 0\\" TERM; /bin/busybox sleep 600 & wait", "sh"]'
        vm.exec(["sh", "-c", f"tar -C {rootfs} -c . | docker import -c 'ENTRYPOINT {entrypoint}' - traefik:test"])
        vm.exec(["docker", "tag", "traefik:test", "portainer/portainer-ce:test"])

        # The docker role runs too: the host has Docker and compose (the machine's /usr), so it installs nothing.
        options = DeployOptions(extra_vars={"homelab_docker_become": False})
        lines: list[str] = []
        result = deploy_stacks(lab, lines.append, lambda question: None, options)
        assert result.ok and result.run is not None, "\n".join(lines)
        assert any("web: ok Look for Docker and compose" in line for line in lines), lines
        assert not any("Install docker.io" in line or "Read the distribution" in line for line in lines), lines
        assert any("web: changed Create the homelab network" in line for line in lines), lines
        assert any("web: changed Compose up: traefik" in line for line in lines), lines
        running = vm.exec(["docker", "ps", "--format", "{{.Image}} {{.Status}} {{.Networks}}"]).stdout.split("\n")
        assert sorted(line.split()[0] for line in running if line) == ["portainer/portainer-ce:test", "traefik:test"]
        assert all(line.split()[1] == "Up" and line.endswith("homelab") for line in running if line)

        # portainer leaves the lab file: its container goes, then its folder; traefik keeps running.
        lab = make_lab(vms=[dict(web, stacks=["traefik"])], domain="lab.example", stacks=stacks)
        lines.clear()
        dropped = deploy_stacks(lab, lines.append, lambda question: None, options)
        assert dropped.ok and "  - web: stack portainer (compose down, folder removed)" in lines, "\n".join(lines)
        assert any("web: changed Compose down: portainer" in line for line in lines), lines
        running = vm.exec(["docker", "ps", "-a", "--format", "{{.Image}} {{.Status}}"]).stdout.split("\n")
        assert [line.split()[:2] for line in running if line] == [["traefik:test", "Up"]]
        assert not (vm.home_dir / "homelab" / "stacks" / "portainer").exists()

        lines.clear()
        again = deploy_stacks(lab, lines.append, lambda question: None, options)
        assert again.run is not None and again.run.hosts["web"].stats.changed == 0, "\n".join(lines)
