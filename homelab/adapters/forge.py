"""The forges (GitHub, GitLab, Gitea/Forgejo): where a repo's deploy keys are set, their published host
keys, and adding and removing deploy keys through their APIs when a token is in the environment.

GitHub: ``HOMELAB_GITHUB_TOKEN`` (a fine-grained token with "Administration: write" on the repo).
Gitea/Forgejo (codeberg.org, gitea.*, forgejo.* hosts): ``HOMELAB_GITEA_TOKEN``.
Keys are added read-only. The token is sent only to the repo's own forge and never printed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Protocol

from homelab.adapters.git import RepoUrl
from homelab.errors import OperationError


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
    text = resources.files("homelab.adapters").joinpath("forge_host_keys.json").read_text(encoding="utf-8")
    data: dict[str, dict[str, str]] = {k: v for k, v in json.loads(text).items() if not k.startswith("_")}
    return data


def published_host_keys(host: str, port: int = 22) -> list[PublishedKey]:
    """The published host key fingerprints of a well-known forge; empty for any other host."""
    entry = _published().get(host.lower()) if port == 22 else None
    if not entry:
        return []
    return [PublishedKey(entry["name"], kind, fp) for kind, fp in entry.items() if kind != "name"]


# --- the APIs ---------------------------------------------------------------------------------------

GITHUB_TOKEN_ENV = "HOMELAB_GITHUB_TOKEN"
GITEA_TOKEN_ENV = "HOMELAB_GITEA_TOKEN"
TIMEOUT = 30


class ForgeKeys(Protocol):
    """The deploy keys of one repo on a forge."""

    name: str

    def add(self, title: str, public_line: str) -> int:
        """Add a read-only deploy key; return its id."""

    def find(self, public_line: str) -> int | None:
        """The id of the deploy key with this key material, if the repo has it."""

    def remove(self, key_id: int) -> None:
        """Remove a deploy key by id."""


def _material(public_line: str) -> str:
    return " ".join(public_line.split()[:2])


@dataclass
class _RestKeys:
    """Both APIs have the same shape: list/add at .../keys, delete at .../keys/<id>."""

    name: str
    keys_url: str
    headers: dict[str, str] = field(repr=False)

    def _call(self, method: str, url: str, **kwargs: Any) -> Any:
        import requests

        try:
            response = requests.request(method, url, headers=self.headers, timeout=TIMEOUT, **kwargs)
        except requests.RequestException as exc:
            raise OperationError(f"{self.name} API: {method} {url}: {type(exc).__name__}") from None
        if response.status_code >= 400:
            try:
                message = response.json().get("message", "")
            except ValueError:
                message = ""
            raise OperationError(f"{self.name} API: {method} {url}: HTTP {response.status_code} {message}".rstrip())
        return response.json() if response.content else None

    def add(self, title: str, public_line: str) -> int:
        body = {"title": title, "key": _material(public_line), "read_only": True}
        return int(self._call("POST", self.keys_url, json=body)["id"])

    def find(self, public_line: str) -> int | None:
        wanted = _material(public_line)
        for entry in self._call("GET", self.keys_url) or []:
            if _material(str(entry.get("key", ""))) == wanted:
                return int(entry["id"])
        return None

    def remove(self, key_id: int) -> None:
        self._call("DELETE", f"{self.keys_url}/{key_id}")


def forge_keys(repo: RepoUrl, env: dict[str, str] | None = None) -> ForgeKeys | None:
    """The repo's deploy keys through its forge's API, or None (unknown forge, or no token set)."""
    env = dict(os.environ) if env is None else env
    host = repo.host.lower()
    owner_repo = repo.project
    if host == "github.com" and env.get(GITHUB_TOKEN_ENV):
        return _RestKeys(
            "GitHub",
            f"https://api.github.com/repos/{owner_repo}/keys",
            {
                "Authorization": f"Bearer {env[GITHUB_TOKEN_ENV]}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
            },
        )
    if (host == "codeberg.org" or host.startswith(("gitea.", "forgejo."))) and env.get(GITEA_TOKEN_ENV):
        return _RestKeys(
            "Gitea",
            f"https://{host}/api/v1/repos/{owner_repo}/keys",
            {"Authorization": f"token {env[GITEA_TOKEN_ENV]}", "Accept": "application/json"},
        )
    return None
