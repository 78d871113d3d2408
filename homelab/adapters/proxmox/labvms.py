"""The VMs that may be a lab's, read from Proxmox: each one's config, and whether its mark makes it the lab's.

The one reader of that question for every stage that needs it (the VM planner, the Terraform export): the
description's mark decides, never a tag or a name alone.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.datadisks import DataDisk, data_disk_of, is_keeper
from homelab.adapters.proxmox.guests import Guest
from homelab.adapters.proxmox.marks import parse_mark, split_tags
from homelab.lab.models import Lab
from homelab.lab.types import drive_size

DISK_KEYS = ("scsi0", "virtio0", "sata0", "ide0")


def boot_disk(config: dict[str, Any]) -> str | None:
    """The config key of a VM's boot disk (not a CD-ROM or cloud-init drive)."""
    for key in DISK_KEYS:
        value = str(config.get(key, ""))
        if value and "media=cdrom" not in value and "cloudinit" not in value:
            return key
    return None


@dataclass(frozen=True)
class LiveVm:
    """A VM as Proxmox reports it; ``config`` only for VMs homelab may manage."""

    vmid: int
    name: str
    node: str
    status: str
    tags: tuple[str, ...]
    config: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    meta: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    lock: str | None = None

    @property
    def disk_key(self) -> str | None:
        """The boot disk's config key."""
        return boot_disk(self.config)

    @property
    def disk_size(self) -> int | None:
        """The boot disk's size in bytes."""
        key = self.disk_key
        return None if key is None else drive_size(str(self.config[key]))

    @property
    def data_disk(self) -> DataDisk | None:
        """The VM's data disk, if it has one."""
        return data_disk_of(self.config)

    @property
    def is_keeper(self) -> bool:
        """Whether this is the lab's keeper of data disks (not a lab VM)."""
        return is_keeper(self.meta)

    def setting(self, key: str) -> str | None:
        """A config value as text, with sshkeys URL-decoded."""
        value = self.config.get(key)
        if value is None:
            return None
        text = str(value)
        return urllib.parse.unquote(text) if key == "sshkeys" else text


# The mark's states of a VM homelab has not finished: "creating" from the clone call until it is configured;
# "replacing" for a replacement's new VM until it came up (then "ready").
UNFINISHED = ("creating", "replacing")


def current_and_leftovers(lives: Iterable[LiveVm], wanted_version: str | None) -> tuple[LiveVm, list[LiveVm]]:
    """Of the VMs marked with one lab VM's name (several: an interrupted or failed replace), the one that is that
    VM and the others, left over. The one that last ran well wins: a finished VM before a replacement's new VM
    that never came up (or whose run was interrupted), then the wanted template version, then the highest vmid.
    ``lives`` must not be empty."""

    def rank(v: LiveVm) -> tuple[bool, bool, int]:
        meta = v.meta or {}
        return meta.get("state") not in UNFINISHED, meta.get("version") == wanted_version, v.vmid

    ordered = sorted(lives, key=rank)
    return ordered[-1], ordered[:-1]


def read_lab_vms(
    api: PveApi, lab: Lab, guests: Iterable[Guest], readers: int | Executor | None = None
) -> tuple[tuple[LiveVm, ...], tuple[LiveVm, ...]]:
    """The configs of the VMs that may be the lab's (tagged as the lab's, or named like a lab VM), one read each,
    ``readers`` at once (a number, default ``settings.api_readers``, or a pool the caller shares with its other
    reads); split into (marked as the lab's, by vmid; named like a lab VM but not marked as its)."""
    names = {vm.name for vm in lab.vms}
    candidates = [g for g in guests if g.is_vm and (lab.tag in g.tags or g.name in names)]

    def live(guest: Guest, config: dict[str, Any]) -> LiveVm:
        return LiveVm(
            vmid=guest.vmid,
            name=guest.name,
            node=guest.node,
            status=guest.status,
            tags=split_tags(config["tags"]) if "tags" in config else guest.tags,
            config=config,
            meta=parse_mark(config.get("description")),
            lock=config.get("lock") or guest.lock,
        )

    pool = readers if isinstance(readers, Executor) else None
    count = readers if isinstance(readers, int) else lab.settings.api_readers
    configs = api.get_many([f"/nodes/{g.node}/qemu/{g.vmid}/config" for g in candidates], count, pool)
    managed, namesakes = [], []
    for vm in map(live, candidates, configs):
        # The description mark decides (the clone call writes it, so even a half-made VM has it). A tag
        # alone is not enough: tags are free-form, and another lab or a person may have set this one.
        if (vm.meta or {}).get("lab") == lab.name:
            managed.append(vm)
        else:
            namesakes.append(vm)
    return tuple(sorted(managed, key=lambda v: v.vmid)), tuple(namesakes)
