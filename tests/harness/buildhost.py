"""An SSH test host that plays a template's build VM, for the cloud-image builder's bake.

The bake (homelab.templates.bake) logs in at network.build_ip as the lab's user with homelab's admin key and runs
``cloud-init status --wait``, ``apt-get update/install qemu-guest-agent``, ``systemctl enable`` and
``cloud-init clean``. A test host (tests.harness.hosts) gets, inside its own mount namespace only:

* ``/var/lib`` as an overlay (upper layer in the host's folder), like its ``/etc``;
* stand-ins for ``apt-get``, ``systemctl`` and ``cloud-init`` bind-mounted on ``/usr/local/bin`` and
  ``/usr/local/sbin`` (first in sshd's PATH); the machine's own /usr and /etc are never touched. Their effects
  are the files the real tools leave: ``/var/lib/dpkg/info/<package>.list`` for an install (only after an
  ``update``, as on a fresh cloud image whose package lists are empty) and the unit's link in
  ``/etc/systemd/system/multi-user.target.wants/`` for an enable (only of an installed package);
* the lab's user as cloud-init makes it, with root's rights: the machine has no sudo, so the user is a second
  name for uid 0 (``useradd -o -u 0``) and homelab's scripts run as root directly.

The fake Proxmox (homelab.demo.fake_agent) is told the host's folders (:meth:`BuildHost.fake_entry`): it
authorises the VM's cloud-init ``sshkeys`` there when the build VM starts and reads the dpkg file and the unit
link when it stops. Faults: :meth:`BuildHost.fail_apt` (apt-get fails with a message) and
:meth:`BuildHost.hold_apt_lock_once` (the first apt-get finds the dpkg lock taken).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from tests.harness.hosts import SshHost, make_host

CONTROL = "/etc/homelab-test"  # inside the host: the stand-ins' fault switches

APT_GET = f"""#!/bin/sh
# Stand-in for apt-get on a test host playing a build VM (tests/harness/buildhost.py).
if [ -f {CONTROL}/apt-locked-once ]; then
  rm -f {CONTROL}/apt-locked-once
  echo "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 999 (unattended-upgr)" >&2
  exit 100
fi
if [ -f {CONTROL}/apt-fails ]; then cat {CONTROL}/apt-fails >&2; exit 100; fi
if [ "${{DEBIAN_FRONTEND:-}}" != noninteractive ]; then
  echo "E: DEBIAN_FRONTEND is not noninteractive: a package could ask a question and hang" >&2; exit 100
fi
cmd=; pkgs=
while [ $# -gt 0 ]; do
  case "$1" in
    -o) shift ;;
    -*) ;;
    *) if [ -z "$cmd" ]; then cmd=$1; else pkgs="$pkgs $1"; fi ;;
  esac
  shift
done
case "$cmd" in
  update) mkdir -p /var/lib/apt/lists && touch /var/lib/apt/lists/homelab-test-updated
          echo "Reading package lists..." ;;
  install)
    if [ ! -f /var/lib/apt/lists/homelab-test-updated ]; then
      echo "E: Unable to locate package$pkgs" >&2; exit 100
    fi
    mkdir -p /var/lib/dpkg/info
    for p in $pkgs; do echo "/usr/share/doc/$p" > /var/lib/dpkg/info/$p.list; echo "Setting up $p ..."; done ;;
  *) echo "E: the apt-get stand-in knows no command '$cmd'" >&2; exit 100 ;;
esac
"""

SYSTEMCTL = """#!/bin/sh
# Stand-in for systemctl on a test host playing a build VM (tests/harness/buildhost.py).
case "$1" in
  enable)
    unit=${2%.service}
    if [ ! -f /var/lib/dpkg/info/$unit.list ]; then
      echo "Failed to enable unit: Unit file $unit.service does not exist." >&2; exit 1
    fi
    mkdir -p /etc/systemd/system/multi-user.target.wants
    ln -sf /lib/systemd/system/$unit.service /etc/systemd/system/multi-user.target.wants/$unit.service ;;
  *) exit 0 ;;
esac
"""

CLOUD_INIT = """#!/bin/sh
# Stand-in for cloud-init on a test host playing a build VM (tests/harness/buildhost.py).
case "$1" in
  status) echo "status: done" ;;
  clean) rm -rf /var/lib/cloud; mkdir -p /var/lib/homelab-test; echo "$*" > /var/lib/homelab-test/cloud-init-clean ;;
  *) exit 0 ;;
esac
"""


@dataclass
class BuildHost:
    """A test host playing a template's build VM: its address, its folders, its faults."""

    host: SshHost
    var_lib_upper: Path

    @property
    def address(self) -> str:
        return self.host.address

    def fake_entry(self) -> dict[str, str]:
        """What the fake Proxmox needs to know of this host (its ``build_hosts`` entry)."""
        return {
            "etc": str(self.host.etc_upper),
            "var_lib": str(self.var_lib_upper),
            "authorized_keys": str(self.host.authorized_keys),
        }

    def fail_apt(self, message: str) -> None:
        """Every apt-get from now on fails with ``message`` (exit 100)."""
        self.host.exec(["sh", "-c", f"mkdir -p {CONTROL} && cat > {CONTROL}/apt-fails"], input=message + "\n")

    def hold_apt_lock_once(self) -> None:
        """The next apt-get finds the dpkg lock held (as while cloud-init or an unattended upgrade runs)."""
        self.host.exec(["sh", "-c", f"mkdir -p {CONTROL} && touch {CONTROL}/apt-locked-once"])

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists as the host sees it (a link counts, even to a unit file the machine lacks)."""
        return self.host.exec(["sh", "-c", 'test -e "$1" || test -L "$1"', "-", path], check=False).returncode == 0

    def stop(self) -> None:
        self.host.stop()


def make_build_host(workdir: Path, index: int, user: str) -> BuildHost:
    """Start a test host that plays a build VM whose cloud-init user is ``user``; call ``stop()`` when done."""
    workdir.mkdir(parents=True, exist_ok=True)
    tools = workdir / "standins"
    tools.mkdir()
    for name, text in (("apt-get", APT_GET), ("systemctl", SYSTEMCTL), ("cloud-init", CLOUD_INIT)):
        (tools / name).write_text(text)
        (tools / name).chmod(0o755)
    upper, work = workdir / "varlib-upper", workdir / "varlib-work"
    upper.mkdir()
    work.mkdir()
    q = shlex.quote
    mounts = [
        f"mount -t overlay overlay -o {q(f'lowerdir=/var/lib,upperdir={upper},workdir={work}')} /var/lib",
        f"mount --bind {q(str(tools))} /usr/local/bin",
        f"mount --bind {q(str(tools))} /usr/local/sbin",
    ]
    host = make_host("build", workdir, index, extra_mounts=mounts)
    try:
        host.exec(["useradd", "-o", "-u", "0", "-g", "0", "-M", "-d", "/root", "-s", "/bin/sh", user])
        host.exec(["usermod", "-p", "*", user])  # as cloud-init leaves it: no password, yet not locked for SSH
    except BaseException:
        host.stop()
        raise
    return BuildHost(host, upper)
