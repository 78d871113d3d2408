"""`homelab stack list | show | add | remove | new | render`: thin commands over homelab.deploy."""

from __future__ import annotations

import difflib

import click

from homelab import ui
from homelab.cli.app import App, pass_app
from homelab.cli.complete import complete_catalog_stack, complete_vm
from homelab.cli.deploy import _options, deploy_options, render, snapshot_hook
from homelab.errors import InputError


@click.group()
def stack() -> None:
    """Service stacks: list and show them, add one to a VM or remove it, scaffold your own, render them."""


stack.add_command(render)


def _lab_or_none(app: App) -> object:
    return app.lab if app.lab_path.exists() else None


@stack.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def list_stacks(app: App, as_json: bool) -> None:
    """The stacks homelab can deploy (built-in, and your own beside the lab file); the VMs that run each."""
    from dataclasses import asdict

    from homelab.deploy.listing import stack_rows

    lab = _lab_or_none(app)
    rows = stack_rows(lab)  # type: ignore[arg-type]
    if as_json:
        ui.echo_json([asdict(row) for row in rows])
        return
    width = max(len(row.name) for row in rows)
    for row in rows:
        needs = f" (needs {', '.join(row.requires)})" if row.requires else ""
        origin = "" if row.origin == "built-in" else f" [{row.origin}]"
        click.echo(f"{row.name:<{width}}  {row.category or '-':<14} {row.description}{needs}{origin}")
        if lab is not None:
            where = ", ".join(row.vms) if row.vms else "not in the lab"
            urls = f"  {' '.join(row.urls)}" if row.vms and row.urls else ""
            click.echo(f"{'':<{width}}  on: {where}{urls}")


@stack.command("show")
@click.argument("name", shell_complete=complete_catalog_stack)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def show(app: App, name: str, as_json: bool) -> None:
    """What stack NAME is: settings and defaults, secrets, ports, volumes and state, requirements, web UIs."""
    from homelab.deploy.listing import stack_details

    details = stack_details(_lab_or_none(app), name)  # type: ignore[arg-type]
    data = details.as_json()
    if as_json:
        ui.echo_json(data)
        return
    click.echo(f"{name}: {data['description']}")
    click.echo(f"  category: {data['category'] or '-'}   origin: {data['origin']} ({data['folder']})")
    click.echo(f"  requires: {', '.join(data['requires']) or 'nothing'}   runs on: {', '.join(data['vms']) or '-'}")
    click.echo("  settings (stacks.<name>.env; --set KEY=VALUE):" if data["settings"] else "  settings: none")
    for s in data["settings"]:
        default = "REQUIRED, no default" if s["required"] else f"default {s['default']!r}"
        value = f", lab: {s['value']!r}" if "value" in s else ""
        click.echo(f"    {s['name']} ({default}{value})  {s['description']}")
    click.echo("  secrets (never in lab.yml; `homelab secrets show`):" if data["secrets"] else "  secrets: none")
    for s in data["secrets"]:
        click.echo(f"    {s['name']} (generated: {s['generate']})  {s['description']}")
    click.echo(f"  ports: {', '.join(data['ports']) or 'none (web UIs go through Traefik)'}")
    click.echo(f"  state: {data['state_dir']}/{{{','.join(data['state'])}}} (kept when removed)")
    for service, volumes in data["volumes"].items():
        click.echo(f"  volumes of {service}: {', '.join(volumes)}")
    for item in data["ui"]:
        visit = item.get("first_visit") or {}
        guard = visit.get("guard") or []
        closed = ["behind the lab's login" if "/" in guard else f"{', '.join(guard)} behind the lab's login"] * bool(
            guard
        )
        closed += [f"{visit['seed']} settings written before its first start"] if visit.get("seed") else []
        first = f"; {'; '.join(closed)}" if closed else ""
        click.echo(f"  web UI {item['name']}: {item['url']} (container port {item['port'] or '?'}{first})")
    if data["docker_api"]:
        click.echo(f"  Docker API: {', '.join(data['docker_api'])}")
    if data["auth"] != "none":
        click.echo(f"  forward-auth: {data['auth']}")


