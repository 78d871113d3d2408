"""What the `homelab keys` commands and the deploy stage call: one function per action, results as data."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from homelab.adapters.forge import KeyPage, deploy_key_page
from homelab.adapters.git import RepoUrl, parse_repo_url
from homelab.errors import InputError, OperationError, OperationTimeout
from homelab.lab.models import Lab
from homelab.repokeys.access import ls_remote, require_access
from homelab.repokeys.hostkeys import FirstContact, HostKey, Pin, ensure_pinned, pinned_keys
from homelab.repokeys.install import Checkout, HostOutcome, Progress, install_key, switch_host
from homelab.repokeys.keys import CURRENT, PENDING, DeployKey, KeyStore
from homelab.state.hosts import Host, hosts_file
from homelab.state.reading import read_state_json_lines


def _repo(lab: Lab) -> tuple[RepoUrl, str]:
    if lab.repo is None:
        raise InputError("the lab file has no repo: section (repo.url, the config repo's SSH clone URL)")
    return parse_repo_url(lab.repo.url), lab.repo.branch


@dataclass(frozen=True)
class KeyReport:
    """A deploy key and where it goes: shown by generate, show and rotate."""

    key: DeployKey
    page: KeyPage
    created: bool = False


def generate(lab: Lab, *, force: bool = False) -> KeyReport:
    """Create the lab's deploy key; refuse to replace an existing one unless ``force``."""
    repo, _ = _repo(lab)
    key = KeyStore(lab).create(CURRENT, force=force)
    return KeyReport(key, deploy_key_page(repo), created=True)


def show(lab: Lab) -> KeyReport:
    """The lab's current deploy key and where to paste it."""
    repo, _ = _repo(lab)
    return KeyReport(KeyStore(lab).require_current(), deploy_key_page(repo))


@dataclass(frozen=True)
class Verified:
    """The key read the repo: the branch and its commit, through the pinned host key."""

    key: DeployKey
    repo: RepoUrl
    branch: str
    commit: str
    pin: Pin


def verify(lab: Lab, confirm: Callable[[FirstContact], bool]) -> Verified:
    """Check from this machine that the deploy key can read the repo (pinning the host key on first contact)."""
    repo, branch = _repo(lab)
    store = KeyStore(lab)
    key = store.require_current()
    pin = ensure_pinned(store.known_hosts, repo, confirm)
    commit = require_access(repo, branch, key.private_path, store.known_hosts, key.fingerprint)
    return Verified(key, repo, branch, commit, pin)


def _target(lab: Lab) -> Checkout:
    repo, branch = _repo(lab)
    pinned = pinned_keys(KeyStore(lab).known_hosts, repo)
    if not pinned:
        raise InputError(f"the host key of {repo.known_hosts_target} is not pinned yet; run: homelab keys verify")
    return Checkout(repo, branch, pinned[0].line, lab.access.user)


def install(lab: Lab, hosts: list[Host]) -> list[HostOutcome]:
    """Install the current deploy key on each VM and check out the repo there (the deploy stage calls this).

    Each VM gets its own outcome; one failing does not stop the others.
    """
    key = KeyStore(lab).require_current()
    target = _target(lab)
    return [install_key(host, lab.name, target, key) for host in hosts]


