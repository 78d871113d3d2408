"""`homelab stack list | show`: the stacks the lab can run (built-in and its own), and where it runs them."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import yaml

from homelab.deploy.overlay import auth_for
from homelab.deploy.render import state_dir, ui_hosts
from homelab.errors import InputError
from homelab.lab.models import Lab
from homelab.stacks import StackInfo, catalogue, for_lab


@dataclass(frozen=True)
class StackRow:
    """One stack: what it is, what it needs, where it comes from, the VMs that run it and its UI addresses."""

    name: str
    category: str
    description: str
    requires: tuple[str, ...]
    origin: str  # built-in, user, overrides built-in
    vms: tuple[str, ...]
    urls: tuple[str, ...]


def stack_rows(lab: Lab | None) -> list[StackRow]:
    """Every stack in the catalogue; with a lab, where each runs and the addresses of its UIs."""
    rows = []
    for name, info in sorted(for_lab(lab).items()):
        vms = tuple(vm.name for vm in lab.vms if name in vm.stacks) if lab else ()
        urls = tuple(f"https://{host}" for _, host in ui_hosts(lab, name)) if lab else ()
        rows.append(StackRow(name, info.category, info.description, info.requires, info.origin, vms, urls))
    return rows


def find_stack(lab: Lab | None, name: str) -> StackInfo:
    """The stack called ``name``, or InputError with a "did you mean"."""
    known = for_lab(lab) if lab is not None else catalogue()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; `homelab stack list` shows them"
        raise InputError(f"unknown stack {name!r}{hint}")
    return known[name]


@dataclass(frozen=True)
class StackDetails:
    """What `stack show` prints: settings with defaults (and the lab's values), secrets, ports, volumes, state,
    requirements and web UIs."""

    info: StackInfo
    settings: list[dict[str, Any]] = field(default_factory=list)
    secrets: list[dict[str, str]] = field(default_factory=list)
    volumes: dict[str, list[str]] = field(default_factory=dict)
    state_dir: str = ""
    uis: list[dict[str, Any]] = field(default_factory=list)
    vms: tuple[str, ...] = ()
    auth: str = "none"

    def as_json(self) -> dict[str, Any]:
        i = self.info
        return {
            "name": i.name,
            "category": i.category,
            "description": i.description,
            "origin": i.origin,
            "folder": str(i.path),
            "requires": list(i.requires),
            "settings": self.settings,
            "secrets": self.secrets,
            "ports": list(i.ports),
            "volumes": self.volumes,
            "state_dir": self.state_dir,
            "state": list(i.state),
            "ui": self.uis,
            "docker_api": list(i.docker_api),
            "vms": list(self.vms),
            "auth": self.auth,
        }


def compose_volumes(info: StackInfo) -> dict[str, list[str]]:
    """Every service's volumes, as written in the stack's compose files."""
    found: dict[str, list[str]] = {}
    for path in sorted(info.path.glob("compose*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for service, body in (doc.get("services") or {}).items():
            for volume in (body or {}).get("volumes") or ():
                text = volume if isinstance(volume, str) else f"{volume.get('source')}:{volume.get('target')}"
                found.setdefault(service, [])
                if text not in found[service]:
                    found[service].append(text)
    return found


def stack_details(lab: Lab | None, name: str) -> StackDetails:
    """Everything `stack show NAME` says of a stack (with a lab: its values and where it runs)."""
    info = find_stack(lab, name)
    env = lab.stacks[name].env if lab is not None and name in lab.stacks else {}
    settings = [
        {
            "name": s.name,
            "default": s.default,
            "required": s.required,
            "description": s.description,
            **({"value": env[s.name]} if s.name in env else {}),
        }
        for s in info.settings
    ]
    secrets = [
        {"name": s.name, "description": s.description, "generate": s.generate or "(you give it)"} for s in info.secrets
    ]
    hosts = dict((ui.name, host) for ui, host in ui_hosts(lab, name)) if lab is not None else {}
    uis = [
        {
            "name": ui.name,
            "url": f"https://{hosts.get(ui.name, ui.subdomain + '.<domain>')}",
            "port": ui.port,
            "host_var": ui.host_var,
            "widget": dict(ui.widget) or None,
            "first_visit": (
                {
                    "guard": list(ui.first_visit.guard),
                    "seed": ui.first_visit.seed.kind if ui.first_visit.seed else None,
                }
                if ui.first_visit
                else None
            ),
        }
        for ui in info.uis
    ]
    user = lab.access.user if lab is not None else "<user>"
    state = state_dir(lab, name) if lab is not None else f"/home/{user}/data/stacks/{name}"
    vms = tuple(vm.name for vm in lab.vms if name in vm.stacks) if lab is not None else ()
    auth = auth_for(lab, name) if lab is not None else "none"
    return StackDetails(info, settings, secrets, compose_volumes(info), state, uis, vms, auth)