def _parse_sets(values: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set {item!r}: expected KEY=VALUE")
        found[key] = value
    return found


def _ask_required(app: App, name: str, vm: str | None, given: dict[str, str]) -> dict[str, str]:
    """Required settings without a value: asked for on a terminal; without one the edit refuses (and says so)."""
    from homelab.stacks import catalogue

    lab = app.lab
    info = catalogue(lab.folder).get(name)
    if info is None or not ui.interactive() or app.yes:
        return given
    have = {**(lab.stacks[name].env if name in lab.stacks else {}), **given}
    for setting in info.required_settings:
        if not have.get(setting.name):
            given[setting.name] = click.prompt(f"{setting.name} ({setting.description or 'required'})")
    return given


@stack.command("add")
@click.argument("name", shell_complete=complete_catalog_stack)
@click.option("--vm", metavar="VM", shell_complete=complete_vm, help="The VM to run it on (needed with several).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="A setting (stacks.<name>.env); repeat.")
@click.option("--no-deploy", is_flag=True, help="Only edit the lab file.")
@deploy_options
@pass_app
def add(
    app: App,
    name: str,
    vm: str | None,
    sets: tuple[str, ...],
    no_deploy: bool,
    no_install_docker: bool,
    no_start: bool,
    keep_removed: bool,
) -> None:
    """Add stack NAME (and the stacks it needs) to a VM in the lab file, comments kept, then deploy that VM.

    Required settings without a default are asked for on a terminal; elsewhere give them with --set.
    """
    from homelab.deploy.labedit import add_stack
    from homelab.deploy.service import deploy_stacks

    path = app.lab_path
    settings = _ask_required(app, name, vm, _parse_sets(sets))
    added = add_stack(path, name, vm, settings)
    if added.changed:
        also = f" (and {', '.join(added.added_requirements)}, which it needs)" if added.added_requirements else ""
        click.echo(f"{path}: added {added.stack} to {added.vm}{also}.")
        for key in added.settings:
            click.echo(f"{path}: stacks.{added.stack}.env.{key} set.")
    else:
        click.echo(f"{path}: {added.vm} already runs {added.stack}; the file is unchanged.")
    for needed in added.missing:
        click.echo(f"note: {added.stack} is reached through {needed}: homelab stack add {needed} --vm {added.vm}")
    if no_deploy:
        return
    deploy_stacks(added.lab, app.echo, app.confirm, _options((added.vm,), no_install_docker, no_start, keep_removed))


@stack.command("remove")
@click.argument("name", shell_complete=complete_catalog_stack)
@click.option("--vm", metavar="VM", required=True, shell_complete=complete_vm, help="The VM to take it off.")
@click.option(
    "--purge-data",
    is_flag=True,
    help="Also DELETE the stack's data (/home/<user>/data/stacks/NAME) for good. Default: kept. "
    "For a stack the VM no longer runs: delete the data its removal kept.",
)
@click.option("--no-deploy", is_flag=True, help="Only edit the lab file (the next deploy takes the stack down).")
@deploy_options
@pass_app
def remove(
    app: App,
    name: str,
    vm: str,
    purge_data: bool,
    no_deploy: bool,
    no_install_docker: bool,
    no_start: bool,
    keep_removed: bool,
) -> None:
    """Take stack NAME off a VM: the lab file (comments kept), then a deploy that stops it and removes its
    folder. Its data is kept unless --purge-data. Shows what it will do and asks first.

    With --purge-data, a stack the VM no longer runs has the data its removal kept deleted (the lab file
    is left as it is): the deploy's preview shows what it finds, then asks."""
    from homelab.deploy.labedit import removal_text, write_lab_text
    from homelab.deploy.plan import deployed_vms
    from homelab.deploy.render import state_dir
    from homelab.deploy.service import deploy_stacks

    if purge_data and (no_deploy or keep_removed):
        raise InputError("--purge-data deletes the data in the deploy: not with --no-deploy or --keep-removed")
    if purge_data and any(v.name == vm and name not in v.stacks for v in app.lab.vms):
        _purge_kept_data(app, name, vm, no_install_docker, no_start)
        return
    path = app.lab_path
    old, new, removed = removal_text(path, name, vm)
    data = state_dir(removed.lab, name)
    click.echo(f"{path}: {removed.vm} stops running {name}:")
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0):
        if not line.startswith(("---", "+++", "@@")):
            click.echo(f"  {line}")
    for other in removed.needed_by:
        click.echo(f"note: {other} on {removed.vm} needs {name}")
    if no_deploy:
        click.echo(f"Not deployed (--no-deploy): the next `homelab deploy` stops it; its data in {data} is kept.")
    elif purge_data:
        click.echo(f"!!! --purge-data: ALL DATA OF {name.upper()} ON {removed.vm.upper()} IS DELETED FOR GOOD:")
        click.echo(f"!!!   {data} (databases, uploads, configuration). There is no undo.")
    else:
        click.echo(f"Then deployed: compose down, its folder removed; its data in {data} is KEPT.")
    app.confirm("Edit the lab file" + ("?" if no_deploy else " and deploy?"))
    write_lab_text(path, new)
    click.echo(f"{path}: {name} removed from {removed.vm}.")
    if no_deploy:
        return
    lab = removed.lab
    if not next(v for v in lab.vms if v.name == removed.vm).stacks and removed.vm not in deployed_vms(lab):
        click.echo(f"{removed.vm} was never deployed to: nothing to take down.")
        return
    from dataclasses import replace

    options = replace(
        _options((removed.vm,), no_install_docker, no_start, keep_removed),
        purge_data=(name,) if purge_data else (),
        before_removal=snapshot_hook(app, lab),  # a way back, data disk included
    )
    deploy_stacks(lab, app.echo, app.confirm, options)


def _purge_kept_data(app: App, name: str, vm: str, no_install_docker: bool, no_start: bool) -> None:
    """--purge-data of a stack ``vm`` no longer lists: a deploy to it that deletes the data an earlier removal
    kept (the preview shows it when it is there, then asks); the lab file is not changed."""
    from dataclasses import replace

    from homelab.deploy.render import state_dir
    from homelab.deploy.report import PURGED
    from homelab.deploy.service import deploy_stacks
    from homelab.stacks import is_stack_name

    if not is_stack_name(name):
        raise InputError(f"{name!r} is not a stack name (a-z, 0-9, '-')")
    data = state_dir(app.lab, name)
    click.echo(f"{vm} does not run {name} (the lab file stays as it is); the data its removal kept goes:")
    click.echo(f"!!! --purge-data: ALL DATA OF {name.upper()} ON {vm.upper()} IS DELETED FOR GOOD:")
    click.echo(f"!!!   {data} (databases, uploads, configuration). There is no undo.")
    options = replace(
        _options((vm,), no_install_docker, no_start, False),
        purge_data=(name,),
        before_removal=snapshot_hook(app, app.lab),  # a way back, data disk included
    )
    result = deploy_stacks(app.lab, app.echo, app.confirm, options)
    preview = result.preview.changes if result.preview else []
    if not any(c.kind == PURGED and c.host == vm for c in preview):
        click.echo(f"{vm}: nothing deleted: no {data} there (or {name} still has a folder in the stacks folder).")


@stack.command("new")
@click.argument("name")
@pass_app
def new(app: App, name: str) -> None:
    """Scaffold your own stack NAME in stacks/NAME/ beside the lab file (stack.yml, compose.yml) to edit."""
    from homelab.deploy.scaffold import new_stack
    from homelab.stacks import catalogue

    builtin = name in catalogue()
    folder = new_stack(app.lab_path.absolute().parent, name)
    click.echo(f"{folder}: stack.yml and compose.yml written; edit them, then `homelab stack add {name} --vm VM`.")
    if builtin:
        click.echo(f"note: it overrides the built-in stack {name} for this lab (`homelab stack list` says so).")
