"""`homelab validate` and `homelab schema`."""

from __future__ import annotations

import json

import click

from homelab.cli.app import App, pass_app
from homelab.lab.schema import lab_schema


@click.command()
@pass_app
def validate(app: App) -> None:
    """Check the lab file. Exit 0 when valid; otherwise one line per problem and exit 2."""
    lab, path = app.lab, app.lab_path
    click.echo(f"{path}: valid: lab {lab.name!r}, {len(lab.vms)} VM(s), {len(lab.templates)} template(s)")


@click.command()
def schema() -> None:
    """Print the lab file's JSON Schema, for yaml-language-server and other editors."""
    click.echo(json.dumps(lab_schema(), indent=2, sort_keys=True))