def wait_for(check: Callable[[], bool], timeout: float, interval: float, what: str) -> None:
    """Call ``check`` until it returns True; OperationTimeout after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise OperationTimeout(f"gave up after {timeout:.0f} s waiting until {what}")
        time.sleep(interval)


def can_read(lab: Lab, key: DeployKey) -> bool:
    """The key reads the repo now (through the pinned host key)."""
    repo, branch = _repo(lab)
    return ls_remote(repo, branch, key.private_path, KeyStore(lab).known_hosts).ok


def is_revoked(lab: Lab, key: DeployKey) -> bool:
    """The git host refuses the key. Any other failure (network, host key) is an error, not a yes."""
    repo, branch = _repo(lab)
    access = ls_remote(repo, branch, key.private_path, KeyStore(lab).known_hosts)
    if access.ok:
        return False
    if access.refused:
        return True
    raise OperationError(f"cannot tell whether key {key.fingerprint} still works: {access.detail}")


def add_through_api(lab: Lab, key: DeployKey) -> str | None:
    """Add the key to the repo through the forge's API when a token is set; the forge's name, or None."""
    from homelab.adapters.forge import forge_keys

    repo, _ = _repo(lab)
    api = forge_keys(repo)
    if api is None:
        return None
    if api.find(key.public_line) is None:
        api.add(key.comment or f"homelab-{lab.name}", key.public_line)
    return api.name


def remove_through_api(lab: Lab, key: DeployKey) -> str | None:
    """Remove the key from the repo through the forge's API when a token is set; the forge's name, or None."""
    from homelab.adapters.forge import forge_keys

    repo, _ = _repo(lab)
    api = forge_keys(repo)
    if api is None:
        return None
    key_id = api.find(key.public_line)
    if key_id is not None:
        api.remove(key_id)
    return api.name


@dataclass(frozen=True)
class Rotation:
    """The result of a rotation. ``complete``: every VM uses the new key and it is now the current one."""

    old: DeployKey
    new: DeployKey
    hosts: list[HostOutcome]
    complete: bool
    resumed: bool
    page: KeyPage
    retired: DeployKey | None = None
    date: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def failed(self) -> list[HostOutcome]:
        """The VMs still on the old key (or in an unknown state)."""
        return [h for h in self.hosts if not h.ok]


def require_host_records(lab: Lab, hosts: list[Host]) -> None:
    """Refuse a rotation that would miss a VM: every VM of the lab needs a host record (apply writes them).

    A VM without one would keep the old key, and lose the repo once the old key is removed from the git host.
    A lab with no VMs rotates the key alone.
    """
    recorded = {host.name for host in hosts}
    missing = [vm.name for vm in lab.vms if vm.name not in recorded]
    if missing:
        raise InputError(
            f"cannot rotate the deploy key: no host record for {', '.join(missing)} in {hosts_file(lab)}; "
            "rotating now would leave them on the old key, unable to pull once it is removed. "
            "Run `homelab apply` until every VM is up, then rotate again"
        )


def rotate(
    lab: Lab,
    hosts: list[Host],
    *,
    await_added: Callable[[KeyReport], None],
    progress: Progress = lambda host, step, detail: None,
) -> Rotation:
    """Rotate the deploy key without any VM losing the ability to pull.

    1. Make the new key (or take up the one an unfinished rotation left), show it through
       ``await_added``, which returns once the user has added it to the forge.
    2. Check from this machine that the new key reads the repo.
    3. On each VM: install it beside the old key, fetch with it, switch the ssh config, fetch again,
       then drop the old key file. A VM where any step fails is rolled back to the old key.
    4. Only when every VM switched does the new key become the current one (the old one is retired);
       otherwise it stays pending and the next `rotate` takes it up again.

    Every run that reaches the VMs is appended to the rotation log. Refused (InputError) before anything
    changes while a VM of the lab has no host record (see require_host_records).
    """
    repo, branch = _repo(lab)
    require_host_records(lab, hosts)
    store = KeyStore(lab)
    old = store.require_current()
    target = _target(lab)
    pending = store.pending()
    resumed = pending is not None
    new = pending or store.create(PENDING)
    page = deploy_key_page(repo)
    await_added(KeyReport(new, page, created=not resumed))
    require_access(repo, branch, new.private_path, store.known_hosts, new.fingerprint)
    progress("", "verified", f"the new key {new.fingerprint} reads {repo.url}")
    outcomes = [switch_host(host, lab.name, target, new, old.fingerprint, progress) for host in hosts]
    complete = all(o.ok for o in outcomes)
    retired = None
    if complete:
        retired, new = store.promote_pending()
    result = Rotation(old, new, outcomes, complete, resumed, page, retired)
    _record(store, lab, result)
    return result


def _record(store: KeyStore, lab: Lab, rotation: Rotation) -> None:
    entry = {
        "date": rotation.date,
        "lab": lab.name,
        "old": rotation.old.fingerprint,
        "new": rotation.new.fingerprint,
        "complete": rotation.complete,
        "hosts": [asdict(h) for h in rotation.hosts],
    }
    store.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(store.rotation_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(json.dumps(entry, sort_keys=True) + "\n")


def rotation_log(lab: Lab) -> list[dict[str, object]]:
    """The recorded rotations, oldest first."""
    return read_state_json_lines(KeyStore(lab).rotation_log, "rotation log")


__all__ = [
    "FirstContact",
    "HostKey",
    "HostOutcome",
    "KeyReport",
    "Rotation",
    "Verified",
    "add_through_api",
    "can_read",
    "generate",
    "install",
    "is_revoked",
    "remove_through_api",
    "require_host_records",
    "rotate",
    "rotation_log",
    "show",
    "verify",
    "wait_for",
]
