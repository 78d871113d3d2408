"""Pinning the git host's SSH host key: scan once, check, pin; afterwards only the pinned key is accepted.

The pin lives in ``<state dir>/deploy-keys/known_hosts``. A first contact shows the scanned fingerprint;
for well-known forges it must equal the fingerprint they publish (shipped with homelab), for any other
host the user confirms it. A pinned key is never replaced silently: a server presenting another key is
an error until the user removes the old line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from homelab.adapters import ssh
from homelab.adapters.forge import published_host_keys
from homelab.adapters.git import RepoUrl
from homelab.adapters.ssh import HostKey
from homelab.errors import Aborted, OperationError


class HostKeyMismatch(OperationError):
    """The git host presented a host key other than the pinned (or published) one."""


@dataclass(frozen=True)
class FirstContact:
    """A host key seen for the first time, waiting for the user's yes. ``published`` names the forge."""

    repo: RepoUrl
    key: HostKey
    published: str | None = None


@dataclass(frozen=True)
class Pin:
    """The pinned host key, and how it came to be pinned in this call (None: it already was)."""

    key: HostKey
    pinned_now: str | None = None  # "published" (matched the forge's fingerprint) or "confirmed"


def pinned_keys(known_hosts: Path, repo: RepoUrl) -> list[HostKey]:
    """The pinned keys for the repo's host (empty when none is pinned)."""
    return ssh.pinned_keys(known_hosts, repo.known_hosts_target)


def scan_host_keys(repo: RepoUrl, timeout: int = 5) -> list[HostKey]:
    """Ask the git host for its host keys, strongest type first. Not trusted by itself."""
    return ssh.scan_host_keys(repo.host, repo.port, timeout)


def ensure_pinned(known_hosts: Path, repo: RepoUrl, confirm: Callable[[FirstContact], bool]) -> Pin:
    """The pinned host key of the repo's host, pinning it on first contact.

    A well-known forge's key is pinned when its fingerprint equals the published one (and refused
    otherwise, whatever ``confirm`` says); any other host's key only when ``confirm`` returns True.
    """
    pinned = pinned_keys(known_hosts, repo)
    if pinned:
        return Pin(pinned[0])
    scanned = scan_host_keys(repo)
    published = published_host_keys(repo.host, repo.port)
    if published:
        forge = published[0].forge
        by_type = {p.key_type: p.fingerprint for p in published}
        for key in scanned:
            if by_type.get(key.key_type) == key.fingerprint:
                ssh.add_known_host(known_hosts, key)
                return Pin(key, pinned_now="published")
        shown = ", ".join(f"{k.key_type} {k.fingerprint}" for k in scanned)
        expected = ", ".join(f"{p.key_type} {p.fingerprint}" for p in published)
        raise HostKeyMismatch(
            f"{repo.host} presented {shown}, but {forge} publishes {expected}; "
            "not pinned (someone may be intercepting the connection)"
        )
    key = scanned[0]
    if not confirm(FirstContact(repo, key)):
        raise Aborted(f"host key of {repo.known_hosts_target} not pinned")
    ssh.add_known_host(known_hosts, key)
    return Pin(key, pinned_now="confirmed")


def describe_mismatch(known_hosts: Path, repo: RepoUrl) -> str:
    """A message for "ssh refused the host key": the pinned fingerprint, and what the host shows now."""
    pinned = ", ".join(k.fingerprint for k in pinned_keys(known_hosts, repo)) or "none"
    try:
        now = ", ".join(f"{k.fingerprint} ({k.key_type})" for k in scan_host_keys(repo))
    except OperationError:
        now = "unknown (it did not answer a key scan)"
    return (
        f"the host key of {repo.known_hosts_target} does not match the pinned one: pinned {pinned}, "
        f"presented now {now}. If the git host really changed its key, check the new fingerprint with its "
        f"admin, remove the line for {repo.known_hosts_target} from {known_hosts} and run "
        "`homelab keys verify` again"
    )
