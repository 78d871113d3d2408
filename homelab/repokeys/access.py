"""Reading the config repo with only the deploy key, against only the pinned host key."""

from __future__ import annotations

from pathlib import Path

from homelab.adapters import git
from homelab.adapters.git import RepoAccess, RepoUrl
from homelab.errors import OperationError
from homelab.repokeys.hostkeys import HostKeyMismatch, describe_mismatch


def ls_remote(repo: RepoUrl, branch: str, key_file: Path, known_hosts: Path) -> RepoAccess:
    """The branch read with only ``key_file`` (see :func:`homelab.adapters.git.ls_remote`); HostKeyMismatch,
    with the pinned and the presented fingerprints, when the git host's key is not the pinned one."""
    access = git.ls_remote(repo, branch, key_file, known_hosts)
    if access.host_key_refused:
        raise HostKeyMismatch(describe_mismatch(known_hosts, repo))
    return access


def require_access(repo: RepoUrl, branch: str, key_file: Path, known_hosts: Path, fingerprint: str) -> str:
    """The branch's commit read with the key; OperationError naming the cause when it cannot be read."""
    access = ls_remote(repo, branch, key_file, known_hosts)
    if not access.ok:
        if access.refused:
            raise OperationError(
                f"{repo.known_hosts_target} refused deploy key {fingerprint}: it has not been added to "
                f"{repo.project} (or not yet): {access.detail}"
            )
        raise OperationError(f"cannot read {repo.url} with deploy key {fingerprint}: {access.detail}")
    if access.commit is None:
        raise OperationError(f"{repo.url} has no branch {branch!r} (repo.branch in the lab file)")
    return access.commit
