"""The mark homelab puts on every VM it manages: a tag plus one JSON line in the description."""

from __future__ import annotations

import json
from typing import Any

PREFIX = "homelab: "


def parse_meta(description: str | None) -> dict[str, Any] | None:
    """The homelab JSON line of a VM description, or None (one parser for VMs and templates)."""
    from homelab.templates.naming import parse_description

    return parse_description(description)


def meta_line(**fields: Any) -> str:
    """One machine-readable description line (keys sorted so equal marks compare equal)."""
    return PREFIX + json.dumps(fields, sort_keys=True, separators=(",", ":"))


def describe(lab: str, vm: str, template: str, version: str, state: str) -> str:
    """The description of a managed VM: a human line and the mark."""
    return f"Managed by homelab (lab {lab}); changes made here are undone by `homelab apply`.\n" + meta_line(
        lab=lab, vm=vm, template=template, version=version, state=state
    )
