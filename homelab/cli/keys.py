"""`homelab keys`: the config repo's deploy key: generate, show, verify, rotate."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from homelab import ui
from homelab.cli.app import App, pass_app, yes_option
from homelab.cli.locking import takes_lab_lock
from homelab.errors import Aborted, InputError, OperationError

if TYPE_CHECKING:
    from homelab.repokeys.hostkeys import FirstContact

POLL_INTERVAL = 2.0  # seconds between checks while waiting for the user to add or remove a key


def _answered_yes(question: str) -> bool:
    """Ask; a "no" stops the command as declining does everywhere (exit 1, the state stays resumable)."""
    if not click.confirm(question, default=True):
        raise Aborted("stopped here; run the same command again to carry on")
    return True


@click.group()
def keys() -> None:
    """Deploy keys for the config repo: generate, show, verify, install, rotate."""


@keys.command()
@click.option("--force", is_flag=True, help="Replace an existing key (prefer `homelab keys rotate`).")
@pass_app
def generate(app: App, force: bool) -> None:
    """Create the lab's deploy key (ed25519) and say where to add it."""
    from homelab.repokeys import core

    report = core.generate(app.lab, force=force)
    ui.render_key(report, heading="Created a deploy key. Public key:")
    click.echo("Then run: homelab keys verify")


@keys.command()
@pass_app
def show(app: App) -> None:
    """Print the deploy key's public key and fingerprint again."""
    from homelab.repokeys import core

    ui.render_key(core.show(app.lab), heading="Deploy key. Public key:")


def _confirm_host_key(yes: bool) -> Callable[[FirstContact], bool]:
    def confirm(contact: FirstContact) -> bool:
        click.echo(
            f"First contact with {contact.repo.known_hosts_target}: "
            f"its {contact.key.key_type} host key is {contact.key.fingerprint}"
        )
        if yes:
            click.echo("Pinning it (--yes).")
            return True
        if not ui.interactive():
            raise InputError(
                f"the host key {contact.key.fingerprint} of {contact.repo.known_hosts_target} must be confirmed "
                "before it is pinned: compare it with the one your git host shows, then run again with --yes"
            )
        return click.confirm("Is this the git host's key? Pin it", default=False)

    return confirm


@keys.command()
@yes_option
@pass_app
def verify(app: App) -> None:
    """Check that the deploy key can read the repo (only that key, only the pinned host key)."""
    from homelab.repokeys import core

    ui.render_verified(core.verify(app.lab, _confirm_host_key(app.yes)))


@keys.command()
@yes_option
@click.option(
    "--wait-timeout",
    type=click.IntRange(min=1),
    default=600,
    show_default=True,
    metavar="SECONDS",
    help="With --yes: how long to wait for the new key to be added (and the old one removed).",
)
@click.option("--check-old-revoked", is_flag=True, help="After the switch, wait until the old key no longer works.")
@pass_app
@takes_lab_lock
def rotate(app: App, wait_timeout: int, check_old_revoked: bool) -> None:
    """Replace the deploy key on the git host and every VM; no VM ever loses the ability to pull."""
    from homelab.repokeys import core
    from homelab.state.hosts import load_hosts

    lab, yes = app.lab, app.yes
    if not yes and not ui.interactive():
        raise InputError("rotate asks you to add the new key; without a terminal run it with --yes [--wait-timeout N]")
    hosts = load_hosts(lab)
    core.require_host_records(lab, hosts)
    if not hosts:
        click.echo("The lab has no VMs: only the key itself is rotated.")

    def await_added(report: core.KeyReport) -> None:
        heading = "Taking up the new key of an unfinished rotation:" if not report.created else "New deploy key:"
        ui.render_key(report, heading=heading, private_path=False)
        forge = core.add_through_api(lab, report.key)
        if forge:
            click.echo(f"Added it to the repo through the {forge} API.")
        if yes or forge:
            click.echo(f"Waiting up to {wait_timeout} s until the new key can read the repo ...")
            core.wait_for(lambda: core.can_read(lab, report.key), wait_timeout, POLL_INTERVAL, "the new key works")
            return
        while not (_answered_yes("Added it?") and core.can_read(lab, report.key)):
            click.echo("The new key cannot read the repo yet.")

    def progress(host: str, step: str, detail: str) -> None:
        click.echo(f"  {host + ': ' if host else ''}{step}: {detail}")

    result = core.rotate(lab, hosts, await_added=await_added, progress=progress)
    ui.render_rotation(result)
    if not result.complete:
        names = ", ".join(o.host for o in result.failed)
        raise OperationError(
            f"{len(result.failed)} VM(s) still use the old key {result.old.fingerprint}: {names}. Keep the old key "
            "on the git host. Fix them and run `homelab keys rotate` again: it takes up the same new key."
        )
    where = f" at {result.page.url}" if result.page.url else " on the git host"
    click.echo(f"The old key {result.old.fingerprint} ({result.old.comment}) can now be removed{where}.")
    retired = result.retired
    assert retired is not None
    forge = core.remove_through_api(lab, retired)
    if forge:
        click.echo(f"Removed the old key from the repo through the {forge} API.")
    if check_old_revoked:
        if yes or forge:
            click.echo(f"Waiting up to {wait_timeout} s until the old key no longer works ...")
            core.wait_for(lambda: core.is_revoked(lab, retired), wait_timeout, POLL_INTERVAL, "the old key is refused")
        else:
            _answered_yes("Removed it?")
            if not core.is_revoked(lab, retired):
                raise OperationError(f"the old key {retired.fingerprint} still reads the repo; remove it{where}")
        click.echo(f"Checked: the old key {retired.fingerprint} no longer works.")


@keys.command()
@yes_option
@pass_app
def install(app: App) -> None:
    """Put the deploy key on every VM and check the config repo out at ~/config there."""
    from homelab.pipeline import install_key_on_vms

    install_key_on_vms(app.lab, app.echo, app.confirm)
