"""The deploy stage as library calls: prepare (pure) -> preview (check mode) -> confirm -> run -> summary.

Each VM that lists stacks is a target, and so is a VM that lists none any more but got stacks from an
earlier deploy (the deploy record says which). A target needs a host record with a pinned host key
(written by `homelab apply`); one without is reported as failed and the others still deploy. The preview
is the playbook in Ansible's check and diff mode, so it shows what would change on the VMs themselves
(files that are new or differ, with their diff), not a guess from this machine. A VM the preview could not
reach (no route, a changed host key) has failed: it is never said to need no change, and the real run
leaves it out.

The deploy reconciles: the preview also reports the stack folders homelab made on each VM (their
.homelab-stack markers), and those the VM no longer lists are planned for removal
(:func:`homelab.deploy.removed.removed_stacks`); the real run takes exactly those away, as previewed.
"""

from __future__ import annotations

import difflib
import json
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from homelab.adapters.ansible import HostStats, PlaybookRunner, RunRequest, TaskEvent
from homelab.deploy.inventory import host_vars, inventory, known_hosts_text
from homelab.deploy.removed import RemoveStack, removed_stacks
from homelab.deploy.render import VmRender, missing_requirements, render_lab
from homelab.errors import InputError, OperationError
from homelab.lab.models import Lab
from homelab.paths import data_dir, state_dir
from homelab.state.files import write_atomic
from homelab.state.hosts import Host, load_hosts

Echo = Callable[[str], None]
Confirm = Callable[[str], None]  # raises to refuse

HOST_KEY_HINT = (
    "homelab pinned {pinned}; if the VM was rebuilt, `homelab apply` reads its new key through the guest agent"
)


@dataclass(frozen=True)
class DeployOptions:
    """What a deploy does besides copying the stacks' files."""

    install_packages: bool = True  # install docker.io + compose from the distribution where missing
    start_stacks: bool = True  # create the homelab network and run `docker compose up -d`
    vms: tuple[str, ...] = ()  # only these VMs; empty: every VM that lists stacks (or must be cleared of them)
    keep_removed: bool = False  # leave stacks the lab file no longer lists where they are (and say so)
    extra_vars: Mapping[str, Any] = field(default_factory=dict)

    def extravars(self) -> dict[str, Any]:
        return {
            "homelab_install_packages": self.install_packages,
            "homelab_start_stacks": self.start_stacks,
            **self.extra_vars,
        }


@dataclass(frozen=True)
class Target:
    """A VM to deploy to: what it gets, and its host record (or why it cannot be reached)."""

    render: VmRender
    host: Host | None
    problem: str | None = None

    @property
    def name(self) -> str:
        return self.render.vm

    @property
    def clear_only(self) -> bool:
        """The VM lists no stacks any more: it is only cleared of those homelab put there."""
        return not self.render.stacks


@dataclass(frozen=True)
class Deployment:
    """What a deploy will do, before it touches anything."""

    lab: Lab
    targets: tuple[Target, ...]
    options: DeployOptions
    warnings: tuple[str, ...] = ()

    @property
    def ready(self) -> list[Target]:
        return [t for t in self.targets if t.problem is None]

    @property
    def blocked(self) -> list[Target]:
        return [t for t in self.targets if t.problem is not None]

    def describe(self) -> list[str]:
        """The plan in words: hosts, their stacks, what happens to Docker and the stacks."""
        user = self.lab.access.user
        lines = [f"Deploy to {len(self.targets)} VM(s), as {user}, into /home/{user}/stacks:"]
        for t in self.targets:
            stacks = ", ".join(s.name for s in t.render.stacks) or "no stacks (those deployed before are removed)"
            where = f" ({t.host.address})" if t.host else ""
            lines.append(f"  {t.name}{where}: {stacks}" + (f"  ! {t.problem}" if t.problem else ""))
        lines += [f"  note: {w}" for w in self.warnings]
        opts = self.options
        lines.append(
            "Docker: "
            + (
                "docker.io and compose installed from the distribution where missing"
                if opts.install_packages
                else "left as it is (not installed by this deploy)"
            )
        )
        lines.append(
            "Stacks: "
            + (
                "the homelab network made, then `docker compose up -d` in each"
                if opts.start_stacks
                else "files only, not started"
            )
        )
        if opts.keep_removed:
            gone = "kept as they are (--keep-removed)"
        elif opts.start_stacks:
            gone = "`docker compose down`, then their folder is deleted with everything in it"
        else:
            gone = "their folder is deleted with everything in it (compose not run: --no-start)"
        lines.append(f"Stacks no longer listed: {gone}")
        return lines


