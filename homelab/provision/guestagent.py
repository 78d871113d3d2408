"""What apply learns about a VM once it runs, through the Proxmox guest agent: its address and SSH host key.

The later stages log in to that address and pin that key. The agent is an authenticated channel, so the key is
known before the first SSH connection instead of trusted on first use.

After every boot the key is read only once cloud-init has finished for the instance Proxmox seeded at that
start: ``/var/lib/cloud/data/instance-id`` names it (PVE's ``cloudinit/dump`` of the meta-data gives the id it
expects: the sha1 of the user-data and network-config, so a change of ciuser, sshkeys, ipconfig0, nameserver,
searchdomain... is a new instance) and ``/var/lib/cloud/instance/boot-finished`` exists. A new instance
regenerates the guest's host keys; reading earlier would pin the old key (or find none on a first boot). A
changed key found this way is recorded with a line saying so: it came through the authenticated API. SSH
itself never accepts a changed key (see :mod:`homelab.adapters.ssh`).

A VM with a static IP never waits for the agent to learn its address (the lab names it); its host key still
comes through the agent. A VM whose template lacks qemu-guest-agent fails after ``timeouts.agent`` with an
error that says so: without the agent no host key can be pinned, and SSH would refuse the VM anyway. A VM
with ``agent`` disabled in its config fails at once.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.marks import AGENT_TAG
from homelab.adapters.proxmox.versions import TemplateVersion
from homelab.adapters.sshkeys import fingerprint
from homelab.errors import Interrupted, OperationError, OperationTimeout, ProxmoxError
from homelab.lab.models import Lab
from homelab.state.hosts import Host

HOST_KEY_FILE = "/etc/ssh/ssh_host_ed25519_key.pub"
# PVE's answer when nothing in the guest answers the agent socket (no agent installed, or still booting).
NOT_RUNNING = "QEMU guest agent is not running"
INSTANCE_ID_FILE = "/var/lib/cloud/data/instance-id"
BOOT_FINISHED = "/var/lib/cloud/instance/boot-finished"
# Interfaces a VM grows once Docker or a hypervisor runs on it: their addresses are not the VM's.
VIRTUAL_IFACES = ("docker", "br-", "veth", "virbr", "cni", "flannel", "cali", "tailscale", "zt")
# PVE's answer to a file-read of a file the guest does not have (qemu-ga's guest-file-open failing).
MISSING_FILE = re.compile(r"guest-file-open' failed|failed to open file|No such file or directory")
NO_AGENT = re.compile(r"No QEMU guest agent configured")
DRIVE = re.compile(r"^(ide|sata|scsi|virtio)\d+$")
NOTE_EVERY = 30.0  # seconds between "still waiting" lines
POLL_BOOTING = 2.0  # seconds between agent polls at most while a VM boots (an answer is late by half of it)

Step = Callable[[str, str], None]  # (lab VM name, what is happening)


def first_address(interfaces: list[dict[str, Any]], prefer: str | None = None, subnet: str | None = None) -> str | None:
    """The VM's IPv4 address from the agent's answer: not loopback, link-local or a container bridge;
    the static IP if present, else one inside the lab's subnet, else the first."""
    found: list[str] = []
    for iface in interfaces:
        name = str(iface.get("name", ""))
        if name == "lo" or name.startswith(VIRTUAL_IFACES):
            continue
        for entry in iface.get("ip-addresses") or []:
            if entry.get("ip-address-type") != "ipv4":
                continue
            addr = ipaddress.IPv4Address(entry["ip-address"])
            if addr.is_loopback or addr.is_link_local:
                continue
            found.append(str(addr))
    if prefer and prefer in found:
        return prefer
    if subnet:
        inside = [a for a in found if ipaddress.IPv4Address(a) in ipaddress.IPv4Network(subnet)]
        if inside:
            return inside[0]
    return found[0] if found else None


def _is_cloudinit_drive(value: str) -> bool:
    """Whether a drive is a cloud-init drive: PVE names it ``vm-<id>-cloudinit``; any cdrom on a storage volume
    that is not an ISO image is one too (the only kind PVE makes)."""
    volume, *props = value.split(",")
    if "cloudinit" in volume:
        return True
    return "media=cdrom" in props and ":" in volume and ":iso/" not in volume


