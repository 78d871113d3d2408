"""`homelab secrets`: the stacks' secrets (where they come from, their values on request) and the local CA."""

from __future__ import annotations

import click

from homelab.cli.app import App, pass_app
from homelab.cli.complete import complete_catalog_stack
from homelab.errors import InputError


@click.group()
def secrets() -> None:
    """Stack secrets (Portainer's admin password, Traefik's dashboard login, DNS tokens) and the lab's CA."""


@secrets.command("list")
@pass_app
def list_secrets(app: App) -> None:
    """Every secret the lab's stacks use and where its value comes from (never the value)."""
    from homelab.deploy.stackfiles import wanted_secrets
    from homelab.state.stacksecrets import env_name, known

    lab = app.lab
    for stack, specs in wanted_secrets(lab).items():
        have = known(lab, stack, specs)
        for spec in specs:
            source = (
                have[spec.name].source
                if spec.name in have
                else (
                    "generated on the first deploy" if spec.generate else f"missing: set {env_name(stack, spec.name)}"
                )
            )
            click.echo(f"{stack}  {spec.name}  {source}")


@secrets.command("show")
@click.argument("stack", shell_complete=complete_catalog_stack)
@pass_app
def show(app: App, stack: str) -> None:
    """Print STACK's secrets (e.g. portainer: the admin password). Only to this terminal; never logged."""
    from homelab.deploy.seeds import LOGIN_USER
    from homelab.deploy.stackfiles import DASHBOARD_USER, secret_specs
    from homelab.stacks import for_lab
    from homelab.state.stacksecrets import known

    lab = app.lab
    if stack not in for_lab(lab):
        raise InputError(f"unknown stack {stack!r}; known: {', '.join(sorted(for_lab(lab)))}")
    specs = secret_specs(lab, stack)
    if not specs:
        click.echo(f"{stack} has no secrets.")
        return
    have = known(lab, stack, specs)
    users = {"PORTAINER_ADMIN_PASSWORD": "admin", "TRAEFIK_DASHBOARD_PASSWORD": DASHBOARD_USER}
    users |= {"QBITTORRENT_PASSWORD": LOGIN_USER, "BAZARR_PASSWORD": LOGIN_USER}  # the media stack's seeded logins
    for spec in specs:
        secret = have.get(spec.name)
        if secret is None:
            click.echo(f"{spec.name}: not set yet ({'made by the first deploy' if spec.generate else 'missing'})")
            continue
        user = f" (user {users[spec.name]})" if spec.name in users else ""
        click.echo(f"{spec.name}{user}: {secret.value}")


@secrets.command("ca")
@pass_app
def ca(app: App) -> None:
    """The lab's local CA certificate (https.ca: local): trust it once in your browser or system."""
    from homelab.deploy.localca import ca_cert_path

    path = ca_cert_path(app.lab)
    if not path.exists():
        raise InputError("the lab has no CA yet: the first `homelab deploy` makes it")
    click.echo(f"# {path}  (import it as a trusted certificate authority)")
    click.echo(path.read_text(encoding="utf-8"), nl=False)


@secrets.command("path")
def path() -> None:
    """Where the secrets file is (mode 0600): `<lab>: {stacks: {<stack>: {NAME: value}}}`."""
    from homelab.state.secrets import secrets_file

    click.echo(str(secrets_file()))
