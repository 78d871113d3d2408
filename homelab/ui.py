"""Everything homelab prints: plans, progress, results, as human text or JSON. One place, one style."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import click

from homelab.errors import InputError
from homelab.masking import mask

SYMBOLS = {
    "create": "+",
    "update": "~",
    "grow-disk": "~",
    "add-data-disk": "~",
    "move-data-disk": "~",
    "replace": "±",
    "start": ">",
    "remove": "-",
    "unchanged": "=",
    "orphan": "?",
    "namesake": "?",
    "blocked": "!",
}
COLORS = {"+": "green", "~": "yellow", "±": "magenta", ">": "cyan", "-": "red", "=": "bright_black", "?": "yellow"}


def echo_json(data: Any) -> None:
    """Machine-readable output on stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def render_plan(plan: Any) -> None:
    """One line per action, then a count per kind."""
    counts: dict[str, int] = {}
    for action in plan.actions:
        symbol = SYMBOLS.get(action.kind, "*")
        click.secho(f"  {symbol} {action.describe()}", fg=COLORS.get(symbol, "red"))
        counts[action.kind] = counts.get(action.kind, 0) + 1
    if not plan.actions:
        click.echo("  (the lab has no VMs and Proxmox has none of its VMs)")
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    click.echo(f"Plan: {summary or 'nothing to do'}.")


def interactive() -> bool:
    """Whether someone can answer a prompt: standard input is a terminal."""
    return sys.stdin.isatty()


def confirm(question: str, yes: bool) -> None:
    """Ask once; --yes answers for the user. Without a terminal and without --yes, refuse instead of hanging."""
    if yes:
        return
    if not interactive():
        raise InputError(f"{question} Not on a terminal: pass --yes to confirm.")
    if not click.confirm(question, default=False):
        from homelab.errors import Aborted

        raise Aborted("Nothing was changed.")


class LineReporter:
    """Progress as one timestamped line per step: works in logs, CI and terminals alike."""

    def __init__(self) -> None:
        self._start = time.monotonic()
        self._lock = threading.Lock()

    def step(self, vm: str, message: str) -> None:
        with self._lock:
            click.echo(mask(f"[{time.monotonic() - self._start:6.1f}s] {vm}: {message}"), err=True)

    def finished(self, vm: str, ok: bool, message: str) -> None:
        with self._lock:
            mark = click.style("ok", fg="green") if ok else click.style("FAILED", fg="red")
            click.echo(f"[{time.monotonic() - self._start:6.1f}s] {vm}: {mark} {mask(message)}", err=True)


class LiveReporter:
    """A live table, one row per VM (in the order they first report), on a terminal."""

    def __init__(self, names: list[str] | None = None) -> None:
        from rich.console import Console
        from rich.live import Live

        self._rows: dict[str, tuple[str, str]] = {n: ("waiting", "") for n in names or []}
        self._start = time.monotonic()
        self._lock = threading.Lock()
        self._live = Live(self._table(), console=Console(stderr=True), refresh_per_second=8, transient=False)

    def __enter__(self) -> LiveReporter:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._live.update(self._table())
        self._live.__exit__(*exc)

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title=f"homelab apply ({time.monotonic() - self._start:.0f}s)", expand=False)
        table.add_column("VM")
        table.add_column("state")
        table.add_column("detail")
        for name, (state, detail) in self._rows.items():
            style = {"ok": "green", "FAILED": "red"}.get(state, "")
            table.add_row(name, f"[{style}]{state}[/]" if style else state, detail)
        return table

    def step(self, vm: str, message: str) -> None:
        with self._lock:
            self._rows[vm] = (mask(message), "")
            self._live.update(self._table())

    def finished(self, vm: str, ok: bool, message: str) -> None:
        with self._lock:
            self._rows[vm] = ("ok" if ok else "FAILED", mask(message))
            self._live.update(self._table())


def render_apply(result: Any) -> None:
    """The summary at the end of apply."""
    failed = [o for o in result.outcomes if not o.ok]
    for outcome in result.outcomes:
        if outcome.ok:
            where = f" vmid {outcome.vmid}" if outcome.vmid else ""
            addr = f" at {outcome.address}" if outcome.address else ""
            click.echo(f"  ok      {outcome.vm}{where}{addr}")
        else:
            click.secho(f"  FAILED  {outcome.vm}: {mask(str(outcome.error))}", fg="red")
    calls = sum(result.calls.values())
    click.echo(
        f"Applied in {result.seconds:.1f}s with {calls} API calls: "
        f"{len(result.outcomes) - len(failed)} ok, {len(failed)} failed."
    )


