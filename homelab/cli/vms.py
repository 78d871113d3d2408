"""`homelab plan`, `apply`, `destroy`, `status`: thin commands over homelab.provision.service."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from homelab import ui
from homelab.errors import OperationError
from homelab.lab import find_lab_path, load_lab
from homelab.lab.models import Lab

if TYPE_CHECKING:
    from homelab.provision.executor import ApplyResult
    from homelab.provision.service import Planned

EXIT_CHANGES = 3


def _lab(ctx: click.Context) -> Lab:
    return load_lab(find_lab_path(ctx.obj.get("lab_path")))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--prune", is_flag=True, help="Plan removing VMs marked as this lab's that the file no longer has.")
@click.option("--no-replace", is_flag=True, help="Report VMs that need replacing as blocked.")
@click.pass_context
def plan(ctx: click.Context, as_json: bool, prune: bool, no_replace: bool) -> None:
    """Show what apply would do. Exit 0 when nothing would change, 3 when something would."""
    from homelab.provision.plan import PlanOptions
    from homelab.provision.service import make_plan

    planned = make_plan(_lab(ctx), PlanOptions(prune=prune, replace=not no_replace))
    if as_json:
        ui.echo_json(planned.plan.as_dict())
    else:
        ui.render_plan(planned.plan)
    if planned.plan.changes or planned.plan.blocked:
        sys.exit(EXIT_CHANGES)


@click.command()
@click.option("--yes", "-y", is_flag=True, help="Do not ask; apply the plan as shown.")
@click.option("--prune", is_flag=True, help="Also remove VMs marked as this lab's that the file no longer has.")
@click.option("--no-replace", is_flag=True, help="Refuse instead of replacing VMs.")
@click.option("--concurrency", type=click.IntRange(1, 64), help="VMs worked on at once (default: settings).")
@click.pass_context
def apply(ctx: click.Context, yes: bool, prune: bool, no_replace: bool, concurrency: int | None) -> None:
    """Make Proxmox match the lab file: show the plan, ask once, carry it out, summarise."""
    from homelab.provision.plan import PlanOptions
    from homelab.provision.service import make_plan
    from homelab.state.adminkey import ensure_admin_key

    lab = _lab(ctx)
    ensure_admin_key(lab)  # homelab's own login key goes onto the VMs with cloud-init
    planned = make_plan(lab, PlanOptions(prune=prune, replace=not no_replace))
    ui.render_plan(planned.plan)
    if planned.plan.blocked:
        raise OperationError("the plan has blocked steps (see '!' lines); nothing was changed")
    if not planned.plan.changes:
        click.echo("Nothing to change.")
    else:
        ui.confirm(f"Apply {len(planned.plan.changes)} change(s) to {lab.proxmox.url}?", yes)
    result = _run(planned, concurrency)
    ui.render_apply(result)
    if not result.ok:
        raise OperationError("some VMs failed (see above); run `homelab apply` again to finish them")


def _run(planned: Planned, concurrency: int | None) -> ApplyResult:
    from homelab.provision.service import carry_out

    names = list(planned.plan.by_vm())
    if sys.stderr.isatty():
        with ui.LiveReporter(names) as live:
            return carry_out(planned, live, concurrency)
    return carry_out(planned, ui.LineReporter(), concurrency)


@click.command()
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
@click.pass_context
def destroy(ctx: click.Context, yes: bool) -> None:
    """Remove the VMs this lab manages (and only those: unmarked VMs are never touched)."""
    from homelab.provision.service import make_destroy_plan

    lab = _lab(ctx)
    planned = make_destroy_plan(lab)
    ui.render_plan(planned.plan)
    if not planned.plan.changes:
        click.echo("Nothing to destroy.")
        return
    ui.confirm(f"Destroy {len(planned.plan.changes)} VM(s) of lab {lab.name}? This deletes their disks.", yes)
    result = _run(planned, None)
    ui.render_apply(result)
    if not result.ok:
        raise OperationError("some VMs could not be removed (see above)")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Each VM: state on Proxmox, address, template version, whether it matches the file."""
    from dataclasses import asdict

    from homelab.provision.service import status as get_status

    rows = get_status(_lab(ctx))
    if as_json:
        ui.echo_json([asdict(r) for r in rows])
        return
    click.echo(f"{'VM':<16} {'VMID':>6} {'STATE':<9} {'ADDRESS':<16} {'VERSION':<13} MATCHES")
    for r in rows:
        click.echo(
            f"{r.name:<16} {r.vmid or '-':>6} {r.state:<9} {r.address or '-':<16} {r.version or '-':<13} "
            f"{'yes' if r.matches else 'no: ' + r.note}"
        )