class GuestAgent:
    """Reads addresses and host keys of the lab's VMs through their guest agents; stops when ``cancel`` is set."""

    def __init__(self, api: PveApi, lab: Lab, cancel: threading.Event, step: Step):
        self.api = api
        self.lab = lab
        self.cancel = cancel
        self.step = step

    def static_ip(self, vm: str) -> str | None:
        """The lab's static address of ``vm`` (None: DHCP)."""
        return next((str(v.ip) for v in self.lab.vms if v.name == vm and v.ip != "dhcp"), None)

    def learn(
        self,
        vm: str,
        node: str,
        vmid: int,
        booted: bool,
        address: str | None,
        known: Host | None,
        template: TemplateVersion | None = None,
    ) -> tuple[str | None, str | None]:
        """The VM's (address, host key) for the later stages: ``address`` is what apply saw already, ``known``
        what the last apply recorded; ``booted``: something (re)started the VM since; ``template``: the version
        it was just cloned from (one homelab built without the guest agent fails at once, naming it)."""
        static = self.static_ip(vm)
        if (
            not booted
            and known is not None
            and known.host_key
            and known.is_for(vmid)
            and address in (None, known.address)
            and static in (None, known.address)
        ):
            # Nothing restarted the VM: what the last apply learned still holds, at no API cost.
            return known.address, known.host_key
        deadline = time.monotonic() + self.lab.settings.timeouts.agent
        expected = self.seeded_instance(node, vmid)
        self.wait_cloud_init(vm, node, vmid, expected, deadline, template)
        if static is not None:
            address = static
        elif address is None:
            address = self.wait_address(vm, node, vmid, deadline)
        key = self.read_host_key(vm, node, vmid)
        old = known.host_key if known is not None and known.is_for(vmid) else None
        if key and old and key.split()[:2] != old.split()[:2]:
            why = f"cloud-init instance {expected[:12]} made a new one" if expected else "after a boot"
            self.step(
                vm,
                f"host key changed ({why}): pinned {fingerprint(key)}, read through the Proxmox API, "
                f"in place of {fingerprint(old)}",
            )
        return address, key

    def seeded_instance(self, node: str, vmid: int) -> str | None:
        """The cloud-init instance id Proxmox seeds the VM with (its NoCloud meta-data, as ``qm cloudinit dump``
        shows it); None without a cloud-init drive, or with custom user/network/meta snippets (``cicustom``),
        whose id PVE's dump does not show."""
        config = self.api.get(f"/nodes/{node}/qemu/{vmid}/config")
        if not any(DRIVE.match(k) and _is_cloudinit_drive(str(v)) for k, v in config.items()):
            return None
        if re.search(r"(^|,)\s*(user|network|meta)=", str(config.get("cicustom") or "")):
            return None
        dump = self.api.get(f"/nodes/{node}/qemu/{vmid}/cloudinit/dump", type="meta")
        match = re.search(r"instance-id:\s*(\S+)", str(dump or ""))
        return match.group(1) if match else None

    def wait_cloud_init(
        self,
        vm: str,
        node: str,
        vmid: int,
        expected: str | None,
        deadline: float,
        template: TemplateVersion | None = None,
    ) -> None:
        """Poll the agent until cloud-init has finished for ``expected`` (None: for whatever instance the guest
        runs): its instance id is the expected one and its ``boot-finished`` exists. A VM cloned from a template
        homelab built without the agent (no guest-agent tag: built before homelab baked it in) fails at the
        first "not running" answer instead of after the lab's agent timeout."""
        agentless = template is not None and template.built_by_homelab and AGENT_TAG not in template.tags
        waiting = f" for instance {expected[:12]}" if expected else ""
        self.step(vm, f"waiting for the guest agent and cloud-init{waiting}")
        started = time.monotonic()
        note = started + NOTE_EVERY
        answered, current, last = False, None, ""
        delay = 0.05
        while True:
            self._check_cancel()
            try:
                current = self._read(node, vmid, INSTANCE_ID_FILE)
                answered = True
                if (expected is None or (current or "").strip() == expected) and self._read(
                    node, vmid, BOOT_FINISHED
                ) is not None:
                    return
            except ProxmoxError as exc:
                if NOT_RUNNING in str(exc) and agentless and template is not None:
                    raise OperationError(
                        f"{vm}: no guest agent runs in it: its template {template.name} was built without "
                        f"qemu-guest-agent (it lacks the {AGENT_TAG} tag); build a new version with `homelab "
                        f"template build {template.template}`, which installs it"
                    ) from None
                if NO_AGENT.search(str(exc)):
                    raise OperationError(
                        f"{vm}: the VM has no guest agent configured; homelab reads its SSH host key through "
                        "the agent (set `agent: 1` on the template)"
                    ) from None
                if not exc.transient:
                    raise
                last = str(exc).split(": ", 1)[-1][:160]
            now = time.monotonic()
            if now >= deadline:
                timeout = self.lab.settings.timeouts.agent
                if not answered:
                    raise OperationTimeout(
                        f"{vm}: the guest agent did not answer within {timeout}s: the template lacks "
                        "qemu-guest-agent (build it with `homelab template build`), or the VM did not boot"
                        + (f" (last answer: {last})" if last else "")
                    )
                seen = f"it runs instance {current.strip()[:12]}" if current else "no instance yet"
                raise OperationTimeout(
                    f"{vm}: cloud-init did not finish{waiting} within {timeout}s ({seen}); "
                    "its SSH host key cannot be pinned before it has"
                )
            if now >= note:
                state = "cloud-init still running" if answered else f"no answer from the guest agent yet ({last})"
                self.step(vm, f"waiting for cloud-init{waiting}: {state} after {now - started:.0f}s")
                note = now + NOTE_EVERY
            time.sleep(delay)
            # Until the agent answers the guest is booting (tens of seconds); after, cloud-init is seconds from
            # done, and each second of lateness is the user's wait.
            delay = min(delay * 1.5, 1.0 if answered else POLL_BOOTING)

    def _read(self, node: str, vmid: int, path: str) -> str | None:
        """A file's content through the agent; None when the guest has no such file."""
        try:
            answer = self.api.get_once(f"/nodes/{node}/qemu/{vmid}/agent/file-read", file=path)
        except ProxmoxError as exc:
            if MISSING_FILE.search(str(exc)):
                return None
            raise
        return str((answer or {}).get("content", ""))

    def read_host_key(self, vm: str, node: str, vmid: int) -> str | None:
        """The VM's ed25519 host key, read through the guest agent: an authenticated channel, so SSH can pin
        the key before the first connection instead of trusting whatever answers."""
        try:
            answer = self.api.get(f"/nodes/{node}/qemu/{vmid}/agent/file-read", file=HOST_KEY_FILE)
        except ProxmoxError as exc:
            self.step(vm, f"host key not read through the agent ({exc}); SSH will refuse until it is pinned")
            return None
        match = re.match(r"^(ssh-ed25519) ([A-Za-z0-9+/=]+)", str((answer or {}).get("content", "")).strip())
        return f"{match.group(1)} {match.group(2)}" if match else None

    def wait_address(self, vm: str, node: str, vmid: int, deadline: float) -> str:
        """Poll the guest agent until it reports an address (skipping lo and link-local), for a VM on DHCP."""
        self.step(vm, "waiting for the guest agent to report the DHCP address")
        timeout = self.lab.settings.timeouts.agent
        delay = 0.05
        while True:
            self._check_cancel()
            try:
                answer = self.api.get_once(f"/nodes/{node}/qemu/{vmid}/agent/network-get-interfaces")
                address = first_address(answer.get("result", []), None, self.lab.network.subnet)
                if address:
                    return address
            except ProxmoxError as exc:
                if not exc.transient:
                    raise
            if time.monotonic() >= deadline:
                raise OperationTimeout(
                    f"{vm}: the guest agent reported no address within {timeout}s "
                    "(is qemu-guest-agent installed in the template?)"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, POLL_BOOTING)

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Interrupted("interrupted")
