"""Live facts about the cluster, gathered once, read-only, before planning."""

from __future__ import annotations

import re
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from homelab.adminkey import read_admin_public
from homelab.lab.models import Lab
from homelab.provision.meta import parse_meta
from homelab.proxmox.api import PveApi

DISK_KEYS = ("scsi0", "virtio0", "sata0", "ide0")
_VERSION = re.compile(r"^(?P<name>.+)-(?P<version>\d{12})$")


@dataclass(frozen=True)
class TemplateVersion:
    """One baked version of a lab template, as found on Proxmox."""

    template: str
    version: str
    vmid: int
    node: str

    @property
    def name(self) -> str:
        return f"{self.template}-{self.version}"


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
        for key in DISK_KEYS:
            value = str(self.config.get(key, ""))
            if value and "media=cdrom" not in value and "cloudinit" not in value:
                return key
        return None

    @property
    def disk_size(self) -> int | None:
        """The boot disk's size in bytes."""
        key = self.disk_key
        if key is None:
            return None
        match = re.search(r"(?:^|,)size=(\d+(?:\.\d+)?)([KMGT]?)", str(self.config[key]))
        if not match:
            return None
        unit = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[match.group(2)]
        return int(float(match.group(1)) * unit)

    def setting(self, key: str) -> str | None:
        """A config value as text, with sshkeys URL-decoded."""
        value = self.config.get(key)
        if value is None:
            return None
        text = str(value)
        return urllib.parse.unquote(text) if key == "sshkeys" else text


@dataclass(frozen=True)
class Facts:
    """Everything the planner needs to know about the cluster."""

    managed: tuple[LiveVm, ...]
    # VMs named like a lab VM but not marked as this lab's: never touched.
    unmanaged_namesakes: tuple[LiveVm, ...]
    templates: dict[str, tuple[TemplateVersion, ...]]
    used_vmids: frozenset[int]
    nodes: tuple[str, ...] = ()
    # homelab's own login key (a local fact): cloud-init puts it on every VM beside access.ssh_keys.
    admin_key: str | None = None


def gather(api: PveApi, lab: Lab, workers: int = 8) -> Facts:
    """One cluster resources call, then the configs of the VMs that may be this lab's, in parallel."""
    resources = api.get("/cluster/resources", type="vm")
    tag = lab.tag
    names = {vm.name for vm in lab.vms}
    templates: dict[str, list[TemplateVersion]] = {t.name: [] for t in lab.templates}
    candidates: list[dict[str, Any]] = []
    used: set[int] = set()
    for res in resources:
        if res.get("type") != "qemu":
            used.add(int(res["vmid"]))
            continue
        used.add(int(res["vmid"]))
        if res.get("template"):
            match = _VERSION.match(str(res.get("name", "")))
            if match and match.group("name") in templates:
                templates[match.group("name")].append(
                    TemplateVersion(match.group("name"), match.group("version"), int(res["vmid"]), res["node"])
                )
            continue
        tags = _tags(res.get("tags"))
        if tag in tags or res.get("name") in names:
            candidates.append(res)

    def read(res: dict[str, Any]) -> LiveVm:
        config = api.get(f"/nodes/{res['node']}/qemu/{res['vmid']}/config")
        return LiveVm(
            vmid=int(res["vmid"]),
            name=str(res.get("name", "")),
            node=str(res["node"]),
            status=str(res.get("status", "unknown")),
            tags=_tags(config.get("tags", res.get("tags"))),
            config=config,
            meta=parse_meta(config.get("description")),
            lock=config.get("lock") or res.get("lock"),
        )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        live = list(pool.map(read, candidates))
    managed, namesakes = [], []
    for vm in live:
        meta = vm.meta or {}
        if tag in vm.tags or meta.get("lab") == lab.name:
            managed.append(vm)
        else:
            namesakes.append(vm)
    return Facts(
        managed=tuple(sorted(managed, key=lambda v: v.vmid)),
        unmanaged_namesakes=tuple(namesakes),
        templates={k: tuple(sorted(v, key=lambda t: t.version)) for k, v in templates.items()},
        used_vmids=frozenset(used),
        admin_key=read_admin_public(lab),
    )


def _tags(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(t for t in re.split(r"[;, ]+", str(value)) if t)
