"""What apply learns about a VM once it runs, through the Proxmox guest agent: its address and SSH host key.

The later stages log in to that address and pin that key. The agent is an authenticated channel, so the key is
known before the first SSH connection instead of trusted on first use.
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
from homelab.errors import Interrupted, OperationError, OperationTimeout, ProxmoxError
from homelab.lab.models import Lab
from homelab.state.hosts import Host

HOST_KEY_FILE = "/etc/ssh/ssh_host_ed25519_key.pub"
# PVE's answer when nothing in the guest answers the agent socket (no agent installed, or still booting).
NOT_RUNNING = "QEMU guest agent is not running"
# Interfaces a VM grows once Docker or a hypervisor runs on it: their addresses are not the VM's.
VIRTUAL_IFACES = ("docker", "br-", "veth", "virbr", "cni", "flannel", "cali", "tailscale", "zt")

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


class GuestAgent:
    """Reads addresses and host keys of the lab's VMs through their guest agents; stops when ``cancel`` is set."""

    def __init__(self, api: PveApi, lab: Lab, cancel: threading.Event, step: Step):
        self.api = api
        self.lab = lab
        self.cancel = cancel
        self.step = step

    def learn(
        self, vm: str, node: str, vmid: int, booted: bool, address: str | None, known: Host | None
    ) -> tuple[str | None, str | None]:
        """The VM's (address, host key) for the later stages: ``address`` is what apply saw already, ``known``
        what the last apply recorded; ``booted``: something (re)started the VM since."""
        if not booted and known is not None and known.host_key and address in (None, known.address):
            # Nothing restarted the VM: what the last apply learned still holds, at no API cost.
            return known.address, known.host_key
        if address is None:
            address = self.wait_address(vm, node, vmid, quick=True)
        if address is None:
            return None, None
        return address, self.read_host_key(vm, node, vmid)

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

    def wait_address(
        self, vm: str, node: str, vmid: int, quick: bool = False, template: TemplateVersion | None = None
    ) -> str | None:
        """Poll the guest agent until it reports an address (skipping lo and link-local); ``quick``: give up
        after 5 seconds with None instead of failing after the lab's agent timeout.

        ``template``: the version the VM was just cloned from. One homelab built without the guest agent (no
        guest-agent tag: built before homelab baked the agent in) fails at the first "not running" answer,
        naming the missing agent, instead of after the lab's agent timeout."""
        self.step(vm, "waiting for the guest agent")
        agentless = template is not None and template.built_by_homelab and AGENT_TAG not in template.tags
        last = ""
        timeouts = self.lab.settings.timeouts
        want = next((v.ip for v in self.lab.vms if v.name == vm and v.ip != "dhcp"), None)
        deadline = time.monotonic() + (5 if quick else timeouts.agent)
        delay = 0.05
        while True:
            if self.cancel.is_set():
                raise Interrupted("interrupted")
            try:
                answer = self.api.get_once(f"/nodes/{node}/qemu/{vmid}/agent/network-get-interfaces")
                address = first_address(answer.get("result", []), want, self.lab.network.subnet)
                if address:
                    return address
            except ProxmoxError as exc:
                if NOT_RUNNING in str(exc) and agentless and template is not None:
                    raise OperationError(
                        f"{vm}: no guest agent runs in it: its template {template.name} was built without "
                        f"qemu-guest-agent (it lacks the {AGENT_TAG} tag); build a new version with `homelab "
                        f"template build {template.template}`, which installs it"
                    ) from None
                if not exc.transient:
                    raise
                last = str(exc)
            if time.monotonic() >= deadline:
                if quick:
                    return None
                said = f" (Proxmox: {NOT_RUNNING})" if NOT_RUNNING in last else ""
                raise OperationTimeout(
                    f"{vm}: the guest agent reported no address within {timeouts.agent}s{said}: "
                    "is qemu-guest-agent installed in the template?"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 3.0)
