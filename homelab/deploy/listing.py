"""`homelab stack list`: the stacks homelab ships, and where the lab runs them."""

from __future__ import annotations

from dataclasses import dataclass

from homelab.deploy.render import ui_hosts
from homelab.lab.models import Lab
from homelab.stacks import for_lab


@dataclass(frozen=True)
class StackRow:
    """One stack: what it is, what it needs, the VMs that run it and its UI addresses."""

    name: str
    description: str
    requires: tuple[str, ...]
    vms: tuple[str, ...]
    urls: tuple[str, ...]


def stack_rows(lab: Lab | None) -> list[StackRow]:
    """Every stack in the catalogue; with a lab, where each runs and the addresses of its UIs."""
    rows = []
    for name, info in sorted(for_lab(lab).items()):
        vms = tuple(vm.name for vm in lab.vms if name in vm.stacks) if lab else ()
        urls = tuple(f"https://{host}" for _, host in ui_hosts(lab, name)) if lab else ()
        rows.append(StackRow(name, info.description, info.requires, vms, urls))
    return rows
