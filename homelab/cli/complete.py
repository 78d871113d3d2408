"""Shell completion of names from the lab file: VMs, stacks, templates.

Enable it with `eval "$(_HOMELAB_COMPLETE=bash_source homelab)"` (zsh_source, fish_source for other shells).
A lab file that cannot be read completes nothing; completion never prints an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import click
from click.shell_completion import CompletionItem


def _lab_path(ctx: click.Context) -> str | None:
    # While completing, commands do not run: --lab after a subcommand is in the App (its option's callback
    # ran), --lab before it only in the root's parameters.
    from homelab.cli.app import App

    root = ctx.find_root()
    after = root.obj.lab_option if isinstance(root.obj, App) else None
    return after or root.params.get("lab_path")


def _from_lab(names: Callable[[Any], Iterable[str]]) -> Callable[[click.Context, click.Parameter, str], list[Any]]:
    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        from homelab.errors import HomelabError
        from homelab.lab import find_lab_path, load_lab

        try:
            lab = load_lab(find_lab_path(_lab_path(ctx)))
        except (HomelabError, OSError):
            return []
        return [CompletionItem(name) for name in names(lab) if name.startswith(incomplete)]

    return complete


complete_vm = _from_lab(lambda lab: (vm.name for vm in lab.vms))
complete_template = _from_lab(lambda lab: (t.name for t in lab.templates))


def complete_catalog_stack(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Stacks of the catalog (what `homelab stack add` takes)."""
    from homelab.errors import HomelabError
    from homelab.lab import find_lab_path
    from homelab.stacks import catalogue

    lab_file = find_lab_path(_lab_path(ctx))
    try:
        names = catalogue(lab_file.absolute().parent)
    except HomelabError:  # a broken user stack: complete the built-in ones
        names = catalogue()
    return [CompletionItem(name) for name in sorted(names) if name.startswith(incomplete)]
