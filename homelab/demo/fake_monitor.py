"""The fake's address monitor: records every moment two running VMs share a static address or a MAC address.

On a real network two guests with one static IP answer ARP for it in turn: connections break, SSH host keys
"change", and whichever answers last wins. homelab promises that never happens (one static address, one running
VM, through every path of a replacement: success, failure, Ctrl-C, SIGKILL). The monitor checks that promise
where it can be broken: a VM only starts or stops inside a task (start, stop, reboot, shutdown, delete,
migrate...), and the fake runs one event loop, so checking the running VMs after every task body finds every
overlap, however short. Two running VMs with one MAC address break the same way one layer down (switches and
ARP caches flip between them), so a shared MAC is an overlap too. Each new overlap is recorded once (address
or MAC, vmids, the task after which it began); the tests read the record over the control socket
(``monitor_overlaps``) and clear it (``monitor_clear``).
"""

from __future__ import annotations

import re
import time
from typing import Any

STATIC_IP = re.compile(r"(?:^|,)ip=([0-9.]+)/")
MAC = re.compile(r"^[a-z0-9]+=([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5})(?:,|$)")


def static_address(config: dict[str, Any]) -> str | None:
    """The static IPv4 address of a VM's first cloud-init interface (``ipconfig0: ip=A/N,...``); None for DHCP."""
    match = STATIC_IP.search(str(config.get("ipconfig0", "")))
    return match.group(1) if match else None


def mac_addresses(config: dict[str, Any]) -> list[str]:
    """The MAC addresses of a VM's network devices (``net0: virtio=BC:24:11:..,bridge=vmbr0``), lower case."""
    found = (MAC.match(str(value)) for key, value in config.items() if re.fullmatch(r"net\d+", key))
    return [match.group(1).lower() for match in found if match]


class IpMonitor:
    """Mixin of the fake's FakePve (first in its bases): checks the running VMs' static addresses after each
    task and records each overlap as it begins."""

    vms: list[Any]
    _monitor_overlaps: list[dict[str, Any]]
    _monitor_current: set[tuple[str, tuple[int, ...]]]

    async def task(self, node: str, ttype: str, tid: Any, user: str, body: Any, **options: Any) -> Any:
        async def watched() -> Any:
            try:
                return await body()
            finally:
                self.check_addresses(f"{ttype} of {tid}")

        parent: Any = super()
        return await parent.task(node, ttype, tid, user, watched, **options)

    def check_addresses(self, after: str) -> None:
        """Record each pair (or more) of running VMs with one static address or MAC that was not there before."""
        if not hasattr(self, "_monitor_overlaps"):
            self._monitor_overlaps, self._monitor_current = [], set()
        running: dict[str, list[int]] = {}
        for vm in list(self.vms):
            if vm.template or vm.status != "running":
                continue
            for address in [static_address(vm.config), *mac_addresses(vm.config)]:
                if address:
                    running.setdefault(address, []).append(int(vm.vmid))
        now = {(address, tuple(sorted(ids))) for address, ids in running.items() if len(ids) > 1}
        for address, ids in sorted(now - self._monitor_current):
            self._monitor_overlaps.append(
                {"address": address, "vmids": list(ids), "after": after, "at": round(time.time(), 3)}
            )
        self._monitor_current = now

    def monitor_op(self, op: str, msg: dict[str, Any]) -> Any:
        """Control-socket operations: ``monitor_overlaps`` (every overlap recorded), ``monitor_clear``."""
        if not hasattr(self, "_monitor_overlaps"):
            self._monitor_overlaps, self._monitor_current = [], set()
        if op == "monitor_overlaps":
            return list(self._monitor_overlaps)
        if op == "monitor_clear":
            self._monitor_overlaps.clear()
            return None
        raise ValueError(f"unknown op {op!r}")
