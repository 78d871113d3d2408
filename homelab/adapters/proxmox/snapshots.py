"""VM snapshots through Proxmox: the ones homelab takes are named ``homelab_<UTC time>`` and are the only ones
it ever prunes; a person's snapshots are listed, used for rollback when named, never deleted by a prune."""

from __future__ import annotations

import time
from dataclasses import dataclass

from homelab.adapters.proxmox.api import PveApi

PREFIX = "homelab_"


@dataclass(frozen=True)
class Snapshot:
    """One snapshot of a VM."""

    name: str
    taken: int
    description: str

    @property
    def ours(self) -> bool:
        """Whether homelab took it (and may prune it)."""
        return self.name.startswith(PREFIX)


def snapshots(api: PveApi, node: str, vmid: int) -> list[Snapshot]:
    """A VM's snapshots, oldest first (PVE's 'current' entry left out)."""
    found = [
        Snapshot(str(s["name"]), int(s.get("snaptime") or 0), str(s.get("description") or "").strip())
        for s in api.get(f"/nodes/{node}/qemu/{vmid}/snapshot") or []
        if s.get("name") != "current"
    ]
    return sorted(found, key=lambda s: (s.taken, s.name))


def new_name(now: float | None = None) -> str:
    """The name of a snapshot homelab takes now."""
    return PREFIX + time.strftime("%Y%m%d_%H%M%S", time.gmtime(now if now is not None else time.time()))


def take(api: PveApi, node: str, vmid: int, name: str, note: str, timeout: float) -> None:
    """Snapshot the VM (disks only, no RAM state) and wait."""
    api.run_task(
        "POST",
        f"/nodes/{node}/qemu/{vmid}/snapshot",
        node,
        timeout,
        f"snapshot {name} of VM {vmid}",
        snapname=name,
        description=note,
    )


def delete(api: PveApi, node: str, vmid: int, name: str, timeout: float) -> None:
    """Delete one snapshot and wait."""
    api.run_task(
        "DELETE", f"/nodes/{node}/qemu/{vmid}/snapshot/{name}", node, timeout, f"deleting snapshot {name} of {vmid}"
    )


def rollback(api: PveApi, node: str, vmid: int, name: str, timeout: float, start: bool) -> None:
    """Return the VM to the snapshot (what changed since is lost); ``start``: running again afterwards."""
    api.run_task(
        "POST",
        f"/nodes/{node}/qemu/{vmid}/snapshot/{name}/rollback",
        node,
        timeout,
        f"rollback of VM {vmid} to {name}",
        **({"start": 1} if start else {}),
    )


def to_prune(found: list[Snapshot], keep: int) -> list[Snapshot]:
    """homelab's own snapshots beyond the newest ``keep``."""
    ours = [s for s in found if s.ours]
    return ours[: max(0, len(ours) - keep)]
