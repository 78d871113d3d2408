"""git: the config repo's SSH clone URL taken apart, and reading a branch with one key only.

git runs through :func:`homelab.adapters.process.run` with the strict SSH options of
:func:`homelab.adapters.ssh.ssh_command`, without the user's or the system's git config, and never prompts.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from homelab.adapters.process import last_lines, run
from homelab.adapters.ssh import known_hosts_target, ssh_command
from homelab.errors import InputError

_SSH_URL = re.compile(r"^ssh://(?:(?P<user>[^@/\s]+)@)?(?P<host>\[[^\]]+\]|[^:/\s]+)(?::(?P<port>\d+))?/(?P<path>\S+)$")
_SCP_URL = re.compile(r"^(?:(?P<user>[^@/\s]+)@)?(?P<host>[A-Za-z0-9.-]+):(?P<path>[^/\s][^\s]*|/[^\s]+)$")


@dataclass(frozen=True)
class RepoUrl:
    """An SSH clone URL taken apart."""

    url: str
    user: str | None
    host: str
    port: int
    path: str

    @property
    def known_hosts_target(self) -> str:
        """How the host appears in a known_hosts file: ``host`` or ``[host]:port``."""
        return known_hosts_target(self.host, self.port)

    @property
    def project(self) -> str:
        """``owner/repo`` (or ``group/sub/repo``) without a leading slash or a trailing ``.git``."""
        path = self.path.strip("/")
        return path[:-4] if path.endswith(".git") else path


def parse_repo_url(url: str) -> RepoUrl:
    """Parse ``git@host:owner/repo.git`` or ``ssh://git@host[:port]/owner/repo.git``."""
    match = _SSH_URL.match(url)
    if match:
        host = match["host"].strip("[]")
        port = int(match["port"]) if match["port"] else 22
        if not 0 < port < 65536:
            raise InputError(f"repo.url: port {port} is out of range")
        return RepoUrl(url, match["user"], host, port, "/" + match["path"])
    match = _SCP_URL.match(url)
    if match and "://" not in url:
        return RepoUrl(url, match["user"], match["host"], 22, match["path"])
    raise InputError(
        f"repo.url: {url!r} is not an SSH clone URL; use git@host:owner/repo.git or ssh://git@host[:port]/owner/repo.git"
    )


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
    host_key_refused: bool = False  # ssh refused the git host: its key is not the pinned one
    detail: str = ""


def ls_remote(repo: RepoUrl, branch: str, key_file: Path, known_hosts: Path, *, timeout: float = 60) -> RepoAccess:
    """``git ls-remote`` the branch with only ``key_file``, accepting only the host keys in ``known_hosts``.

    Returns ``ok=False, host_key_refused=True`` when ssh refused the git host's key, ``ok=False,
    refused=True`` when the host refused ours, ``ok=False`` with a detail on any other failure, ``ok=True``
    with the branch's commit (None when the branch does not exist).
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
        return RepoAccess(ok=False, host_key_refused=True, detail=last_lines(err))
    refused = "Permission denied" in err
    return RepoAccess(ok=False, refused=refused, detail=last_lines(err))