def prepare(
    lab: Lab,
    options: DeployOptions | None = None,
    hosts: list[Host] | None = None,
    deployed: Collection[str] | None = None,
) -> Deployment:
    """The targets of a deploy, from the lab, the recorded hosts and the deploy record; renders every VM's files.

    A VM that lists no stacks is a target only when an earlier deploy put stacks on it (``deployed``,
    read from the deploy record when not given): the deploy then clears it of them.
    """
    options = options or DeployOptions()
    renders = render_lab(lab)
    deployed = deployed_vms(lab) if deployed is None else deployed
    for vm in lab.vms:
        if vm.name not in renders and vm.name in deployed:
            renders[vm.name] = VmRender(vm.name, lab.access.user, ())
    known_vms = {vm.name for vm in lab.vms}
    for name in options.vms:
        if name not in known_vms:
            raise InputError(f"no VM named {name!r} in the lab (VMs: {', '.join(sorted(known_vms)) or 'none'})")
        if name not in renders:
            raise InputError(f"VM {name!r} lists no stacks: add one with `homelab stack add NAME --vm {name}`")
    recorded = {h.name: h for h in (load_hosts(lab) if hosts is None else hosts)}
    targets = []
    warnings = []
    for vm in lab.vms:
        if vm.name not in renders or (options.vms and vm.name not in options.vms):
            continue
        host = recorded.get(vm.name)
        problem = None
        if host is None:
            problem = "no address recorded yet: run `homelab apply` first"
        elif not host.host_key:
            problem = "its SSH host key is not pinned: run `homelab apply` to read it through the guest agent"
        targets.append(Target(renders[vm.name], host, problem))
        for stack, needed in missing_requirements(lab, vm):
            warnings.append(f"{vm.name}: {stack} is reached through {needed}, which this VM does not run")
    return Deployment(lab, tuple(targets), options, tuple(warnings))


@dataclass(frozen=True)
class Change:
    """Something a run changed (or, in check mode, would change) on a host."""

    host: str
    what: str  # a file or folder on the host, or a task (and its loop item)
    kind: str = ""  # new, new folder, content, attributes; empty for other tasks
    before: str = ""
    after: str = ""

    def describe(self) -> str:
        if self.kind == "new":
            return f"+ {self.host}: {self.what} (new file)"
        if self.kind == "new folder":
            return f"+ {self.host}: {self.what}/ (new folder)"
        if self.kind == "attributes":
            return f"~ {self.host}: {self.what} (mode or owner)"
        if self.kind == "removed stack":
            return f"- {self.host}: {self.what}/ (stack folder removed)"
        return f"~ {self.host}: {self.what}"

    def diff_lines(self, limit: int = 20) -> list[str]:
        """The changed lines of a file whose content changed (a .env is short; a compose file may not be)."""
        if self.kind != "content":
            return []
        lines = [
            line
            for line in difflib.unified_diff(self.before.splitlines(), self.after.splitlines(), lineterm="", n=0)
            if not line.startswith(("---", "+++", "@@"))
        ]
        return lines[:limit] + ([f"... {len(lines) - limit} more line(s)"] if len(lines) > limit else [])


def changes_of(event: TaskEvent) -> list[Change]:
    """The changes one changed task reports: one per file when it gave diffs, else the task itself."""
    if event.diffs:
        return [Change(event.host, d.path, d.change, d.before, d.after) for d in event.diffs]
    return [Change(event.host, f"{event.task}: {event.item}" if event.item else event.task)]


@dataclass
class HostResult:
    """How one host came out of a run."""

    name: str
    stats: HostStats = field(default_factory=HostStats)
    failed_task: str | None = None
    message: str = ""
    unreachable: bool = False  # Ansible could not connect (or lost the connection): nothing ran there

    @property
    def ok(self) -> bool:
        return self.failed_task is None and not self.stats.failed and not self.stats.unreachable

    @property
    def reached(self) -> bool:
        """Ansible got onto the host (whether or not its tasks succeeded)."""
        return not self.unreachable and not self.stats.unreachable

    def describe(self) -> str:
        s = self.stats
        counts = f"ok={s.ok} changed={s.changed} failed={s.failed} unreachable={s.unreachable}"
        if self.ok:
            return f"{self.name}: ok ({counts})"
        return f"{self.name}: FAILED at {self.failed_task!r}: {self.message} ({counts})"


