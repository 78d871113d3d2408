"""`homelab export terraform DIR`: a thin command over homelab.export."""

from __future__ import annotations

from pathlib import Path

import click

from homelab import ui
from homelab.cli.app import App, pass_app


@click.group()
def export() -> None:
    """Write the lab in another tool's terms."""


@export.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@pass_app
def terraform(app: App, directory: Path) -> None:
    """Write DIRECTORY: bpg/proxmox HCL for the lab's VMs, with import blocks adopting the running ones.

    Reads Proxmox (nothing is changed); the secret is never written: the provider reads it from the environment.
    """
    from homelab.export.service import export_terraform

    ui.render_export(export_terraform(app.api, app.lab, directory), str(directory))
