"""`homelab template build|list|prune|render`: thin commands over homelab.templates."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from homelab import ui
from homelab.cli.app import App, pass_app, yes_option
from homelab.cli.complete import complete_template
from homelab.cli.locking import takes_lab_lock


def _progress() -> Any:
    started = time.monotonic()

    def show(line: str) -> None:
        click.echo(f"[{time.monotonic() - started:6.1f}s] {line}")

    return show


@click.group()
def template() -> None:
    """Build, list, prune and render versioned VM templates."""


@template.command()
@click.argument("names", nargs=-1, shell_complete=complete_template)
@yes_option
@click.option("--dry-run", is_flag=True, help="Show the plan and stop.")
@click.option("--packer", "packer_path", default="packer", show_default=True, help="The packer program.")
@pass_app
@takes_lab_lock
def build(app: App, names: tuple[str, ...], dry_run: bool, packer_path: str) -> None:
    """Build a new version of each template the lab names (or of NAMES).

    Shows the plan first and asks. builder: cloud-image works through the Proxmox API alone; builder: packer
    renders the Packer configuration and runs `packer build`, its output in the lab's log folder.
    """
    from homelab.pipeline import build_templates

    wanted = names or [t.name for t in app.lab.templates]
    app.preflight("build", templates=list(wanted))
    build_templates(app.api, app.lab, wanted, app.echo, app.confirm, packer=packer_path, dry_run=dry_run)


@template.command(name="list")
@click.argument("names", nargs=-1, shell_complete=complete_template)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_app
def list_(app: App, names: tuple[str, ...], as_json: bool) -> None:
    """Show each template's versions on Proxmox and the VMs that use each."""
    from homelab.templates.usage import list_templates

    ui.render_template_list(list_templates(app.api, app.lab, names), as_json)


@template.command(name="prune")
@click.argument("names", nargs=-1, shell_complete=complete_template)
@click.option("--keep", type=click.IntRange(min=1), default=2, show_default=True, help="Newest versions to keep.")
@yes_option
@click.option("--dry-run", is_flag=True, help="Show the plan and stop.")
@pass_app
@takes_lab_lock
def prune_(app: App, names: tuple[str, ...], keep: int, dry_run: bool) -> None:
    """Delete old template versions that no VM uses (never one a VM was cloned from)."""
    from homelab.templates.usage import gather_prune, prune

    plans = gather_prune(app.api, app.lab, names, keep)
    for plan in plans:
        for line in plan.describe():
            click.echo(line)
    count = sum(len(p.delete) for p in plans)
    if count == 0:
        click.echo("Nothing to delete.")
        return
    if dry_run:
        return
    app.confirm(f"Delete {count} template version(s)?")
    deleted = prune(app.api, app.lab, plans, _progress())
    click.echo(f"Deleted {len(deleted)} template version(s).")


@template.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--template", "name", help="The template to render (default: the lab's first packer template).")
@click.option("--version", "version", help="The version to name the build (default: now, YYYYMMDDHHMM UTC).")
@click.option("--vmid", type=int, default=0, help="vmid of the new template (default 0: Proxmox picks).")
@pass_app
def render(app: App, directory: Path, name: str | None, version: str | None, vmid: int) -> None:
    """Write the Packer configuration into DIRECTORY, for running Packer yourself (no Proxmox needed)."""
    from homelab.templates.packer import render_for_user

    rendered = render_for_user(app.lab, name, directory, version, vmid)
    for path in rendered.files:
        click.echo(f"wrote {path}")
    click.echo(
        f"the build's private keys are in {rendered.private_dir} (outside the lab repo); delete it after the build"
    )
    click.echo(f"see {rendered.readme} for how to run Packer")
