"""The guests of the cluster, as /cluster/resources lists them: the one parser of that answer."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.marks import split_tags


@dataclass(frozen=True)
class Guest:
    """One VM or container of the cluster (``kind`` qemu or lxc; ``template`` for a template)."""

    vmid: int
    node: str
    name: str
    template: bool = False
    tags: tuple[str, ...] = ()
    kind: str = "qemu"
    status: str = "unknown"
    lock: str | None = None

    @property
    def is_vm(self) -> bool:
        """A QEMU VM that is not a template."""
        return self.kind == "qemu" and not self.template


def parse_guests(resources: Iterable[dict[str, Any]] | None) -> tuple[Guest, ...]:
    """The guests in an answer of ``GET /cluster/resources?type=vm`` (entries without a vmid are skipped)."""
    return tuple(
        Guest(
            vmid=int(item["vmid"]),
            node=str(item.get("node", "")),
            name=str(item.get("name") or ""),
            template=bool(int(item.get("template") or 0)),
            tags=split_tags(item.get("tags")),
            kind=str(item.get("type") or "qemu"),
            status=str(item.get("status", "unknown")),
            lock=item.get("lock") or None,
        )
        for item in resources or []
        if "vmid" in item
    )


def list_guests(api: PveApi) -> tuple[Guest, ...]:
    """Every VM and container of the cluster (one GET)."""
    return parse_guests(api.get("/cluster/resources", type="vm"))
