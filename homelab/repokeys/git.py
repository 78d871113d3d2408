"""Reading the config repo with only the deploy key, against only the pinned host key."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from homelab.adapters.process import last_lines, run
from homelab.adapters.ssh import ssh_command
from homelab.errors import OperationError
from homelab.repokeys.forge import RepoUrl
from homelab.repokeys.hostkeys import HostKeyMismatch, describe_mismatch


def git_env(key_file: Path, known_hosts: Path) -> dict[str, str]:
    """The environment for git: our ssh command, no prompts, no user or system git config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "SSH_AUTH_SOCK"))}
    env.update(
        GIT_SSH_COMMAND=ssh_command(str(key_file), str(known_hosts)),
        GIT_TERMINAL_PROMPT="0",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL="/dev/null",
    )
    return env


@dataclass(frozen=True)
class RepoAccess:
    """The result of reading the repo: the branch's commit, or why the key was refused."""

    ok: bool
    commit: str | None = None
    refused: bool = False  # the git host refused the key (not a network or host-key problem)
    detail: str = ""


def ls_remote(repo: RepoUrl, branch: str, key_file: Path, known_hosts: Path, *, timeout: float = 60) -> RepoAccess:
    """``git ls-remote`` the branch with only ``key_file``; raise HostKeyMismatch on a wrong host key.

    Returns ``ok=False, refused=True`` when the host refused the key, ``ok=False`` with a detail on any
    other failure, ``ok=True`` with the branch's commit (None when the branch does not exist).
    """
    proc = run(
        ["git", "ls-remote", "--", repo.url, f"refs/heads/{branch}"],
        base_env=git_env(key_file, known_hosts),
        capture=True,
        check=False,
        timeout=timeout,
        what="read the config repo",
    )
    if proc.returncode == 0:
        fields = proc.stdout.split()
        return RepoAccess(ok=True, commit=fields[0] if fields else None)
    err = proc.stderr
    if "Host key verification failed" in err or "REMOTE HOST IDENTIFICATION HAS CHANGED" in err:
        raise HostKeyMismatch(describe_mismatch(known_hosts, repo))
    refused = "Permission denied" in err
    return RepoAccess(ok=False, refused=refused, detail=last_lines(err))


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
