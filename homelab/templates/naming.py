"""How template versions are named: ``<name>-<YYYYMMDDHHMM>``, the UTC minute the build started.

Their tags and description record are the lab's mark (homelab.adapters.proxmox.marks).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from homelab.adapters.proxmox.versions import VERSION_FORMAT


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
