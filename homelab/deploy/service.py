"""The deploy stage as library calls: prepare (:mod:`homelab.deploy.plan`) -> preview (check mode) ->
confirm -> run -> summary (:mod:`homelab.deploy.report`).

The preview is the playbook in Ansible's check and diff mode, so it shows what would change on the VMs themselves
(files that are new or differ, with their diff), not a guess from this machine. A VM the preview could not
reach (no route, a changed host key) has failed: it is never said to need no change, and the real run
leaves it out.

The deploy reconciles: the preview also reports the stack folders homelab made on each VM (their
.homelab-stack markers), and those the VM no longer lists are planned for removal
(:func:`homelab.deploy.removed.removed_stacks`); the real run takes exactly those away, as previewed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import replace
from pathlib import Path

from homelab.adapters.ansible import PlaybookRunner, RunRequest, TaskEvent
from homelab.adapters.sshkeys import fingerprint
from homelab.deploy.inventory import host_vars, inventory, known_hosts_text
from homelab.deploy.plan import Deployment, DeployOptions, Target, deployed_file, deployed_vms, prepare, workdir
from homelab.deploy.removed import RemoveStack, removed_stacks
from homelab.deploy.report import (
    DeployResult,
    Echo,
    HostChange,
    HostResult,
    RunReport,
    changes_of,
    preview_lines,
    progress_printer,
    remember_deployed,
    summary_lines,
)
from homelab.deploy.secretvalues import stack_secret_values, staged_secrets
from homelab.errors import OperationError
from homelab.lab.models import Docker, Lab
from homelab.paths import data_dir
from homelab.state.files import write_atomic

Confirm = Callable[[str], None]  # raises to refuse

HOST_KEY_HINT = (
    "homelab pinned {pinned}; if the VM was rebuilt, `homelab apply` reads its new key through the guest agent"
)


def playbook() -> Path:
    """The packaged playbook."""
    return data_dir("stacks") / "ansible" / "deploy.yml"


def docker_vars(docker: Docker) -> dict[str, str]:
    """The docker role's settings from the lab's docker section (what the lab leaves unset keeps the role's
    defaults: Docker's own repository and key)."""
    found: dict[str, str] = {"homelab_docker_source": docker.source}
    if docker.repository:
        found["homelab_docker_repository"] = docker.repository
    if docker.key_url:
        found["homelab_docker_key_url"] = docker.key_url
    return found


def stage(deployment: Deployment, key_file: Path, where: Path, removals: Collection[RemoveStack] = ()) -> Path:
    """Write the pinned known_hosts and the inventory under ``where``; the inventory's path.

    ``removals``: the stacks to take off their VMs (those with ``keep`` stay).
    """
    ready = [t for t in deployment.ready if t.host is not None]
    known_hosts = where / "known_hosts"
    write_atomic(known_hosts, known_hosts_text([t.host for t in ready if t.host is not None]))
    entries = {}
    for t in ready:
        assert t.host is not None
        own_key = Path(t.host.key_file) if t.host.key_file else key_file
        remove = [r.stack for r in removals if r.vm == t.name and not r.keep]
        purge = [r.stack for r in removals if r.vm == t.name and r.purge and not r.keep]
        kept = purge_kept(deployment, t, remove)
        lab = deployment.lab
        data_disk = any(vm.name == t.name and lab.data_disk_for(vm) for vm in lab.vms)
        entries[t.name] = host_vars(
            t.host,
            t.render,
            own_key,
            known_hosts,
            lab=lab.name,
            remove=remove,
            data_disk=data_disk,
            purge=purge,
            purge_kept=kept,
        )
    path = where / "hosts.yml"
    write_atomic(path, json.dumps(inventory(entries), indent=2) + "\n")
    return path


def purge_kept(deployment: Deployment, target: Target, remove: Collection[str]) -> list[str]:
    """The --purge-data stacks whose data an earlier removal kept on ``target``: neither listed there nor
    removed by this deploy (the module deletes it only while no folder of the stack is on the VM)."""
    options = deployment.options
    if options.keep_removed:
        return []
    listed = {s.name for s in target.render.stacks}
    return [name for name in options.purge_data if name not in listed and name not in remove]


def execute(
    deployment: Deployment,
    runner: PlaybookRunner,
    inventory_path: Path,
    where: Path,
    *,
    check: bool,
    on_event: Callable[[TaskEvent], None] | None = None,
    secrets_file: Path | None = None,
) -> RunReport:
    """Run the playbook once over the ready targets; collect changes, failures and stats."""
    pinned = {t.name: t.host.host_key for t in deployment.ready if t.host and t.host.host_key}
    results = {name: HostResult(name) for name in pinned}
    changes: list[HostChange] = []
    markers: dict[str, dict[str, str]] = {}

    def collect(event: TaskEvent) -> None:
        if on_event is not None:
            on_event(event)
        result = results.get(event.host)
        if result is None:
            return
        if event.markers is not None and event.kind in ("ok", "changed"):
            markers[event.host] = dict(event.markers)
        if event.kind == "changed" and not event.loop:
            changes.extend(changes_of(event))
        if event.kind in ("failed", "unreachable") and result.failed_task is None and not (event.loop and event.item):
            result.failed_task = event.task
            result.unreachable = event.kind == "unreachable"
            message = event.message
            if "host key verification failed" in message.lower():
                message = f"{message} ({HOST_KEY_HINT.format(pinned=_fingerprint(pinned[event.host]))})"
            result.message = message

    extravars = {**docker_vars(deployment.lab.docker), **deployment.options.extravars()}
    if secrets_file is not None:
        extravars["homelab_secrets_file"] = str(secrets_file)  # the path only: the values stay out of the run
    request = RunRequest(playbook(), inventory_path, where, extravars, check=check)
    outcome = runner.run(request, collect)
    if not outcome.stats and outcome.rc != 0:
        tail = "\n".join(f"  | {line}" for line in outcome.tail)
        raise OperationError(f"ansible-playbook failed before the play started ({outcome.status}):\n{tail}")
    for name, stats in outcome.stats.items():
        if name in results:
            results[name].stats = stats
    for result in results.values():
        if not result.ok and result.failed_task is None:
            result.failed_task = "?"
            result.message = f"ansible reported a failure ({outcome.status})"
    return RunReport(check, results, changes, markers)


def plan_removals(deployment: Deployment, preview: RunReport) -> tuple[RemoveStack, ...]:
    """The stacks to take off each VM the preview checked: homelab's folders there that the VM no longer lists."""
    options = deployment.options
    found: list[RemoveStack] = []
    for t in deployment.ready:
        checked = preview.hosts.get(t.name)
        if checked is None or not checked.ok or t.name not in preview.markers:
            continue
        listed = [s.name for s in t.render.stacks]
        found += removed_stacks(
            t.name,
            deployment.lab.name,
            listed,
            preview.markers[t.name],
            compose_down=options.start_stacks,
            keep=options.keep_removed,
            purge=options.purge_data,
            state_root=f"/home/{t.render.user}/data/stacks",
        )
    return tuple(found)


def _fingerprint(public_line: str) -> str:
    try:
        return fingerprint(public_line)
    except ValueError:
        return "another key"


def _preview_and_run(
    deployment: Deployment,
    result: DeployResult,
    runner: PlaybookRunner,
    echo: Echo,
    confirm: Confirm,
    check_only: bool,
) -> None:
    with staged_secrets(deployment) as secrets_file:
        _preview_then_run(deployment, result, runner, echo, confirm, check_only, secrets_file)


def _preview_then_run(
    deployment: Deployment,
    result: DeployResult,
    runner: PlaybookRunner,
    echo: Echo,
    confirm: Confirm,
    check_only: bool,
    secrets_file: Path | None,
) -> None:
    from homelab.state.adminkey import admin_key_path

    where = workdir(deployment.lab)
    key_file = admin_key_path(deployment.lab)
    inventory_path = stage(deployment, key_file, where)
    echo("Checking the VMs (Ansible check mode)...")
    result.preview = execute(deployment, runner, inventory_path, where, check=True, secrets_file=secrets_file)
    result.removals = plan_removals(deployment, result.preview)
    echo("Changes:")
    for line in preview_lines(result.preview, result.removals):
        echo(line)
    if result.losing and deployment.options.before_removal is not None:
        vms = ", ".join(sorted(result.losing))
        echo(f"  snapshot {vms} first, data disk included (settings.snapshot_before_changes)")
    if check_only:
        return
    reached = result.reached
    if not reached:
        echo("Nothing to deploy: the preview could not reach any VM.")
    elif result.pending:
        unreached = [t.name for t in deployment.ready if t not in reached]
        left_out = f" ({', '.join(unreached)} could not be reached: not deployed)" if unreached else ""
        confirm(f"Deploy to {len(reached)} VM(s)?{left_out}")
        removing = sorted(result.losing & {t.name for t in reached})
        if removing and deployment.options.before_removal is not None:
            deployment.options.before_removal(removing)
        # A VM the preview could not reach gets nothing: the run changes only what was shown.
        run = replace(deployment, targets=tuple(t for t in deployment.targets if t in reached))
        if result.to_remove or unreached:
            inventory_path = stage(run, key_file, where, result.removals)
        echo("Deploying:")
        result.run = execute(
            run, runner, inventory_path, where, check=False, on_event=progress_printer(echo), secrets_file=secrets_file
        )
    elif len(reached) < len(deployment.ready):
        echo(f"Nothing to change on {', '.join(t.name for t in reached)}.")
    else:
        echo("Nothing to change.")


def deploy_stacks(
    lab: Lab,
    echo: Echo,
    confirm: Confirm,
    options: DeployOptions | None = None,
    *,
    runner: PlaybookRunner | None = None,
    check_only: bool = False,
) -> DeployResult:
    """Show what the deploy will do, ask, run it with progress, end with a per-host summary.

    Raises OperationError (after the summary) when any host failed; the other hosts are deployed anyway.
    ``check_only`` stops after the preview.
    """
    secrets = stack_secret_values(lab, keep=not check_only) if any(vm.stacks for vm in lab.vms) else {}
    deployment = prepare(lab, options, secrets=secrets)
    if not deployment.targets:
        echo("Skipped: no VM in the lab file lists stacks.")
        return DeployResult(deployment, skipped="no stacks")
    for line in deployment.describe():
        echo(line)
    result = DeployResult(deployment)
    if deployment.ready:
        own_runner = None
        if runner is None:
            from homelab.adapters.ansible import AnsibleRunner, ansible_available

            missing = ansible_available()
            if missing:
                raise OperationError(f"cannot deploy: {missing}")
            runner = own_runner = AnsibleRunner()
        try:
            _preview_and_run(deployment, result, runner, echo, confirm, check_only)
        finally:
            if own_runner is not None:
                own_runner.close()
    if check_only:
        return result
    before = deployed_vms(lab)
    after = remember_deployed(result, before)
    if after != before:
        write_atomic(deployed_file(lab), json.dumps({"vms": sorted(after)}, indent=2) + "\n")
    echo("Summary:")
    for line in summary_lines(result):
        echo(line)
    failed = [h for h in result.hosts if not h.ok]
    if failed:
        names = ", ".join(f"{h.name} ({h.failed_task})" for h in failed)
        others = "; the other VMs are deployed" if len(failed) < len(result.hosts) else ""
        raise OperationError(f"the deploy failed on {names}{others}")
    return result
