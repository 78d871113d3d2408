"""The facts about the cluster that every stage shares, read once, typed and read-only."""

from __future__ import annotations

from dataclasses import dataclass, field

from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.guests import Guest, list_guests
from homelab.adapters.proxmox.versions import TemplateVersion, find_versions


@dataclass(frozen=True)
class ClusterFacts:
    """The cluster as /cluster/resources shows it: every guest, and the vmids taken (every guest's, and any
    other the caller knows to be taken). A stage's own facts extend this class with what only that stage reads,
    so both planners take one model of the cluster."""

    guests: tuple[Guest, ...] = ()
    used_vmids: frozenset[int] = field(default=frozenset(), kw_only=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "used_vmids", frozenset(self.used_vmids) | {g.vmid for g in self.guests})

    def versions_of(self, template: str) -> list[TemplateVersion]:
        """The versions of a template among the guests, oldest first."""
        return find_versions(self.guests, template)


def gather_cluster(api: PveApi) -> ClusterFacts:
    """The cluster's guests (one GET)."""
    return ClusterFacts(list_guests(api))
