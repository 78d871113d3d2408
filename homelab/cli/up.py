"""`homelab up`: the whole lab from the file, stage by stage, each showing what it will do first."""

from __future__ import annotations

import click

from homelab.cli.app import App, pass_app, yes_option
from homelab.cli.locking import takes_lab_lock
from homelab.cli.vms import new_admin_key_option


def echo_stage(number: int, total: int, title: str) -> None:
    click.secho(f"\n==> [{number}/{total}] {title}", bold=True)


@click.command()
@yes_option
@click.option("--concurrency", type=click.IntRange(1, 64), help="Disk tasks at once per node (default: settings).")
@click.option("--no-deploy", is_flag=True, help="Stop after the deploy key: do not deploy Docker and the stacks.")
@new_admin_key_option
@pass_app
@takes_lab_lock
def up(app: App, concurrency: int | None, no_deploy: bool, new_admin_key: bool) -> None:
    """Bring the lab up: bake missing templates, create/update the VMs, install the deploy key, deploy the stacks.

    Re-running it is safe: each stage plans first and does only what is missing.
    """
    from homelab.pipeline import up as run_up

    app.preflight("vms", "build", templates="unbuilt")  # a download is checked only when a version is missing
    app.run_stage(run_up, concurrency, stage=echo_stage, deploy=not no_deploy, new_admin_key=new_admin_key)
