"""`--no-wait` and the lab's lock for every command that changes the lab (see homelab.state.lock)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def takes_lab_lock(command: F) -> F:
    """Run the command holding its lab's lock; a second run waits (saying who holds it) or, with ``--no-wait``,
    exits 2 at once. Put it right under ``@pass_app``."""

    @functools.wraps(command)
    def locked(app: Any, *args: Any, no_wait: bool = False, **kwargs: Any) -> Any:
        from homelab.state.lock import lab_lock

        with lab_lock(app.lab.name, app.command, wait=not no_wait, say=lambda line: click.echo(line, err=True)):
            return command(app, *args, **kwargs)

    option = click.option(
        "--no-wait", is_flag=True, help="When another run holds the lab, exit 2 at once instead of waiting."
    )
    return option(locked)  # type: ignore[return-value]
