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

from homelab.adapters.process import last_lines, run
from homelab.adapters.sshkeys import fingerprint
from homelab.errors import Aborted, OperationError
from homelab.repokeys.forge import RepoUrl, published_host_keys
from homelab.state.files import write_atomic

# Preferred first: the forges publish ed25519 fingerprints, and it is the strongest common type.
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")


class HostKeyMismatch(OperationError):
    """The git host presented a host key other than the pinned (or published) one."""


@dataclass(frozen=True)
class HostKey:
    """One host key of the git host, as a known_hosts entry."""

    target: str
    key_type: str
    key: str

    @property
    def line(self) -> str:
        """The known_hosts line."""
        return f"{self.target} {self.key_type} {self.key}"

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` as ``ssh-keygen -l`` shows it."""
        return fingerprint(f"{self.key_type} {self.key}")


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


def _matches(first_field: str, target: str) -> bool:
    return target in first_field.split(",")


def pinned_keys(known_hosts: Path, repo: RepoUrl) -> list[HostKey]:
    """The pinned keys for the repo's host (empty when none is pinned)."""
    try:
        text = known_hosts.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    keys = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and not fields[0].startswith("#") and _matches(fields[0], repo.known_hosts_target):
            keys.append(HostKey(repo.known_hosts_target, fields[1], fields[2]))
    return keys


def scan_host_keys(repo: RepoUrl, timeout: int = 5) -> list[HostKey]:
    """Ask the git host for its host keys (ssh-keyscan), strongest type first. Not trusted by itself."""
    proc = run(
        ["ssh-keyscan", "-T", str(timeout), "-p", str(repo.port), "-t", "ed25519,ecdsa,rsa", repo.host],
        capture=True,
        check=False,
        timeout=timeout * 4 + 5,
        what="read the git host's SSH host key",
    )
    keys = []
    for line in proc.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and not line.startswith("#") and fields[1] in KEY_TYPES:
            keys.append(HostKey(repo.known_hosts_target, fields[1], fields[2]))
    if not keys:
        detail = last_lines(proc.stderr) or "no answer"
        raise OperationError(f"could not read the SSH host key of {repo.known_hosts_target}: {detail}")
    return sorted(keys, key=lambda k: KEY_TYPES.index(k.key_type))


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
                _append(known_hosts, key)
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
    _append(known_hosts, key)
    return Pin(key, pinned_now="confirmed")


def _append(known_hosts: Path, key: HostKey) -> None:
    try:
        text = known_hosts.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    if text and not text.endswith("\n"):
        text += "\n"
    write_atomic(known_hosts, text + key.line + "\n", mode=0o644)


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
