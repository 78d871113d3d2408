"""Data disks: the one disk of a lab VM that holds what users would miss, and that outlives the VM.

A data disk is the drive whose ``serial`` is ``homelab-data`` (the guest finds it as
``/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_homelab-data``, whatever slot it sits in). It never goes with the VM:

- a replacement stops the old VM and *reassigns* the volume to the new one (PVE's ``move_disk`` with
  ``target-vmid``, PVE 7.2+: a rename of the volume, no copy);
- ``destroy`` parks it on the lab's keeper, a VM that is never started and has no boot disk, as an ``unusedN``
  entry recorded in the keeper's mark, and a later apply that recreates the VM takes it back;
- :func:`homelab.adapters.proxmox.vms.delete_vm` refuses to delete a VM that holds one unless told to purge data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.marks import lab_tag, mark_line, parse_mark

SERIAL = "homelab-data"
# The slot a data disk takes on a VM homelab makes (scsi0 is the boot disk, ide2 the cloud-init drive).
DATA_KEY = "scsi1"
KEEPER_ROLE = "keeper"
DRIVE_KEY = re.compile(r"^(scsi|virtio|sata|ide)\d+$")


@dataclass(frozen=True)
class DataDisk:
    """Where a VM's data disk is: its config key and volume, and its size in bytes (None: not recorded)."""

    key: str
    volume: str
    size: int | None


def data_disk_of(config: Mapping[str, Any]) -> DataDisk | None:
    """The VM's data disk (the drive with serial homelab-data), or None."""
    from homelab.lab.types import drive_size

    for key in sorted(config):
        if not DRIVE_KEY.match(key):
            continue
        value = str(config[key])
        fields = dict(part.split("=", 1) for part in value.split(",")[1:] if "=" in part)
        if fields.get("serial") == SERIAL:
            return DataDisk(key, value.split(",", 1)[0], drive_size(value))
    return None


def new_drive(storage: str, size: int) -> str:
    """The config value that makes PVE allocate a new data disk of ``size`` bytes (PVE takes whole GiB)."""
    return f"{storage}:{max(1, math.ceil(size / 1024**3))},serial={SERIAL},discard=on"


def attached_drive(volume: str) -> str:
    """The config value of an existing volume attached as the data disk."""
    return f"{volume},serial={SERIAL},discard=on"


def move_disk(api: PveApi, node: str, vmid: int, key: str, target_vmid: int, target_key: str, timeout: float) -> None:
    """Reassign the volume at ``key`` of VM ``vmid`` to VM ``target_vmid`` as ``target_key`` (both on ``node``,
    the source stopped unless ``key`` is an unusedN entry) and wait for the task."""
    api.run_task(
        "POST",
        f"/nodes/{node}/qemu/{vmid}/move_disk",
        node,
        timeout,
        f"moving the data disk from VM {vmid} to VM {target_vmid}",
        disk=key,
        **{"target-vmid": target_vmid, "target-disk": target_key},
    )


# ------------------------------------------------------------------ the keeper


def keeper_name(lab_name: str) -> str:
    """The keeper VM's name."""
    return f"{lab_name}-kept-data"


def is_keeper(meta: Mapping[str, Any] | None) -> bool:
    """Whether a parsed mark is a keeper's."""
    return bool(meta) and (meta or {}).get("role") == KEEPER_ROLE


def keeper_description(lab_name: str, disks: Mapping[str, str]) -> str:
    """The keeper's description: a line for people, then its mark (``disks``: unusedN -> lab VM name)."""
    record = {"lab": lab_name, "role": KEEPER_ROLE, "disks": dict(sorted(disks.items()))}
    return (
        f"Data disks of lab {lab_name}'s destroyed VMs, kept by homelab; `homelab apply` gives each back to its VM, "
        f"`homelab destroy --purge-data` deletes them. Never started.\n" + mark_line(record, compact=True)
    )


def kept_disks(config: Mapping[str, Any]) -> dict[str, str]:
    """unusedN -> lab VM name, for the disks a keeper holds (entries whose volume is gone are left out)."""
    record = parse_mark(config.get("description")) or {}
    disks = record.get("disks") or {}
    return {key: str(vm) for key, vm in disks.items() if key in config}


def create_keeper(api: PveApi, lab_name: str, node: str, vmid: int, timeout: float) -> None:
    """Create the keeper on ``node``: no disks, no network, never started, marked as the lab's."""
    api.run_task(
        "POST",
        f"/nodes/{node}/qemu",
        node,
        timeout,
        f"creating VM {vmid} to keep data disks",
        vmid=vmid,
        name=keeper_name(lab_name),
        memory=64,
        tags=lab_tag(lab_name),
        description=keeper_description(lab_name, {}),
    )


def free_unused_key(config: Mapping[str, Any]) -> str:
    """The first unusedN slot free in a config."""
    n = 0
    while f"unused{n}" in config:
        n += 1
    return f"unused{n}"