def render_status(rows: list[Any], as_json: bool) -> None:
    """`homelab status`: one row per VM, or JSON."""
    from dataclasses import asdict

    if as_json:
        echo_json([asdict(r) for r in rows])
        return
    click.echo(f"{'VM':<16} {'VMID':>6} {'STATE':<9} {'ADDRESS':<16} {'VERSION':<13} MATCHES")
    for r in rows:
        click.echo(
            f"{r.name:<16} {r.vmid or '-':>6} {r.state:<9} {r.address or '-':<16} {r.version or '-':<13} "
            f"{'yes' if r.matches else 'no: ' + r.note}"
        )


def render_template_list(listings: list[Any], as_json: bool) -> None:
    """`homelab template list`: each template's versions, newest first, and the VMs cloned from each."""
    if as_json:
        click.echo(json.dumps([item.as_dict() for item in listings], indent=2))
        return
    for item in listings:
        click.echo(f"template {item.template}" + (f": {item.problem}" if item.problem else ""))
        if not item.versions:
            continue
        click.echo(f"  {'VERSION':<13} {'VMID':>6}  {'NODE':<10} {'BUILT':<20} USED BY")
        for detail in reversed(item.versions):
            v = detail.version
            mark = "*" if item.selected and item.selected.vmid == v.vmid else " "
            users = ", ".join(f"{u.name} ({u.vmid})" for u in detail.used_by) or "-"
            built = str(detail.record.get("built", "?"))
            click.echo(f"{mark} {v.version:<13} {v.vmid:>6}  {v.node:<10} {built:<20} {users}")
        click.echo("  (* new VMs are cloned from this version)")


def render_key(report: Any, *, heading: str, private_path: bool = True) -> None:
    """A deploy key: its public line and fingerprint, where its private half is, where to add it."""
    click.echo(heading)
    click.echo(f"  {report.key.public_line}")
    click.echo(f"  fingerprint: {report.key.fingerprint}")
    if private_path:
        click.echo(f"  private key: {report.key.private_path} (it goes nowhere but to your VMs)")
    click.echo(f"Next: {report.page.hint}")


def render_verified(result: Any) -> None:
    """`homelab keys verify`: the host key pinned now (if any), then what the deploy key reads."""
    if result.pin.pinned_now == "published":
        click.echo(f"Pinned {result.repo.host}'s host key {result.pin.key.fingerprint} (matches the published one).")
    elif result.pin.pinned_now == "confirmed":
        click.echo(f"Pinned {result.repo.known_hosts_target}'s host key {result.pin.key.fingerprint}.")
    click.echo(
        f"OK: deploy key {result.key.fingerprint} reads {result.repo.url} ({result.branch} is at {result.commit[:12]})"
    )


def render_rotation(result: Any) -> None:
    """`homelab keys rotate`: which key each VM uses now."""
    for outcome in result.hosts:
        state = "new key" if outcome.ok else ("OLD key" if outcome.uses == result.old.fingerprint else "UNKNOWN key")
        click.echo(f"{outcome.host}: {state}: {outcome.detail}")
    if result.complete:
        click.echo(f"All {len(result.hosts)} VM(s) use the new key {result.new.fingerprint}.")


def render_export(result: Any, directory: str) -> None:
    """What `homelab export terraform` wrote: the files, the VMs it imports, and each thing it could not say."""
    click.echo(f"Wrote {len(result.files)} files to {directory}: {', '.join(sorted(result.files))}")
    for vm in result.vms:
        how = f"imports {vm.node}/{vm.vmid}" if vm.vmid is not None else "Terraform creates it"
        click.echo(f"  {vm.resource}: {how}, cloned from {vm.clone_name} ({vm.clone_vmid})")
    for note in result.notes:
        click.secho(f"  ! {note}", fg="yellow")
    click.echo(f"Next: cd {directory} && terraform init && terraform plan (see README.md there)")
