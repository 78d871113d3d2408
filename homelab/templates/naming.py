"""How template versions are named, tagged and described.

A version is a Proxmox template named ``<name>-<YYYYMMDDHHMM>`` (UTC build time), tagged
``homelab-template`` and ``homelab-<lab>``, and described with one machine-readable line::

    homelab: {"lab": "home", "template": "base", "version": "202601010930", "builder": "cloud-image", ...}

VMs that ``homelab apply`` clones carry a line of the same shape naming the version they came from
(``{"lab": ..., "vm": ..., "template": ..., "version": ...}``); that line is how list and prune know which
versions are in use.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

VERSION_FORMAT = "%Y%m%d%H%M"
TEMPLATE_TAG = "homelab-template"
LINE_PREFIX = "homelab: "
_VERSION = re.compile(r"^\d{12}$")


def lab_tag(lab_name: str) -> str:
    """The tag of everything a lab manages."""
    return f"homelab-{lab_name}"


def template_tags(lab_name: str) -> list[str]:
    """Tags of a template version built for a lab."""
    return [TEMPLATE_TAG, lab_tag(lab_name)]


def version_name(template: str, version: str) -> str:
    """The Proxmox VM name of a version: ``base-202601010930``."""
    return f"{template}-{version}"


def parse_version_name(template: str, vm_name: str) -> str | None:
    """The version in a VM name of this template, or None if the name is not one of its versions."""
    prefix = f"{template}-"
    if not vm_name.startswith(prefix):
        return None
    version = vm_name[len(prefix) :]
    if not _VERSION.match(version):
        return None
    try:
        datetime.strptime(version, VERSION_FORMAT)
    except ValueError:
        return None
    return version


def version_time(version: str) -> datetime:
    """The UTC build time a version stands for."""
    return datetime.strptime(version, VERSION_FORMAT).replace(tzinfo=UTC)


def new_version(now: datetime, taken: Iterable[str] = ()) -> str:
    """The version for a build starting ``now``: its UTC minute, or one minute past the newest taken one.

    Versions only ever grow, so "newest" stays the last one built even with two builds in a minute or a
    clock that went back.
    """
    version = now.astimezone(UTC).strftime(VERSION_FORMAT)
    newest = max(taken, default=None)
    if newest is not None and version <= newest:
        version = (version_time(newest) + timedelta(minutes=1)).strftime(VERSION_FORMAT)
    return version


def split_tags(tags: str | None) -> tuple[str, ...]:
    """PVE's tag string (``a;b``, sometimes with commas or spaces) as a tuple."""
    return tuple(t for t in re.split(r"[;, ]+", tags or "") if t)


def join_tags(tags: Iterable[str]) -> str:
    """Tags as PVE takes them: sorted, unique, ``;``-separated."""
    return ";".join(sorted(set(tags)))


def description_line(record: dict[str, Any]) -> str:
    """The machine-readable description line for a record (one line of compact JSON)."""
    return LINE_PREFIX + json.dumps(record, separators=(", ", ": "), ensure_ascii=True)


def describe_template(record: dict[str, Any]) -> str:
    """A template version's description: a line for people, then the line for homelab."""
    human = f"homelab template {record.get('template')} version {record.get('version')}"
    if record.get("lab"):
        human += f" (lab {record['lab']})"
    return f"{human}\n{description_line(record)}"


def parse_description(text: str | None) -> dict[str, Any] | None:
    """The record of the first ``homelab: {...}`` line of a description, or None if it has none."""
    for line in (text or "").splitlines():
        line = line.strip()
        if not line.startswith(LINE_PREFIX + "{"):
            continue
        try:
            record = json.loads(line[len(LINE_PREFIX) :])
        except ValueError:
            continue
        if isinstance(record, dict):
            return record
    return None
