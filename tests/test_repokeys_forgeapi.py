"""Adding and removing deploy keys through the GitHub and Gitea APIs (requests-mock at the HTTP edge)."""

from __future__ import annotations

import pytest
import requests_mock

from homelab.adapters.forge import GITEA_TOKEN_ENV, GITHUB_TOKEN_ENV, forge_keys
from homelab.adapters.git import parse_repo_url
from homelab.errors import OperationError

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl homelab-lab-2026-01-01"
OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIVIC02vnjFyL+I4RHfvIGNtOgJMe769VTF1VR4EB3ZB"
GITHUB_KEYS = "https://api.github.com/repos/me/homelab-config/keys"
GITEA_KEYS = "https://codeberg.org/api/v1/repos/me/homelab-config/keys"


def test_no_api_without_a_token_or_for_an_unknown_forge() -> None:
    assert forge_keys(parse_repo_url("git@github.com:me/homelab-config.git"), env={}) is None
    assert forge_keys(parse_repo_url("git@git.home.arpa:me/config.git"), env={GITHUB_TOKEN_ENV: "t"}) is None
    assert forge_keys(parse_repo_url("git@codeberg.org:me/config.git"), env={GITHUB_TOKEN_ENV: "t"}) is None


def test_github_add_find_remove() -> None:
    api = forge_keys(parse_repo_url("git@github.com:me/homelab-config.git"), env={GITHUB_TOKEN_ENV: "s3cret"})
    assert api is not None and api.name == "GitHub"
    with requests_mock.Mocker() as m:
        m.post(GITHUB_KEYS, status_code=201, json={"id": 7, "key": KEY.rsplit(" ", 1)[0], "read_only": True})
        m.get(GITHUB_KEYS, json=[{"id": 3, "key": OTHER}, {"id": 7, "key": KEY.rsplit(" ", 1)[0]}])
        m.delete(f"{GITHUB_KEYS}/7", status_code=204)

        assert api.add("homelab-lab-2026-01-01", KEY) == 7
        assert api.find(KEY) == 7
        assert api.find("ssh-ed25519 AAAAnotthere") is None
        api.remove(7)

    post, *_ = m.request_history
    assert post.headers["Authorization"] == "Bearer s3cret"
    assert post.json() == {"title": "homelab-lab-2026-01-01", "key": KEY.rsplit(" ", 1)[0], "read_only": True}
    assert [(r.method, r.url) for r in m.request_history][-1] == ("DELETE", f"{GITHUB_KEYS}/7")


def test_gitea_add_uses_its_token_header() -> None:
    api = forge_keys(parse_repo_url("ssh://git@codeberg.org/me/homelab-config.git"), env={GITEA_TOKEN_ENV: "tok"})
    assert api is not None and api.name == "Gitea"
    with requests_mock.Mocker() as m:
        m.post(GITEA_KEYS, status_code=201, json={"id": 12})
        assert api.add("t", KEY) == 12
    assert m.request_history[0].headers["Authorization"] == "token tok"
    assert m.request_history[0].json()["read_only"] is True


def test_api_errors_name_the_status_and_never_the_token() -> None:
    api = forge_keys(parse_repo_url("git@github.com:me/homelab-config.git"), env={GITHUB_TOKEN_ENV: "s3cret"})
    assert api is not None
    with requests_mock.Mocker() as m:
        m.post(GITHUB_KEYS, status_code=422, json={"message": "Validation Failed"})
        with pytest.raises(OperationError, match="HTTP 422 Validation Failed") as info:
            api.add("t", KEY)
    assert "s3cret" not in str(info.value)
