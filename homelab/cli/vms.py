"""`homelab plan`, `apply`, `destroy`, `status`: thin commands over homelab.pipeline and homelab.provision."""

from __future__ import annotations

import sys

import click

from homelab import ui
from homelab.cli.app import EXIT_CHANGES, App, pass_app, yes_option
from homelab.cli.locking import takes_lab_lock

new_admin_key_option = click.option(
    "--new-admin-key",
    is_flag=True,
    help="When homelab's admin key is lost here, make a new one and put it on the VMs (rebooting them).",
)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--prune", is_flag=True, help="Plan removing VMs marked as this lab's that the file no longer has.")
@click.option("--no-replace", is_flag=True, help="Report VMs that need replacing as blocked.")
@pass_app
def plan(app: App, as_json: bool, prune: bool, no_replace: bool) -> None:
    """Show what apply would do. Exit 0 when nothing would change, 3 when something would."""
    from homelab.provision.backupjob import job_change
    from homelab.provision.localstate import local_state_notes, lost_admin_key
    from homelab.provision.plan import PlanOptions
    from homelab.provision.service import make_plan

    planned = make_plan(app.lab, PlanOptions(prune=prune, replace=not no_replace), api=app.api)
    notes = local_state_notes(app.lab, planned.facts)
    lost = lost_admin_key(app.lab, planned.facts)
    job = job_change(app.api, app.lab, planned.lab_vmids())
    pending_job = job is not None and job.difference is not None
    if as_json:
        data = dict(planned.plan.as_dict(), local_state=notes)
        if job is not None:
            data["backup_job"] = job.difference
        ui.echo_json(data)
    else:
        ui.render_plan(planned.plan)
        for note in notes:
            click.secho(f"  ! {note}", fg="yellow")
        if job is not None and job.difference:
            app.echo(job.describe(app.lab))
        if app.lab.engine == "terraform" and planned.plan.changes:
            app.echo(
                "engine: terraform: these are Terraform's to make (homelab export terraform DIR, then terraform apply)"
            )
    if planned.plan.changes or planned.plan.blocked or lost or pending_job:
        sys.exit(EXIT_CHANGES)


@click.command()
@yes_option
@click.option("--prune", is_flag=True, help="Also remove VMs marked as this lab's that the file no longer has.")
@click.option("--no-replace", is_flag=True, help="Refuse instead of replacing VMs.")
@click.option("--concurrency", type=click.IntRange(1, 64), help="Disk tasks at once per node (default: settings).")
@new_admin_key_option
@pass_app
@takes_lab_lock
def apply(app: App, prune: bool, no_replace: bool, concurrency: int | None, new_admin_key: bool) -> None:
    """Make Proxmox match the lab file: show the plan, ask once, carry it out, summarise."""
    from homelab.adapters.sshkeys import ensure_admin_key
    from homelab.pipeline import converge_vms
    from homelab.provision.localstate import check_admin_key
    from homelab.provision.plan import PlanOptions

    app.preflight("vms")
    check_admin_key(app.api, app.lab, allow_new=new_admin_key)
    ensure_admin_key(app.lab)  # homelab's own login key goes onto the VMs with cloud-init
    app.run_stage(
        converge_vms, concurrency, options=PlanOptions(prune=prune, replace=not no_replace), again="homelab apply"
    )


@click.command()
@yes_option
@click.option(
    "--purge-data",
    is_flag=True,
    help="Also delete the VMs' data disks (and those kept from earlier destroys). Without it they are kept.",
)
@pass_app
@takes_lab_lock
def destroy(app: App, purge_data: bool) -> None:
    """Remove the VMs this lab manages (and only those: unmarked VMs are never touched).

    Data disks are kept on the lab's keeper VM and given back when `homelab apply` recreates their VM."""
    from homelab.pipeline import destroy_vms

    app.run_stage(destroy_vms, None, purge_data=purge_data)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def status(app: App, as_json: bool) -> None:
    """Each VM: state on Proxmox, address, template version, whether it matches the file."""
    from homelab.provision.service import status as get_status

    ui.render_status(get_status(app.lab, api=app.api), as_json)