@dataclass
class RunReport:
    """One playbook run (check mode or real) over the deployment's hosts.

    ``markers``: per host that reported them, the folders under its stacks folder holding a
    .homelab-stack marker, with the marker's text.
    """

    check: bool
    hosts: dict[str, HostResult]
    changes: list[Change]
    markers: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(h.ok for h in self.hosts.values())

    @property
    def changed(self) -> int:
        return sum(h.stats.changed for h in self.hosts.values())


@dataclass
class DeployResult:
    """What `homelab deploy` (or stage 4 of `homelab up`) did."""

    deployment: Deployment
    preview: RunReport | None = None
    run: RunReport | None = None
    skipped: str = ""
    removals: tuple[RemoveStack, ...] = ()  # planned from the preview, kept ones included

    @property
    def to_remove(self) -> list[RemoveStack]:
        """The stacks this deploy takes off their VMs."""
        return [r for r in self.removals if not r.keep]

    @property
    def kept(self) -> list[RemoveStack]:
        """Stacks no longer listed that stay where they are (--keep-removed)."""
        return [r for r in self.removals if r.keep]

    @property
    def final(self) -> RunReport | None:
        return self.run or self.preview

    @property
    def reached(self) -> list[Target]:
        """The targets the preview got onto: the only ones the real run goes to."""
        report = self.preview
        return [t for t in self.deployment.ready if report and t.name in report.hosts and report.hosts[t.name].reached]

    @property
    def hosts(self) -> list[HostResult]:
        """Each target's result: from the real run, else from the preview (one it could not reach failed there)."""
        results = []
        for t in self.deployment.ready:
            report = self.run if self.run and t.name in self.run.hosts else self.preview
            if report and t.name in report.hosts:
                results.append(report.hosts[t.name])
        return results + [
            HostResult(t.name, failed_task="connect", message=t.problem or "") for t in self.deployment.blocked
        ]

    @property
    def ok(self) -> bool:
        return all(h.ok for h in self.hosts)

    @property
    def would_change(self) -> bool:
        """The preview found files or packages to change, or stacks to remove."""
        return bool(self.preview and (self.preview.changes or self.to_remove))

    @property
    def pending(self) -> bool:
        """On a VM the preview reached: something to change (files, packages, stacks to remove), or stacks to start."""
        reached = {t.name for t in self.reached}
        changes = self.preview is not None and any(c.host in reached for c in self.preview.changes)
        starts = self.deployment.options.start_stacks and any(not t.clear_only for t in self.reached)
        return bool(changes or self.to_remove or starts)


def workdir(lab: Lab) -> Path:
    """Where the last deploy's staged files, inventory and Ansible artifacts are kept."""
    return state_dir(lab.name) / "deploy"


def playbook() -> Path:
    """The packaged playbook."""
    return data_dir("stacks") / "ansible" / "deploy.yml"


def deployed_file(lab: Lab) -> Path:
    """The deploy record: the VMs an earlier deploy put stacks on."""
    return workdir(lab) / "deployed.json"


def deployed_vms(lab: Lab) -> frozenset[str]:
    """The VMs the deploy record names (none when there is no record, or it cannot be read)."""
    try:
        data = json.loads(deployed_file(lab).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return frozenset()
    vms = data.get("vms") if isinstance(data, dict) else None
    return frozenset(str(vm) for vm in vms) if isinstance(vms, list) else frozenset()


def remember_deployed(result: DeployResult, before: Collection[str]) -> frozenset[str]:
    """The deploy record after ``result``: a VM that came out ok is in it while it has stacks homelab put there.

    It lists stacks, or it lists none and still holds a kept one. VMs the lab no longer has drop out;
    a VM that failed keeps its entry.
    """
    deployment = result.deployment
    outcome = {h.name: h.ok for h in result.hosts}
    kept = {r.vm for r in result.kept}
    vms = {vm.name for vm in deployment.lab.vms}
    after = {name for name in before if name in vms}
    for t in deployment.targets:
        if not outcome.get(t.name, False):
            continue
        if t.clear_only and t.name not in kept:
            after.discard(t.name)
        else:
            after.add(t.name)
    return frozenset(after)


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
        entries[t.name] = host_vars(t.host, t.render, own_key, known_hosts, lab=deployment.lab.name, remove=remove)
    path = where / "hosts.yml"
    write_atomic(path, json.dumps(inventory(entries), indent=2) + "\n")
    return path


def execute(
    deployment: Deployment,
    runner: PlaybookRunner,
    inventory_path: Path,
    where: Path,
    *,
    check: bool,
    on_event: Callable[[TaskEvent], None] | None = None,
) -> RunReport:
    """Run the playbook once over the ready targets; collect changes, failures and stats."""
    pinned = {t.name: t.host.host_key for t in deployment.ready if t.host and t.host.host_key}
    results = {name: HostResult(name) for name in pinned}
    changes: list[Change] = []
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

    request = RunRequest(playbook(), inventory_path, where, deployment.options.extravars(), check=check)
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
        )
    return tuple(found)


