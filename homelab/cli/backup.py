"""`homelab backup [VM...]`: back up the lab's VMs now with Proxmox's vzdump."""

from __future__ import annotations

import click

from homelab.cli.app import App, pass_app, yes_option
from homelab.cli.locking import takes_lab_lock
from homelab.errors import InputError


@click.command()
@yes_option
@click.argument("vms", nargs=-1)
@pass_app
@takes_lab_lock
def backup(app: App, vms: tuple[str, ...]) -> None:
    """Back up the lab's VMs (all, or those named) with vzdump to the lab's backup storage.

    The VMs keep running (mode snapshot, unless backup.mode says otherwise). For backups on a schedule set
    backup.schedule in the lab file: `homelab apply` then keeps a Proxmox backup job for the lab."""
    from homelab.adapters.proxmox.backups import backup_storage, run_vzdump
    from homelab.lab.types import format_size
    from homelab.provision.service import make_plan

    lab = app.lab
    unknown = sorted(set(vms) - {vm.name for vm in lab.vms})
    if unknown:
        raise InputError(
            f"not a VM of lab {lab.name}: {', '.join(unknown)} (it has {', '.join(v.name for v in lab.vms)})"
        )
    planned = make_plan(lab, api=app.api, gpus=False)
    wanted = set(vms) or {vm.name for vm in lab.vms}
    by_node: dict[str, list[tuple[str, int]]] = {}
    for live in planned.facts.managed:
        name = (live.meta or {}).get("vm") or live.name
        if not live.is_keeper and name in wanted:
            by_node.setdefault(live.node, []).append((name, live.vmid))
    missing = sorted(wanted - {name for group in by_node.values() for name, _ in group})
    if missing:
        app.echo(f"Not on Proxmox (nothing to back up): {', '.join(missing)}")
    if not by_node:
        raise InputError("no VM of the lab exists yet: nothing to back up (run `homelab apply` first)")
    storages = {node: backup_storage(app.api, lab, node) for node in by_node}
    for node, group in sorted(by_node.items()):
        listed = ", ".join(f"{name} ({vmid})" for name, vmid in sorted(group))
        app.echo(f"back up {listed} on {node} to {storages[node]} (vzdump, mode {lab.backup.mode})")
    app.confirm(f"Back up {sum(len(g) for g in by_node.values())} VM(s)?")
    timeout = max(lab.settings.timeouts.task, lab.settings.timeouts.clone)
    for node, group in sorted(by_node.items()):
        app.echo(f"backing up {len(group)} VM(s) on {node} ...")
        made = run_vzdump(app.api, lab, node, [vmid for _, vmid in group], storages[node], timeout)
        for item in made:
            app.echo(f"  {item.volid} ({format_size(item.size)})")
    app.echo("Backups done.")
