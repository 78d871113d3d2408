"""`homelab deploy` and `homelab stack render` (the `stack` group is in homelab.cli.stacks): thin commands."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from homelab.cli.app import EXIT_CHANGES, App, pass_app, yes_option
from homelab.cli.complete import complete_vm
from homelab.cli.locking import takes_lab_lock
from homelab.errors import OperationError

if TYPE_CHECKING:
    from homelab.lab.models import Lab


def deploy_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command that deploys shares."""
    command = click.option(
        "--keep-removed",
        is_flag=True,
        help="Leave stacks the lab file no longer lists on a VM where they are (default: compose down, delete).",
    )(command)
    command = click.option(
        "--no-start", is_flag=True, help="Copy the stacks' files but do not run `docker compose up -d`."
    )(command)
    command = click.option(
        "--no-install-docker",
        is_flag=True,
        help="Do not install Docker and compose where they are missing (the VM has its own Docker).",
    )(command)
    return yes_option(command)


def _options(vms: tuple[str, ...], no_install_docker: bool, no_start: bool, keep_removed: bool) -> Any:
    from homelab.deploy.plan import DeployOptions

    return DeployOptions(
        install_packages=not no_install_docker, start_stacks=not no_start, vms=vms, keep_removed=keep_removed
    )


def snapshot_hook(app: App, lab: Lab) -> Callable[[Sequence[str]], None] | None:
    """The deploy's hook that snapshots VMs through Proxmox before stacks are taken off them, when the lab asks
    for it (settings.snapshot_before_changes); connects only when called."""
    from homelab.provision.snapshotting import removal_hook

    return removal_hook(lambda: app.api, lab, app.echo)


@click.command()
@deploy_options
@click.option("--check", is_flag=True, help="Only show what would change (exit 3 when something would).")
@click.option(
    "--vm", "vms", multiple=True, metavar="NAME", shell_complete=complete_vm, help="Only this VM (repeat for more)."
)
@pass_app
@takes_lab_lock
def deploy(
    app: App,
    no_install_docker: bool,
    no_start: bool,
    keep_removed: bool,
    check: bool,
    vms: tuple[str, ...],
) -> None:
    """Deploy Docker and each VM's stacks: /home/<user>/stacks/<name>/{compose.yml,.env}, then compose up.

    Shows the hosts, their stacks and the files that will change first (Ansible check mode), asks,
    then runs with one line per task and ends with a summary per host. Exit 1 when any host failed.
    A stack the lab file no longer lists on a VM is taken off it (compose down, its folder deleted);
    only folders homelab made (with a .homelab-stack marker) are ever removed.
    """
    from homelab.deploy.service import deploy_stacks

    options = replace(
        _options(vms, no_install_docker, no_start, keep_removed), before_removal=snapshot_hook(app, app.lab)
    )
    result = deploy_stacks(app.lab, app.echo, app.confirm, options, check_only=check)
    if check:
        failed = [host for host in result.hosts if not host.ok]
        if failed:
            names = ", ".join(f"{h.name} ({h.failed_task}: {h.message})" for h in failed)
            raise OperationError(f"cannot check {names}")
        if result.would_change:
            sys.exit(EXIT_CHANGES)


@click.command("render")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@pass_app
def render(app: App, dest: Path) -> None:
    """Write what each VM's stacks folder gets under DEST/<vm>/ (secrets masked), to read or commit."""
    from homelab.deploy.render import render_lab, write_tree

    for vm, rendered in render_lab(app.lab).items():
        written = write_tree(rendered, dest / vm)
        click.echo(f"{vm}: {len(written)} file(s) in {dest / vm} (on the VM: {rendered.root})")
        for folder in rendered.data_dirs:
            click.echo(f"  and the folder {folder} on the VM, owned by {rendered.user}")
        for seed in rendered.seeds:
            click.echo(f"  and {seed.path} on the VM when missing (an app's settings before its first start; secret)")
