"""The executor's data-disk steps: attach a new one, move one between VMs, park one on the keeper, take it back.

Every move is PVE's disk reassignment (a rename of the volume, no copy); see
:mod:`homelab.adapters.proxmox.datadisks`. Parking and taking back edit the keeper's mark, so they run one at a
time (a lock), even when many VMs' chains run in parallel.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.datadisks import (
    DATA_KEY,
    attached_drive,
    create_keeper,
    free_unused_key,
    is_keeper,
    keeper_description,
    keeper_name,
    kept_disks,
    move_disk,
    new_drive,
)
from homelab.adapters.proxmox.marks import parse_mark
from homelab.adapters.proxmox.snapshots import delete as delete_snapshot
from homelab.adapters.proxmox.snapshots import new_name as new_snapshot_name
from homelab.adapters.proxmox.snapshots import snapshots
from homelab.adapters.proxmox.snapshots import take as take_snapshot
from homelab.adapters.proxmox.vms import stop_vm
from homelab.lab.models import Lab
from homelab.lab.types import format_size

Step = Callable[[str, str], None]


class DataDisks:
    """Data-disk work for one apply or destroy."""

    def __init__(self, api: PveApi, lab: Lab, step: Step, new_vmid: Callable[[], int]):
        self.api = api
        self.lab = lab
        self.step = step
        self.new_vmid = new_vmid
        self.timeout = lab.settings.timeouts.task
        self._keeper_lock = threading.Lock()

    def _config(self, node: str, vmid: int) -> dict[str, Any]:
        return self.api.get(f"/nodes/{node}/qemu/{vmid}/config") or {}

    def _stopped(self, vm: str, node: str, vmid: int) -> None:
        if self.api.get(f"/nodes/{node}/qemu/{vmid}/status/current").get("status") == "running":
            self.step(vm, f"stopping {vmid}")
            stop_vm(self.api, node, vmid, self.timeout)

    def attach_new(self, vm: str, node: str, vmid: int, size: int) -> None:
        """Allocate a new, empty data disk for the VM."""
        self.step(vm, f"adding a {format_size(size)} data disk")
        self.api.put(f"/nodes/{node}/qemu/{vmid}/config", **{DATA_KEY: new_drive(self.lab.proxmox.storage, size)})

    def move(self, vm: str, node: str, from_vmid: int, from_key: str, to_vmid: int, to_key: str = DATA_KEY) -> None:
        """Move the data disk from one VM to another (the source is stopped first); the disk keeps its serial."""
        if not from_key.startswith("unused"):
            self._stopped(vm, node, from_vmid)
        self.step(vm, f"moving the data disk from {from_vmid} to {to_vmid}")
        move_disk(self.api, node, from_vmid, from_key, to_vmid, to_key, self.timeout)
        if from_key.startswith("unused") and not to_key.startswith("unused"):
            # an unusedN entry is a bare volume: give it its drive options (the serial) back
            volume = str(self._config(node, to_vmid)[to_key]).split(",", 1)[0]
            self.api.put(f"/nodes/{node}/qemu/{to_vmid}/config", **{to_key: attached_drive(volume)})

    def drop_snapshots(self, vm: str, node: str, vmid: int) -> None:
        """Delete a VM's snapshots (PVE will not move a disk a snapshot uses); newest first, as PVE needs."""
        for snap in reversed(snapshots(self.api, node, vmid)):
            self.step(vm, f"deleting snapshot {snap.name} of {vmid}")
            delete_snapshot(self.api, node, vmid, snap.name, self.timeout)

    def snapshot_first(self, vm: str, node: str, vmid: int, replaced: int) -> None:
        """Snapshot a new VM that just got its data disk, before its first start: what the data was when the
        old VM stopped, for `homelab rollback` if the new software damages it (pruned like any of ours)."""
        name = new_snapshot_name()
        self.step(vm, f"snapshot {name} of {vmid} with the data disk, before its first start")
        note = f"taken by homelab before the first start of {vmid}, which replaced {replaced}"
        take_snapshot(self.api, node, vmid, name, note, self.timeout)

    def adopt(self, vm: str, node: str, vmid: int, keeper: int, key: str) -> None:
        """Give a recreated VM the data disk the keeper kept for it."""
        with self._keeper_lock:
            self.move(vm, node, keeper, key, vmid)
            self._record(node, keeper, drop=key)

    def park(self, vm: str, node: str, vmid: int, key: str) -> None:
        """Move a VM's data disk to the lab's keeper on its node (made if there is none), recorded by VM name."""
        with self._keeper_lock:
            keeper = self._keeper(node)
            slot = free_unused_key(self._config(node, keeper))
            self.move(vm, node, vmid, key, keeper, slot)
            self._record(node, keeper, add=(slot, vm))

    def _record(self, node: str, keeper: int, add: tuple[str, str] | None = None, drop: str | None = None) -> None:
        disks = kept_disks(self._config(node, keeper))
        if add:
            disks[add[0]] = add[1]
        if drop:
            disks.pop(drop, None)
        self.api.put(f"/nodes/{node}/qemu/{keeper}/config", description=keeper_description(self.lab.name, disks))

    def _keeper(self, node: str) -> int:
        for guest in self.api.get("/cluster/resources", type="vm") or []:
            if guest.get("node") == node and guest.get("name") == keeper_name(self.lab.name):
                meta = parse_mark(self._config(node, int(guest["vmid"])).get("description"))
                if is_keeper(meta) and (meta or {}).get("lab") == self.lab.name:
                    return int(guest["vmid"])
        vmid = self.new_vmid()
        self.step(keeper_name(self.lab.name), f"creating VM {vmid} on {node} to keep data disks")
        create_keeper(self.api, self.lab.name, node, vmid, self.timeout)
        return vmid
