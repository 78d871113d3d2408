"""`homelab up`: the whole lab from the file, stage by stage, each showing what it will do first."""

from __future__ import annotations

import click

from homelab import ui
from homelab.lab import find_lab_path, load_lab


def echo_stage(number: int, total: int, title: str) -> None:
    click.secho(f"\n==> [{number}/{total}] {title}", bold=True)


@click.command()
@click.option("--yes", "-y", is_flag=True, help="Do not ask before changing things.")
@click.option("--concurrency", type=click.IntRange(1, 64), help="VMs worked on at once (default: settings).")
@click.option("--no-deploy", is_flag=True, help="Stop after the deploy key: do not deploy Docker and the stacks.")
@click.pass_context
def up(ctx: click.Context, yes: bool, concurrency: int | None, no_deploy: bool) -> None:
    """Bring the lab up: bake missing templates, create/update the VMs, install the deploy key, deploy the stacks.

    Re-running it is safe: each stage plans first and does only what is missing.
    """
    from homelab.pipeline import up as run_up
    from homelab.proxmox.api import connect

    lab = load_lab(find_lab_path(ctx.obj.get("lab_path")))
    run_up(
        connect(lab),
        lab,
        click.echo,
        lambda question: ui.confirm(question, yes),
        ui.LineReporter(),
        concurrency,
        echo_stage,
        deploy=not no_deploy,
    )
