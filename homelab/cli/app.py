"""The application object: what every command needs, made in one place and only when first used.

A command is a few lines: it takes the App (``@pass_app``), calls one library function (the same one
`homelab up` calls) and hands the result to ``homelab.ui``. Asking, ``--yes``, the terminal check, the
lab file, the Proxmox connection and the exit codes live here, so every command behaves alike.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from homelab.masking import mask

if TYPE_CHECKING:
    from homelab.adapters.proxmox.api import PveApi
    from homelab.lab.models import Lab
    from homelab.provision.executor import Reporter

EXIT_CHANGES = 3  # `plan`, `deploy --check`: something would change
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class App:
    """One per run of the command line: the lab file, the lab, the API and the console."""

    def __init__(self, lab_option: str | None = None) -> None:
        self.lab_option = lab_option  # --lab before or after the subcommand (after wins)
        self.command = "homelab plan"  # the command being run, for messages that show how to run it
        self.yes = False  # --yes: every question is answered yes

    @property
    def lab_path(self) -> Path:
        """--lab, else $HOMELAB_LAB, else ./lab.yml."""
        from homelab.lab import find_lab_path

        return find_lab_path(self.lab_option)

    @functools.cached_property
    def lab(self) -> Lab:
        """The lab file, loaded and validated once."""
        from homelab.lab import load_lab

        return load_lab(self.lab_path)

    @functools.cached_property
    def api(self) -> PveApi:
        """The Proxmox API of the lab, connected once."""
        from homelab.adapters.proxmox.connect import connect

        return connect(self.lab)

    def preflight(self, *wanted: str, templates: list[str] | str | None = None) -> None:
        """Run doctor for what this command needs (vms, build; ``templates``: which a build builds, "unbuilt":
        those with no version yet) before it changes anything: silent when all is well, else PreflightFailed
        (exit 2) with one line per problem."""
        from homelab.preflight.service import preflight
        from homelab.provision.nodes import check_nodes

        # a missing or offline node (or a VM's GPU mapping) is named with its lab file key and line
        check_nodes(self.api, self.lab, gpus="vms" in wanted)
        preflight(self.api, self.lab, self.command, wanted, templates)

    def echo(self, line: str = "") -> None:
        """A line for people, on stdout."""
        click.echo(mask(line))

    def confirm(self, question: str) -> None:
        """Ask once; --yes answers for the user; declining raises Aborted (exit 1) everywhere."""
        from homelab import ui

        ui.confirm(question, self.yes)

    def run_stage(self, run: Callable[..., T], concurrency: int | None, /, **options: Any) -> T:
        """Run a pipeline stage with what every stage takes: the API, the lab, how to print and ask, progress,
        and how many VMs at once (--concurrency; None: the lab's setting)."""
        return run(self.api, self.lab, self.echo, self.confirm, self.reporter(), concurrency, **options)

    def reporter(self) -> Reporter:
        """Progress per VM: a live table on a terminal (shown only while VMs are worked on), else timestamped lines."""
        from homelab import ui

        return ui.LiveReporter() if sys.stderr.isatty() else ui.LineReporter()


def pass_app(command: F) -> F:
    """Give the command the App as its first argument."""

    @functools.wraps(command)
    def with_app(*args: Any, **kwargs: Any) -> Any:
        return command(current_app(), *args, **kwargs)

    return with_app  # type: ignore[return-value]


def current_app() -> App:
    """The App of the running command line (a new one for library callers outside a command)."""
    ctx = click.get_current_context()
    root = ctx.find_root()
    if not isinstance(root.obj, App):
        root.obj = App()
    return root.obj


def yes_option(command: F) -> F:
    """`--yes`/`-y`: answer every question of this command yes."""

    def remember(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        if value:
            current_app().yes = True
        return value

    return click.option(
        "--yes", "-y", is_flag=True, expose_value=False, callback=remember, help="Do not ask before changing things."
    )(command)
