"""`homelab doctor`: whether this token on this Proxmox can do what the lab needs; one line per problem."""

from __future__ import annotations

import sys

import click

from homelab.cli.app import App, pass_app


@click.command()
@click.option("-v", "--verbose", is_flag=True, help="Also show the version, nodes, storages and bridges found.")
@pass_app
def doctor(app: App, verbose: bool) -> None:
    """Check the Proxmox version, the token's privileges, storages and bridge against the lab.

    Silent when all is well (exit 0). Each problem is one line with the `pveum` or `pvesm` command that fixes
    it; any problem exits 2.
    """
    from homelab.preflight.service import doctor as run_doctor

    report = run_doctor(app.api, app.lab)
    if verbose:
        for line in report.details(app.lab):
            app.echo(line)
    for finding in report.findings:
        click.echo(str(finding), err=True)
    if not report.ok:
        sys.exit(2)
