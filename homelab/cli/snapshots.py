"""`homelab snapshot [VM...]` and `homelab rollback VM`: VM snapshots through Proxmox."""

from __future__ import annotations

from typing import Any

import click

from homelab.cli.app import App, pass_app, yes_option
from homelab.cli.complete import complete_vm
from homelab.cli.locking import takes_lab_lock
from homelab.errors import InputError


def _live(app: App, names: tuple[str, ...]) -> dict[str, Any]:
    from homelab.provision.snapshotting import live_vms

    return live_vms(app.api, app.lab, names)


@click.command()
@yes_option
@click.option("--note", default="", help="A note kept with the snapshot (shown by rollback).")
@click.argument("vms", nargs=-1, shell_complete=complete_vm)
@pass_app
@takes_lab_lock
def snapshot(app: App, note: str, vms: tuple[str, ...]) -> None:
    """Snapshot the lab's VMs (all, or those named): disks, data disk included, no RAM.

    homelab keeps settings.snapshots_keep of its own snapshots per VM and deletes older ones; snapshots made
    by hand are never pruned. A replacement deletes the old VM's snapshots (they would block moving its data
    disk, and go with the old VM anyway)."""
    from homelab.adapters.proxmox import snapshots as snaps
    from homelab.provision.snapshotting import take_and_prune

    live = _live(app, vms)
    name = snaps.new_name()
    for vm, item in sorted(live.items()):
        app.echo(f"snapshot {vm} ({item.vmid}) as {name}")
    app.confirm(f"Snapshot {len(live)} VM(s)?")
    take_and_prune(app.api, app.lab, live, name, note or "taken by homelab snapshot", app.echo)


@click.command()
@yes_option
@click.option("--snapshot", "name", help="The snapshot (default: the newest one homelab took).")
@click.argument("vm", shell_complete=complete_vm)
@pass_app
@takes_lab_lock
def rollback(app: App, name: str | None, vm: str) -> None:
    """Return a VM to a snapshot. Everything written since, on every disk of the VM, is lost."""
    from homelab.adapters.proxmox import snapshots as snaps

    item = _live(app, (vm,))[vm]
    found = snaps.snapshots(app.api, item.node, item.vmid)
    if name is None:
        ours = [s for s in found if s.ours]
        if not ours:
            listed = ", ".join(s.name for s in found) or "none"
            raise InputError(f"{vm} has no snapshot homelab took (its snapshots: {listed}); name one with --snapshot")
        chosen = ours[-1]
    else:
        chosen = next((s for s in found if s.name == name), None)  # type: ignore[assignment]
        if chosen is None:
            listed = ", ".join(s.name for s in found) or "none"
            raise InputError(f"{vm} has no snapshot {name} (its snapshots: {listed})")
    note = f" ({chosen.description})" if chosen.description else ""
    app.echo(f"roll {vm} ({item.vmid}) back to {chosen.name}{note}; what changed on its disks since is lost")
    app.confirm(f"Roll {vm} back to {chosen.name}?")
    running = item.status == "running"
    snaps.rollback(app.api, item.node, item.vmid, chosen.name, app.lab.settings.timeouts.task, start=running)
    app.echo(f"{vm} is back at {chosen.name}" + (" and running" if running else ""))
