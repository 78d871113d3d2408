"""The mark homelab puts on every VM it manages: a tag plus one JSON line in the description."""

from __future__ import annotations

import json
import re
from typing import Any

PREFIX = "homelab: "
_LINE = re.compile(r"^homelab: (\{.*\})\s*$", re.MULTILINE)


def parse_meta(description: str | None) -> dict[str, Any] | None:
    """The homelab JSON line of a VM description, or None."""
    if not description:
        return None
    match = _LINE.search(description)
    if not match:
        return None
    try:
        data = json.loads(match.group(1))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def meta_line(**fields: Any) -> str:
    """One machine-readable description line (keys sorted so equal marks compare equal)."""
    return PREFIX + json.dumps(fields, sort_keys=True, separators=(",", ":"))


def describe(lab: str, vm: str, template: str, version: str, state: str) -> str:
    """The description of a managed VM: a human line and the mark."""
    return f"Managed by homelab (lab {lab}); changes made here are undone by `homelab apply`.\n" + meta_line(
        lab=lab, vm=vm, template=template, version=version, state=state
    )
