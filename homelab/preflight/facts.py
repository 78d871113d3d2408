"""What doctor reads, in one parallel round of GETs: the version, the token's permissions, the nodes, the
storages (cluster-wide and on the lab's node) and the node's bridges."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.guests import Guest, parse_guests
from homelab.adapters.proxmox.marks import split_tags
from homelab.adapters.proxmox.privileges import Version, parse_version
from homelab.adapters.proxmox.versions import find_versions
from homelab.errors import ProxmoxError
from homelab.interrupts import deferring_interrupts
from homelab.lab.models import Lab

# Storage types that keep files (and so can take the ``import`` content type).
FILE_STORAGES = frozenset({"dir", "nfs", "cifs", "cephfs", "btrfs", "glusterfs"})


@dataclass(frozen=True)
class Storage:
    """A storage as the lab's node shows it."""

    name: str
    type: str
    content: tuple[str, ...]
    shared: bool = False
    active: bool = True

    @property
    def file_based(self) -> bool:
        return self.type in FILE_STORAGES


@dataclass(frozen=True)
class AccessFacts:
    """The answers doctor checks; ``failed`` holds each read that failed, with PVE's message."""

    version_text: str = ""
    version: Version | None = None
    permissions: dict[str, dict[str, Any]] = field(default_factory=dict)
    nodes: dict[str, str] = field(default_factory=dict)  # name -> status
    storages: tuple[Storage, ...] = ()  # on the lab's node
    configured: frozenset[str] = frozenset()  # every storage /storage lists (the token may audit)
    bridges: tuple[str, ...] = ()  # on the lab's node, those the token may audit or use
    failed: dict[str, str] = field(default_factory=dict)
    guests: tuple[Guest, ...] | None = None  # read only when asked for

    def unbuilt(self, lab: Lab) -> list[str]:
        """The lab's templates with no version on Proxmox (or not the pinned one): what `up` would build."""
        versions = {t.name: find_versions(self.guests or (), t.name) for t in lab.templates}
        return [
            t.name
            for t in lab.templates
            if not versions[t.name] or (t.version and t.version not in {v.version for v in versions[t.name]})
        ]

    def storage(self, name: str) -> Storage | None:
        return next((s for s in self.storages if s.name == name), None)


def gather(api: PveApi, lab: Lab, guests: bool = False) -> AccessFacts:
    """Read everything doctor checks, the six GETs at once (and the cluster's guests with ``guests``)."""
    node = lab.proxmox.node
    reads: dict[str, tuple[str, dict[str, Any]]] = {
        "version": ("/version", {}),
        "permissions": ("/access/permissions", {}),
        "nodes": ("/nodes", {}),
        "storage": ("/storage", {}),
        "node storage": (f"/nodes/{node}/storage", {}),
        "network": (f"/nodes/{node}/network", {"type": "any_bridge"}),
    }
    if guests:
        reads["guests"] = ("/cluster/resources", {"type": "vm"})

    def read(item: tuple[str, tuple[str, dict[str, Any]]]) -> tuple[str, Any, str | None]:
        name, (path, params) = item
        try:
            return name, api.get(path, **params), None
        except ProxmoxError as exc:
            return name, None, str(exc)

    with ThreadPoolExecutor(max_workers=len(reads)) as pool, deferring_interrupts(api.cancel):
        answers = list(pool.map(read, reads.items()))
    got = {name: data for name, data, error in answers if error is None}
    failed = {name: error for name, _, error in answers if error is not None}
    version = got.get("version") or {}
    storages = tuple(
        Storage(
            name=str(item["storage"]),
            type=str(item.get("type") or ""),
            content=split_tags(str(item.get("content") or "").replace(",", ";")),
            shared=bool(int(item.get("shared") or 0)),
            active=bool(int(item.get("active", 1) or 0)) and bool(int(item.get("enabled", 1) or 0)),
        )
        for item in got.get("node storage") or []
        if "storage" in item
    )
    return AccessFacts(
        version_text=str(version.get("version") or ""),
        version=parse_version(version.get("version")),
        permissions=dict(got.get("permissions") or {}),
        nodes={str(n["node"]): str(n.get("status") or "unknown") for n in got.get("nodes") or [] if "node" in n},
        storages=storages,
        configured=frozenset(str(s["storage"]) for s in got.get("storage") or [] if "storage" in s),
        bridges=tuple(
            sorted(str(b["iface"]) for b in got.get("network") or [] if b.get("type") in ("bridge", "OVSBridge"))
        ),
        failed=failed,
        guests=parse_guests(got.get("guests")) if "guests" in got else None,
    )
