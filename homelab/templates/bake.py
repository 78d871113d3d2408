"""The bake: boot the imported cloud image once and install what every template needs (qemu-guest-agent, git).

Debian's and Ubuntu's cloud images ship without qemu-guest-agent, and homelab learns each VM's address and host
key through the agent. So the cloud-image builder boots the new VM once before it becomes a template, at the
lab's static build address (network.build_ip) with homelab's admin key, and over SSH: waits for cloud-init,
installs the agent, enables it, then cleans cloud-init, the machine id and the SSH host keys so that every clone
starts as a new machine. Then the VM is shut down through the API, the build's cloud-init settings are removed
and the VM is tagged as having the agent.

Host-key trust for this one VM: it is brand new and has no agent yet, so its host key cannot be read through an
authenticated channel. homelab takes the key it offers on first contact, for this build only: it is never
written to a known_hosts file or hosts.json, and the bake removes the keys before the VM becomes a template
(clones make their own). What travels to the VM is public (an apt install); nothing secret does.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.vms import start_vm
from homelab.adapters.ssh import ScriptResult
from homelab.errors import OperationError
from homelab.lab.models import Lab

Progress = Callable[[str], None]

AGENT_PACKAGE = "qemu-guest-agent"
# The deploy key's checkout of the config repo runs git on the VM, and Debian's cloud images have none.
BAKE_PACKAGES = (AGENT_PACKAGE, "git")
# cloud-init settings that exist only for the bake: the template leaves them to each clone.
BUILD_SETTINGS = ("ciuser", "sshkeys", "ipconfig0", "nameserver", "searchdomain")
# Seconds apt waits for the dpkg lock (cloud-init or unattended-upgrades may hold it at first boot), per try.
APT_LOCK_WAIT = 120


class BuildShell(Protocol):
    """A shell on the build VM (an SSH session; the demo's stand-in)."""

    def run(self, script: str, *, as_user: str, timeout: float = 120) -> ScriptResult: ...


# (address, login user, lab name, seconds to wait for it, progress) -> an open shell, closed by ``with``
OpenShell = Callable[[str, str, str, float, Progress], AbstractContextManager[BuildShell]]


@dataclass(frozen=True)
class BakeTemplateVm:
    """Boot the new VM at the build address and install the guest agent over SSH, then shut it down."""

    node: str
    vmid: int
    address: str
    user: str
    packages: tuple[str, ...] = BAKE_PACKAGES

    def describe(self) -> str:
        return (
            f"bake VM {self.vmid}: start it at {self.address}, log in over SSH as {self.user} (its host key is "
            f"taken on first contact, for this build only, never recorded), wait for cloud-init, install "
            f"{' '.join(self.packages)}, clean cloud-init, machine id and SSH host keys, shut it down"
        )


@dataclass(frozen=True)
class SealTemplateVm:
    """Remove the build's cloud-init settings and tag the VM as having the guest agent."""

    node: str
    vmid: int
    delete: tuple[str, ...]
    tags: str

    def describe(self) -> str:
        return f"remove the build's {', '.join(self.delete)} from VM {self.vmid}; tags {self.tags}"


@dataclass(frozen=True)
class BakeStep:
    """One script of the bake, run as root, with the line shown before it."""

    says: str
    script: str


def bake_steps(packages: tuple[str, ...]) -> tuple[BakeStep, ...]:
    """The bake's scripts, in order (POSIX sh, each under ``set -e``)."""
    names = " ".join(shlex.quote(p) for p in packages)
    apt = f"apt-get -q -y -o DPkg::Lock::Timeout={APT_LOCK_WAIT}"
    # A lock held past apt's own wait (cloud-init's package step, an unattended upgrade) is retried; any
    # other failure ends the bake with apt's words.
    retry = (
        "try_apt() {\n"
        "  n=0\n"
        "  while :; do\n"
        '    if out=$(DEBIAN_FRONTEND=noninteractive "$@" 2>&1); then printf "%s\\n" "$out"; return 0; fi\n'
        '    case "$out" in *"Could not get lock"*|*"is another process using it"*) ;; '
        '*) printf "%s\\n" "$out" >&2; return 1;; esac\n'
        "    n=$((n + 1))\n"
        '    if [ "$n" -ge 5 ]; then printf "%s\\n" "$out" >&2; return 1; fi\n'
        "    sleep 5\n"
        "  done\n"
        "}\n"
    )
    return (
        BakeStep(
            "waiting for cloud-init to finish",
            # 0: done; 2: done with recoverable errors (cloud-init 23.4+); anything else is a failed first boot
            'rc=0; cloud-init status --wait >/dev/null || rc=$?\n[ "$rc" -eq 0 ] || [ "$rc" -eq 2 ] || '
            '{ echo "cloud-init failed (exit $rc): $(cloud-init status --long 2>&1 | tail -n 3)" >&2; exit 1; }',
        ),
        BakeStep(f"installing {' '.join(packages)}", f"{retry}try_apt {apt} update\ntry_apt {apt} install {names}"),
        BakeStep(f"enabling {AGENT_PACKAGE}", f"systemctl enable {AGENT_PACKAGE}"),
        BakeStep(
            "cleaning cloud-init, the machine id and the SSH host keys (each clone makes its own)",
            "cloud-init clean --logs --seed\n"
            ": > /etc/machine-id\nrm -f /var/lib/dbus/machine-id\n"
            "rm -f /etc/ssh/ssh_host_*\nsync",
        ),
    )


def bake(api: PveApi, lab: Lab, action: BakeTemplateVm, progress: Progress, open_shell: OpenShell) -> None:
    """Carry out a BakeTemplateVm: start, bake over SSH, shut down (raises OperationError with the reason)."""
    timeouts = lab.settings.timeouts
    start_vm(api, action.node, action.vmid, timeouts.start, f"start of build VM {action.vmid}")
    progress(f"bake: waiting for SSH at {action.address}")
    with open_shell(action.address, action.user, lab.name, timeouts.agent, progress) as shell:
        for step in bake_steps(action.packages):
            progress(f"bake: {step.says}")
            result = shell.run(step.script, as_user="root", timeout=timeouts.task)
            if not result.ok:
                raise OperationError(f"bake of VM {action.vmid}: {step.says} failed: {result.detail()}")
    progress(f"bake: shutting VM {action.vmid} down")
    grace = min(timeouts.start, 300)
    upid = api.post(
        f"/nodes/{action.node}/qemu/{action.vmid}/status/shutdown",
        timeout=grace,
        forceStop=1,  # the disk was synced; a guest that ignores ACPI is stopped rather than waited for
    )
    if isinstance(upid, str) and upid.startswith("UPID:"):
        api.wait_task(action.node, upid, grace + timeouts.task, f"shutdown of build VM {action.vmid}")


def seal(api: PveApi, lab: Lab, action: SealTemplateVm) -> None:
    """Carry out a SealTemplateVm."""
    api.put(
        f"/nodes/{action.node}/qemu/{action.vmid}/config",
        delete=",".join(action.delete),
        tags=action.tags,
    )
