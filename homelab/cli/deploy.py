"""`homelab deploy` and `homelab stack list | add`: thin commands over homelab.deploy."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from homelab import ui
from homelab.cli.app import EXIT_CHANGES, App, pass_app, yes_option
from homelab.cli.complete import complete_catalog_stack, complete_vm
from homelab.cli.locking import takes_lab_lock
from homelab.errors import OperationError


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


def _snapshot_hook(app: App) -> Callable[[Sequence[str]], None]:
    """Snapshot VMs through Proxmox before stacks are taken off them (connects only when called)."""

    def snapshot(vms: Sequence[str]) -> None:
        from homelab.provision.snapshotting import before_removal

        before_removal(app.api, app.lab, app.echo)(vms)

    return snapshot


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

    options = _options(vms, no_install_docker, no_start, keep_removed)
    if app.lab.settings.snapshot_before_changes:
        options = replace(options, before_removal=_snapshot_hook(app))
    result = deploy_stacks(app.lab, app.echo, app.confirm, options, check_only=check)
    if check:
        failed = [host for host in result.hosts if not host.ok]
        if failed:
            names = ", ".join(f"{h.name} ({h.failed_task}: {h.message})" for h in failed)
            raise OperationError(f"cannot check {names}")
        if result.would_change:
            sys.exit(EXIT_CHANGES)


@click.group()
def stack() -> None:
    """Service stacks: list what homelab ships, add one to a VM, render them to a folder."""


@stack.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def list_stacks(app: App, as_json: bool) -> None:
    """The stacks homelab can deploy; with a lab file, the VMs that run each and their addresses."""
    from dataclasses import asdict

    from homelab.deploy.listing import stack_rows

    lab = app.lab if app.lab_path.exists() else None
    rows = stack_rows(lab)
    if as_json:
        ui.echo_json([asdict(row) for row in rows])
        return
    width = max(len(row.name) for row in rows)
    for row in rows:
        needs = f" (needs {', '.join(row.requires)})" if row.requires else ""
        click.echo(f"{row.name:<{width}}  {row.description}{needs}")
        if lab is not None:
            where = ", ".join(row.vms) if row.vms else "not in the lab"
            urls = f"  {' '.join(row.urls)}" if row.vms and row.urls else ""
            click.echo(f"{'':<{width}}  on: {where}{urls}")


@stack.command("render")
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


@stack.command("add")
@click.argument("name", shell_complete=complete_catalog_stack)
@click.option(
    "--vm",
    metavar="VM",
    shell_complete=complete_vm,
    help="The VM to run it on (needed when the lab has several).",
)
@click.option("--no-deploy", is_flag=True, help="Only edit the lab file.")
@deploy_options
@pass_app
def add(
    app: App,
    name: str,
    vm: str | None,
    no_deploy: bool,
    no_install_docker: bool,
    no_start: bool,
    keep_removed: bool,
) -> None:
    """Add stack NAME to a VM in the lab file (comments and order kept), then deploy that VM."""
    from homelab.deploy.labedit import add_stack
    from homelab.deploy.service import deploy_stacks

    path = app.lab_path
    added = add_stack(path, name, vm)
    if added.changed:
        click.echo(f"{path}: added {added.stack} to {added.vm}.")
    else:
        click.echo(f"{path}: {added.vm} already runs {added.stack}; the file is unchanged.")
    for needed in added.missing:
        click.echo(f"note: {added.stack} is reached through {needed}: homelab stack add {needed} --vm {added.vm}")
    if no_deploy:
        return
    deploy_stacks(
        added.lab,
        app.echo,
        app.confirm,
        _options((added.vm,), no_install_docker, no_start, keep_removed),
    )
