"""Snapshots of the lab's VMs by name: taken, then homelab's own beyond settings.snapshots_keep pruned.

Used by `homelab snapshot` and, with settings.snapshot_before_changes, before a deploy removes stacks from a
VM (:func:`removal_hook`, the one place that setting is read; the replacement's snapshot is a step of the
executor: :meth:`DataDisks.snapshot_first`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from homelab.adapters.proxmox import snapshots as snaps
from homelab.adapters.proxmox.api import PveApi
from homelab.errors import InputError
from homelab.lab.models import Lab
from homelab.provision.facts import LiveVm, gather


def live_vms(api: PveApi, lab: Lab, names: Sequence[str]) -> dict[str, LiveVm]:
    """Lab VM name -> its VM on Proxmox, for ``names`` (all the lab's when empty); unknown names refused."""
    unknown = sorted(set(names) - {vm.name for vm in lab.vms})
    if unknown:
        raise InputError(f"not a VM of lab {lab.name}: {', '.join(unknown)}")
    wanted = set(names) or {vm.name for vm in lab.vms}
    found = {}
    for live in gather(api, lab).managed:
        name = (live.meta or {}).get("vm") or live.name
        if name in wanted and not live.is_keeper:
            found[name] = live
    missing = sorted(wanted - set(found))
    if missing:
        raise InputError(f"not on Proxmox yet: {', '.join(missing)} (run `homelab apply` first)")
    return found


def take_and_prune(
    api: PveApi, lab: Lab, live: dict[str, LiveVm], name: str, note: str, echo: Callable[[str], None]
) -> None:
    """Snapshot each VM as ``name``, then prune homelab's own beyond the lab's retention."""
    timeout, keep = lab.settings.timeouts.task, lab.settings.snapshots_keep
    for vm, item in sorted(live.items()):
        snaps.take(api, item.node, item.vmid, name, note, timeout)
        for old in snaps.to_prune(snaps.snapshots(api, item.node, item.vmid), keep):
            snaps.delete(api, item.node, item.vmid, old.name, timeout)
            echo(f"{vm}: pruned {old.name} (settings.snapshots_keep: {keep})")
        echo(f"{vm}: {name} taken")


def before_removal(api: PveApi, lab: Lab, echo: Callable[[str], None]) -> Callable[[Sequence[str]], None]:
    """What a deploy calls before it takes stacks off VMs: a snapshot of each (data disk included)."""

    def snapshot(vms: Sequence[str]) -> None:
        name = snaps.new_name()
        echo(f"Snapshot before removing stacks ({', '.join(vms)}), as {name} (settings.snapshot_before_changes):")
        take_and_prune(api, lab, live_vms(api, lab, vms), name, "taken by homelab before removing stacks", echo)

    return snapshot


RemovalHook = Callable[[Sequence[str]], None]


def removal_hook(api: PveApi | Callable[[], PveApi], lab: Lab, echo: Callable[[str], None]) -> RemovalHook | None:
    """The deploy's ``before_removal`` for ``lab``: a snapshot of the VMs losing stacks when
    settings.snapshot_before_changes is on, else None. ``api`` may be a function that connects: it is called
    only when stacks are removed (a deploy that removes nothing never talks to Proxmox)."""
    if not lab.settings.snapshot_before_changes:
        return None

    def snapshot(vms: Sequence[str]) -> None:
        before_removal(api if isinstance(api, PveApi) else api(), lab, echo)(vms)

    return snapshot
