"""The config repo's address: parse SSH clone URLs, name the deploy-key settings page, know forge host keys."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

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
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

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


@dataclass(frozen=True)
class KeyPage:
    """Where the user adds a deploy key: a forge's settings page, or a hint when the forge is unknown."""

    forge: str | None
    url: str | None
    hint: str


def deploy_key_page(repo: RepoUrl) -> KeyPage:
    """The deploy-key settings page of the repo, for GitHub, GitLab and Gitea/Forgejo hosts."""
    host = repo.host.lower()
    project = repo.project
    base = f"https://{host}/{project}"
    if host == "github.com":
        url = f"{base}/settings/keys"
        return KeyPage("GitHub", url, f"add it as a deploy key (read-only, no write access) at {url}")
    if host == "gitlab.com" or host.startswith("gitlab."):
        url = f"{base}/-/settings/repository"
        return KeyPage("GitLab", url, f"add it under Deploy keys (no write access) at {url}")
    if host == "codeberg.org" or host.startswith(("gitea.", "forgejo.")):
        url = f"{base}/settings/keys"
        return KeyPage("Gitea/Forgejo", url, f"add it as a deploy key (read-only) at {url}")
    return KeyPage(
        None,
        None,
        f"add it as a read-only deploy key in the settings of {project} on {repo.host} "
        f"(or to the authorized_keys of {repo.user or 'the git user'} there)",
    )


@dataclass(frozen=True)
class PublishedKey:
    """A forge's published host key fingerprint, shipped with homelab."""

    forge: str
    key_type: str
    fingerprint: str


@cache
def _published() -> dict[str, dict[str, str]]:
    text = resources.files("homelab.repokeys").joinpath("forge_host_keys.json").read_text(encoding="utf-8")
    data: dict[str, dict[str, str]] = {k: v for k, v in json.loads(text).items() if not k.startswith("_")}
    return data


def published_host_keys(host: str, port: int = 22) -> list[PublishedKey]:
    """The published host key fingerprints of a well-known forge; empty for any other host."""
    entry = _published().get(host.lower()) if port == 22 else None
    if not entry:
        return []
    return [PublishedKey(entry["name"], kind, fp) for kind, fp in entry.items() if kind != "name"]
