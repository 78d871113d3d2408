"""The settings an app gets before its first start, so that its first visitor has nothing to claim (pure).

Each kind writes one file into the app's state (stack.yml ``ui[].first_visit.seed``), from the stack's
generated secrets; the deploy writes it only when it is not there yet (the app and its user own it after):

- servarr (Sonarr, Radarr, Prowlarr): config.xml with the API key, AuthenticationMethod External and
  AuthenticationRequired Enabled. Their own login (Forms or Basic) checks a user in their database, which no
  file can create: with Forms and no user nobody gets in, with None they ask the first visitor to make the
  login. External makes them trust the login in front of them (the guard of homelab/deploy/firstvisit.py,
  which is why every servarr seed is declared with ``guard: [/]``). DisabledForLocalAddresses would open them
  to everything behind Traefik (a local address), so it is Enabled.
- qbittorrent: qBittorrent.conf with the web UI's user admin and its password as qBittorrent keeps it
  (PBKDF2-HMAC-SHA512, 100000 iterations, 16-byte salt: ``@ByteArray(<salt b64>:<key b64>)``), downloads
  into the /data tree; with it the linuxserver image makes no temporary password.
- bazarr: config/config.yaml with form login, user admin, the password's MD5 (what Bazarr compares) and the
  API key; Bazarr fills in every other setting with its defaults.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping

import yaml

from homelab.stacks import Seed

LOGIN_USER = "admin"
QBITTORRENT_ITERATIONS = 100_000
HEADER = "Written once by `homelab deploy` before the app's first start; yours to change (never rewritten)."


def servarr_config(api_key: str, guarded: bool = True) -> str:
    """config.xml of Sonarr, Radarr or Prowlarr: every other key gets the app's default on its first start.

    ``guarded`` False (the stack's guard turned off): no authentication method, so the app asks its first
    visitor for one, as it does without homelab.
    """
    auth = "  <AuthenticationMethod>External</AuthenticationMethod>\n" if guarded else ""
    return (
        f"<!-- {HEADER} -->\n"
        "<Config>\n"
        f"  <ApiKey>{api_key}</ApiKey>\n"
        f"{auth}"
        "  <AuthenticationRequired>Enabled</AuthenticationRequired>\n"
        "  <BindAddress>*</BindAddress>\n"
        "</Config>\n"
    )


def qbittorrent_hash(password: str, salt: bytes | None = None) -> str:
    """``@ByteArray(<salt>:<key>)`` as qBittorrent's WebUI\\Password_PBKDF2 holds it.

    The salt is derived from the password unless given (the password is random and long, the salt only has to
    be unique), so the same password renders the same file.
    """
    if salt is None:
        salt = hashlib.sha256(b"homelab-qbittorrent\0" + password.encode()).digest()[:16]
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, QBITTORRENT_ITERATIONS, 64)
    return f"@ByteArray({base64.b64encode(salt).decode()}:{base64.b64encode(key).decode()})"


def qbittorrent_config(password: str) -> str:
    """qBittorrent.conf: the web UI's login, the legal notice accepted, downloads into /data/torrents."""
    return "\n".join(
        [
            f"# {HEADER}",
            "[LegalNotice]",
            "Accepted=true",
            "",
            "[BitTorrent]",
            "Session\\DefaultSavePath=/data/torrents",
            "",
            "[Preferences]",
            "WebUI\\LocalHostAuth=true",
            f'WebUI\\Password_PBKDF2="{qbittorrent_hash(password)}"',
            f"WebUI\\Username={LOGIN_USER}",
            "",
        ]
    )


def bazarr_config(password: str, api_key: str) -> str:
    """Bazarr's config.yaml: form login as admin (its password's MD5, which is what Bazarr compares), the API key."""
    auth = {
        "type": "form",
        "username": LOGIN_USER,
        "password": hashlib.md5(password.encode(), usedforsecurity=False).hexdigest(),
        "apikey": api_key,
    }
    return f"# {HEADER}\n" + yaml.safe_dump({"auth": auth}, sort_keys=False)


def seed_content(seed: Seed, values: Mapping[str, str], guarded: bool = True) -> str:
    """The seeded file of ``seed`` from the stack's secret values (by name); ``guarded``: the lab's login is in
    front of the whole UI."""
    role = {r: values[name] for r, name in seed.secrets.items()}
    if seed.kind == "servarr":
        return servarr_config(role["api_key"], guarded)
    if seed.kind == "qbittorrent":
        return qbittorrent_config(role["password"])
    if seed.kind == "bazarr":
        return bazarr_config(role["password"], role["api_key"])
    raise ValueError(f"unknown seed kind {seed.kind!r}")