def _fingerprint(public_line: str) -> str:
    from homelab.adapters.sshkeys import fingerprint

    try:
        return fingerprint(public_line)
    except ValueError:
        return "another key"


def preview_lines(report: RunReport, removals: Collection[RemoveStack] = ()) -> list[str]:
    """The check run in words: what would change, the stacks to remove (or keep), hosts that could not be checked."""
    lines = []
    for change in report.changes:
        lines.append(f"  {change.describe()}")
        lines += [f"      {line}" for line in change.diff_lines()]
    lines += [f"  {removal.describe()}" for removal in removals]
    unchecked = [result for result in report.hosts.values() if not result.ok]
    for result in unchecked:
        lines.append(f"  ! {result.name}: cannot check: {result.failed_task}: {result.message}")
    if not report.changes and not any(not r.keep for r in removals):
        # Only a VM the preview checked to the end can be said to need no change.
        checked = [result.name for result in report.hosts.values() if result.ok]
        if not unchecked:
            lines.append("  (no file or package would change)")
        elif checked:
            lines.append(f"  (no file or package would change on {', '.join(checked)})")
    return lines


def progress_printer(echo: Echo) -> Callable[[TaskEvent], None]:
    """Run events as one line each: changes, failures, and one ok line per task (not per loop item)."""
    started = time.monotonic()

    def show(event: TaskEvent) -> None:
        if event.kind == "skipped" or (event.kind == "ok" and event.item):
            return
        if event.kind == "changed" and event.loop:
            return  # its items were shown one by one
        what = f"{event.task}: {event.item}" if event.item else event.task
        tail = f": {event.message}" if event.message else ""
        echo(f"  [{time.monotonic() - started:5.1f}s] {event.host}: {event.kind} {what}{tail}")

    return show


def _preview_and_run(
    deployment: Deployment,
    result: DeployResult,
    runner: PlaybookRunner,
    echo: Echo,
    confirm: Confirm,
    check_only: bool,
) -> None:
    from homelab.state.adminkey import admin_key_path

    where = workdir(deployment.lab)
    key_file = admin_key_path(deployment.lab)
    inventory_path = stage(deployment, key_file, where)
    echo("Checking the VMs (Ansible check mode)...")
    result.preview = execute(deployment, runner, inventory_path, where, check=True)
    result.removals = plan_removals(deployment, result.preview)
    echo("Changes:")
    for line in preview_lines(result.preview, result.removals):
        echo(line)
    if check_only:
        return
    reached = result.reached
    if not reached:
        echo("Nothing to deploy: the preview could not reach any VM.")
    elif result.pending:
        unreached = [t.name for t in deployment.ready if t not in reached]
        left_out = f" ({', '.join(unreached)} could not be reached: not deployed)" if unreached else ""
        confirm(f"Deploy to {len(reached)} VM(s)?{left_out}")
        # A VM the preview could not reach gets nothing: the run changes only what was shown.
        run = replace(deployment, targets=tuple(t for t in deployment.targets if t in reached))
        if result.to_remove or unreached:
            inventory_path = stage(run, key_file, where, result.removals)
        echo("Deploying:")
        result.run = execute(run, runner, inventory_path, where, check=False, on_event=progress_printer(echo))
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
    deployment = prepare(lab, options)
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
    for host in result.hosts:
        echo(f"  {host.describe()}")
    for kept in result.kept:
        echo(f"  note: {kept.vm}: stack {kept.stack} is no longer in the lab file; kept there (--keep-removed)")
    failed = [h for h in result.hosts if not h.ok]
    if failed:
        names = ", ".join(f"{h.name} ({h.failed_task})" for h in failed)
        others = "; the other VMs are deployed" if len(failed) < len(result.hosts) else ""
        raise OperationError(f"the deploy failed on {names}{others}")
    return result
