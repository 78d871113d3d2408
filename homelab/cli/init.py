"""`homelab init`: the guided wizard that writes lab.yml."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import yaml

from homelab.cli.app import App, pass_app
from homelab.errors import InputError


@click.command()
@click.option("--answers", type=click.Path(dir_okay=False), help="A YAML file of answers (keys like proxmox.node).")
@click.option("--defaults", is_flag=True, help="Take the default for every question not answered.")
@click.option("--force", is_flag=True, help="Replace an existing lab file.")
@pass_app
def init(app: App, answers: str | None, defaults: bool, force: bool) -> None:
    """Ask about your Proxmox and your lab, offering the nodes, storages and bridges it has; write lab.yml."""
    from homelab.wizard import run_init

    given = None
    if answers:
        try:
            given = yaml.safe_load(Path(answers).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(f"{answers}: cannot read answers: {exc}") from None
        if not isinstance(given, dict):
            raise InputError(f"{answers}: must be a mapping of question keys to answers")
    result = run_init(app.lab_path, given, defaults, force)
    click.echo(f"Wrote {result.path}: lab {result.lab_name!r} with {result.vms} VM(s).")
    if result.problems:
        for line in result.problems:
            click.echo(line, err=True)
        click.echo("Fix these (homelab doctor checks again) before `homelab up`.", err=True)
        sys.exit(2)
    click.echo("Next: homelab validate, then homelab plan.")
