"""What a deploy run reports: the changes per host, how each host came out, and the whole deploy's result
(which also decides the deploy record), in data and in words.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from homelab.adapters.ansible import HostStats, TaskEvent
from homelab.deploy.plan import Deployment, Target
from homelab.deploy.removed import RemoveStack

Echo = Callable[[str], None]
PURGED = "data deleted (--purge-data)"  # what homelab_files calls deleting a stack's state folder


@dataclass(frozen=True)
class HostChange:
    """Something a run changed (or, in check mode, would change) on a host."""

    host: str
    what: str  # a file or folder on the host, or a task (and its loop item)
    kind: str = ""  # new, new folder, content, attributes, format, mount; empty for other tasks
    before: str = ""
    after: str = ""

    def describe(self) -> str:
        if self.kind == "new":
            return f"+ {self.host}: {self.what} (new file)"
        if self.kind == "new folder":
            return f"+ {self.host}: {self.what}/ (new folder)"
        if self.kind == "attributes":
            return f"~ {self.host}: {self.what} (mode or owner)"
        if self.kind == "format":
            return f"+ {self.host}: {self.what} (blank data disk: formatted, ext4)"
        if self.kind == "mount":
            return f"~ {self.host}: {self.what} (the data disk mounted here)"
        if self.kind == "removed stack":
            return f"- {self.host}: {self.what}/ (stack folder removed)"
        if self.kind == PURGED:
            return f"- {self.host}: {self.what}/ (DATA DELETED FOR GOOD: --purge-data)"
        if self.kind.startswith("state of "):
            return f"> {self.host}: {self.what}/ ({self.kind}: moved, not deleted)"
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


def changes_of(event: TaskEvent) -> list[HostChange]:
    """The changes one changed task reports: one per file when it gave diffs, else the task itself."""
    if event.diffs:
        return [HostChange(event.host, d.path, d.change, d.before, d.after) for d in event.diffs]
    return [HostChange(event.host, f"{event.task}: {event.item}" if event.item else event.task)]


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
    changes: list[HostChange]
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
    def losing(self) -> set[str]:
        """The VMs this deploy takes stacks off or deletes kept data on (the preview found it there)."""
        purged = {c.host for c in self.preview.changes if c.kind == PURGED} if self.preview else set()
        return {r.vm for r in self.to_remove} | purged

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
        """On a VM the preview reached: something to change (files, packages, stacks to remove, or stacks to start:
        the preview's "Stacks to start" task is a change where a listed stack has a service that is not running),
        or a check that stopped at a task: "nothing to do" is said only of a VM checked to the end."""
        reached = {t.name for t in self.reached}
        changes = self.preview is not None and any(c.host in reached for c in self.preview.changes)
        unfinished = self.preview is not None and any(not self.preview.hosts[name].ok for name in reached)
        return bool(changes or self.to_remove or unfinished)


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


def summary_lines(result: DeployResult) -> list[str]:
    """The per-host summary a deploy ends with, and the stacks it kept (--keep-removed)."""
    lines = [f"  {host.describe()}" for host in result.hosts]
    lines += [
        f"  note: {kept.vm}: stack {kept.stack} is no longer in the lab file; kept there (--keep-removed)"
        for kept in result.kept
    ]
    return lines
