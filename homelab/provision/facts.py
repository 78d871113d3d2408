"""Live facts about the cluster, gathered once, read-only, before planning."""

from __future__ import annotations

import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.cluster import ClusterFacts, gather_cluster
from homelab.adapters.proxmox.guests import Guest
from homelab.adapters.proxmox.marks import TEMPLATE_TAG, parse_mark, split_tags
from homelab.adapters.proxmox.versions import TemplateVersion
from homelab.lab.models import Lab
from homelab.lab.types import drive_size
from homelab.state.adminkey import read_admin_public

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

    def setting(self, key: str) -> str | None:
        """A config value as text, with sshkeys URL-decoded."""
        value = self.config.get(key)
        if value is None:
            return None
        text = str(value)
        return urllib.parse.unquote(text) if key == "sshkeys" else text


@dataclass(frozen=True, kw_only=True)
class Facts(ClusterFacts):
    """Everything the VM planner needs to know: the cluster's facts, plus the configs of the VMs that may be
    this lab's and the template versions its VMs may be cloned from."""

    managed: tuple[LiveVm, ...]
    # VMs named like a lab VM but not marked as this lab's: never touched.
    unmanaged_namesakes: tuple[LiveVm, ...]
    # per lab template, the versions VMs may be cloned from (usable_version), oldest first
    templates: dict[str, tuple[TemplateVersion, ...]]
    # homelab's own login key (a local fact): cloud-init puts it on every VM beside access.ssh_keys.
    admin_key: str | None = None


def gather(api: PveApi, lab: Lab, workers: int = 8, cluster: ClusterFacts | None = None) -> Facts:
    """The cluster's facts (or those just gathered, ``cluster``), then the configs of the VMs that may be this
    lab's, in parallel."""
    cluster = cluster or gather_cluster(api)
    tag = lab.tag
    names = {vm.name for vm in lab.vms}
    templates = {
        t.name: tuple(v for v in cluster.versions_of(t.name) if usable_version(v, lab, t.version))
        for t in lab.templates
    }
    candidates = [g for g in cluster.guests if g.is_vm and (tag in g.tags or g.name in names)]

    def read(guest: Guest) -> LiveVm:
        config = api.get(f"/nodes/{guest.node}/qemu/{guest.vmid}/config")
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

    with ThreadPoolExecutor(max_workers=workers) as pool:
        live = list(pool.map(read, candidates))
    managed, namesakes = [], []
    for vm in live:
        # The description mark decides (the clone call writes it, so even a half-made VM has it). A tag
        # alone is not enough: tags are free-form, and another lab or a person may have set this one.
        if (vm.meta or {}).get("lab") == lab.name:
            managed.append(vm)
        else:
            namesakes.append(vm)
    return Facts(
        guests=cluster.guests,
        used_vmids=cluster.used_vmids,
        managed=tuple(sorted(managed, key=lambda v: v.vmid)),
        unmanaged_namesakes=tuple(namesakes),
        templates=templates,
        admin_key=read_admin_public(lab),
    )


def usable_version(version: TemplateVersion, lab: Lab, pinned: str | None) -> bool:
    """A version VMs may be cloned from: built by homelab (tagged homelab-template) for this lab or for no lab
    in particular, never another lab's build; an explicitly pinned version is the user's choice."""
    if pinned and version.version == pinned:
        return True
    if TEMPLATE_TAG not in version.tags:
        return False
    other_labs = [t for t in version.tags if t.startswith("homelab-") and t not in (TEMPLATE_TAG, lab.tag)]
    return not other_labs
