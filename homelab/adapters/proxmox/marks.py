"""The lab's mark on Proxmox: its tags, and the one machine-readable line of a description.

Everything a lab manages is tagged ``homelab-<lab>``; a template version homelab built is also tagged
``homelab-template``. Tags are free-form (a person or another lab may set any of them), so what decides
whether a guest is a lab's is the description's mark, one line of JSON::

    homelab: {"lab": "home", "state": "ready", "template": "base", "version": "202601010930", "vm": "web"}
    homelab: {"lab": "home", "template": "base", "version": "202601010930", "builder": "cloud-image", ...}

The first is a VM ``homelab apply`` cloned (the version it came from and how far its creation got); the second
a template version (what it was built from). This module is the one writer and the one parser of both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

TEMPLATE_TAG = "homelab-template"
# A template version whose image runs qemu-guest-agent (homelab baked it in, or Packer's install did).
AGENT_TAG = "guest-agent"
PREFIX = "homelab: "


def lab_tag(lab_name: str) -> str:
    """The tag of everything a lab manages."""
    return f"homelab-{lab_name}"


def template_tags(lab_name: str) -> list[str]:
    """Tags of a template version built for a lab."""
    return [TEMPLATE_TAG, lab_tag(lab_name)]


def split_tags(tags: str | None) -> tuple[str, ...]:
    """PVE's tag string (``a;b``, sometimes with commas or spaces) as a tuple."""
    return tuple(t for t in re.split(r"[;, ]+", tags or "") if t)


def join_tags(tags: Iterable[str]) -> str:
    """Tags as PVE takes them: sorted, unique, ``;``-separated."""
    return ";".join(sorted(set(tags)))


def mark_line(record: Mapping[str, Any], *, compact: bool = False) -> str:
    """The description line of a record: ``homelab: `` and one line of JSON (ASCII only).

    Two spellings of the same JSON, both read by :func:`parse_mark`: a template version's record keeps its
    order and spaces (people read it in the Proxmox UI); ``compact`` (keys sorted, no spaces) is how a VM's
    mark has always been written, kept so no VM's description changes under it.
    """
    if compact:
        return PREFIX + json.dumps(dict(record), sort_keys=True, separators=(",", ":"))
    return PREFIX + json.dumps(dict(record), separators=(", ", ": "), ensure_ascii=True)


def parse_mark(text: str | None) -> dict[str, Any] | None:
    """The record of the first ``homelab: {...}`` line of a description, or None if it has none."""
    for line in (text or "").splitlines():
        line = line.strip()
        if not line.startswith(PREFIX + "{"):
            continue
        try:
            record = json.loads(line[len(PREFIX) :])
        except ValueError:
            continue
        if isinstance(record, dict):
            return record
    return None


def describe_vm(lab: str, vm: str, template: str, version: str, state: str) -> str:
    """The description of a VM a lab manages: a line for people, then its mark (``state`` is ``creating``
    from the clone call on, ``ready`` once configured)."""
    return f"Managed by homelab (lab {lab}); changes made here are undone by `homelab apply`.\n" + mark_line(
        {"lab": lab, "vm": vm, "template": template, "version": version, "state": state}, compact=True
    )


def describe_template(record: Mapping[str, Any]) -> str:
    """A template version's description: a line for people, then the record."""
    human = f"homelab template {record.get('template')} version {record.get('version')}"
    if record.get("lab"):
        human += f" (lab {record['lab']})"
    return f"{human}\n{mark_line(record)}"


def marks_as(record: Mapping[str, Any] | None, lab_name: str, **fields: str) -> bool:
    """Whether a parsed mark names this lab (and each of ``fields`` with the value given)."""
    if not record or record.get("lab") != lab_name:
        return False
    return all(record.get(key) == value for key, value in fields.items())
