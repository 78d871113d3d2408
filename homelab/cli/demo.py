"""`homelab demo`: the example lab, end to end, against the built-in fake Proxmox."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from homelab import ui
from homelab.errors import InputError, OperationError

if TYPE_CHECKING:
    from homelab.demo.launcher import FakeProxmox

INSTALL_HINT = "pip install 'homelab-pve[demo]'"


@click.command()
@click.option("--vms", type=click.IntRange(1, 50), default=3, show_default=True, help="How many VMs the demo lab has.")
@click.option(
    "--time-scale",
    type=click.FloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="Real seconds per Proxmox second (0.01: a 60 s clone takes 0.6 s).",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    help="Where the demo lab and its state go, and stay (default: a temp folder, removed at the end).",
)
@click.option(
    "--keep",
    is_flag=True,
    help="Leave the fake Proxmox running until Ctrl-C and print how to try plan, status, apply, destroy on it.",
)
def demo(vms: int, time_scale: float, workdir: str | None, keep: bool) -> None:
    """Run `homelab up` for the example lab against the built-in fake Proxmox, then plan again and show status.

    The stacks are not deployed: the fake's VMs are API objects, not machines one can SSH into. For the same
    reason the fake stands in for the template's build VM, which homelab reaches over SSH to install the guest
    agent.

    Nothing on your network is touched: the fake listens on a loopback address over HTTPS, and the demo lab
    has no config repo, so no git host is contacted. Without --keep the fake stops at the end and nothing is
    left behind (but the --workdir folder, when given).
    """
    try:
        import fakepve  # noqa: F401
    except ImportError:
        raise InputError(f"the demo needs the built-in fake Proxmox: {INSTALL_HINT}") from None

    from homelab.demo.session import NEXT_STEPS, demo_session, try_it_lines, write_demo_lab

    started = time.monotonic()
    with demo_session(workdir, time_scale) as session, _environment(session.environment()):
        click.echo(f"Started the fake Proxmox at {session.fake.url} (demo folder {session.root}).")
        _run(write_demo_lab(session, vms), session.fake)
        if not keep:
            left = "the demo folder is removed" if session.temporary else f"the demo's files stay in {session.root}"
            click.echo(f"\nThe demo took {time.monotonic() - started:.1f}s. The fake Proxmox stops now and {left}.\n")
            click.echo("\n".join(NEXT_STEPS))
            return
        removed = f", and {session.root} is removed" if session.temporary else ""
        click.echo(
            f"\nThe fake Proxmox keeps running at {session.fake.url}. Try homelab on it from another terminal:"
            f"\n(the token secret below is the demo's own throwaway one: it opens this fake and nothing else)\n"
        )
        for line in try_it_lines(session):
            click.echo(f"  {line}")
        click.echo(f"\nPress Ctrl-C to stop it: the fake stops{removed}.")
        try:
            code = session.fake.process.wait()
        except KeyboardInterrupt:
            click.echo("Stopping the fake Proxmox.")
            return
        log = session.fake.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-20:]
        raise OperationError("\n".join([f"the fake Proxmox stopped by itself (exit code {code}); its log ends:", *log]))


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """The demo's state folder and token secret, in this process only and while the demo runs."""
    old = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run(lab_path: os.PathLike[str], fake: FakeProxmox) -> None:
    """`homelab up --yes` without the deploy stage, then plan again (nothing to do) and status."""
    from homelab.adapters.proxmox.connect import connect
    from homelab.demo.bakehost import demo_shell
    from homelab.lab.loader import parse_lab
    from homelab.pipeline import up
    from homelab.provision.service import make_plan, status

    path = os.fspath(lab_path)
    with open(path, encoding="utf-8") as text:
        lab = parse_lab(text.read(), path)
    click.echo(f"{path}: valid ({len(lab.vms)} VMs)")
    click.secho("\n$ homelab up --yes", bold=True)
    api = connect(lab)
    # The fake's VMs are not machines: stage 4 (Ansible over SSH) has nothing to reach, so it is skipped.
    up(
        api,
        lab,
        click.echo,
        lambda question: None,
        ui.LineReporter(),
        deploy=False,
        skip_reason="the fake's VMs are API objects, not machines to SSH into",
        open_shell=demo_shell(fake),  # the template's bake, too, has no machine to SSH into
    )
    click.secho("\n$ homelab plan   (again: nothing to do)", bold=True)
    again = make_plan(lab, api=api)
    ui.render_plan(again.plan)
    if again.plan.changes:
        raise OperationError("the second plan still has changes: apply is not idempotent")
    click.secho("\n$ homelab status", bold=True)
    for row in status(lab, api):
        click.echo(f"  {row.name:<12} vmid {row.vmid}  {row.state:<8} {row.address or '-':<15} v{row.version}")
