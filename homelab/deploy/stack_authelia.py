"""The files the authelia stack gets from the lab (pure): its configuration and its users database.

configuration.yml names the lab's domain (the session cookie covers every ``<subdomain>.<domain>``, the
login portal is the stack's UI address) and keeps everything else at Authelia's defaults; it holds no
secret (Authelia reads those from secrets/ through its ``*_FILE`` variables). users_database.yml holds the
user admin with the bcrypt hash of AUTHELIA_ADMIN_PASSWORD (Authelia's file backend accepts bcrypt): a
secret, masked when no values are given.
"""

from __future__ import annotations

from collections.abc import Mapping

import yaml

from homelab.errors import InputError, SecretError
from homelab.lab.models import Lab, Vm

STACK = "authelia"
ADMIN_USER = "admin"
ADMIN_PASSWORD = "AUTHELIA_ADMIN_PASSWORD"
DEFAULT_SUBDOMAIN = "auth"
DEFAULT_DOMAIN = "home.arpa"  # RFC 8375, as the render uses when the lab names no domain
POLICIES = ("one_factor", "two_factor")
HEADER = "# Written by `homelab deploy` from the lab file; changes made here are overwritten.\n"
MASKED = "(secret: written by `homelab deploy`, shown by `homelab secrets show authelia`)\n"


def lab_domain(lab: Lab) -> str:
    return lab.network.domain or DEFAULT_DOMAIN


def portal_host(lab: Lab) -> str:
    """The login portal's host name: the stack's UI (stacks.authelia.subdomain renames it)."""
    settings = lab.stacks.get(STACK)
    sub = settings.subdomain if settings and settings.subdomain else DEFAULT_SUBDOMAIN
    return f"{sub}.{lab_domain(lab)}"


def default_policy(lab: Lab) -> str:
    """stacks.authelia.env.AUTHELIA_DEFAULT_POLICY, checked: what a protected UI asks for."""
    settings = lab.stacks.get(STACK)
    policy = settings.env.get("AUTHELIA_DEFAULT_POLICY", POLICIES[0]) if settings else POLICIES[0]
    if policy not in POLICIES:
        raise InputError(f"stacks.{STACK}.env.AUTHELIA_DEFAULT_POLICY: must be one of {', '.join(POLICIES)}")
    return policy


def configuration(lab: Lab) -> str:
    """configuration.yml: the file user backend (read-only), SQLite and notifications under /data."""
    domain = lab_domain(lab)
    config: dict[str, object] = {
        "theme": "auto",
        "server": {"address": "tcp://:9091/"},
        "log": {"level": "info"},
        "totp": {"issuer": domain},
        "authentication_backend": {
            # the users database is written by the deploy and mounted read-only: no resets in the portal
            "password_reset": {"disable": True},
            "file": {"path": "/secrets/users_database.yml", "watch": False},
        },
        "access_control": {"default_policy": default_policy(lab)},
        "session": {"cookies": [{"domain": domain, "authelia_url": f"https://{portal_host(lab)}"}]},
        "regulation": {"max_retries": 5, "find_time": "2m", "ban_time": "10m"},
        "storage": {"local": {"path": "/data/db.sqlite3"}},
        # no SMTP server: one-time codes and links are written here
        "notifier": {"filesystem": {"filename": "/data/notification.txt"}},
    }
    return HEADER + yaml.safe_dump(config, sort_keys=False)


def users_database(lab: Lab, password: str) -> str:
    """users_database.yml with the user admin and the bcrypt hash of ``password`` (same password, same file)."""
    from homelab.deploy.stackfiles import htpasswd_line

    hashed = htpasswd_line(ADMIN_USER, password).rstrip("\n").split(":", 1)[1]
    user = {
        "disabled": False,
        "displayname": "Administrator",
        "password": hashed,
        "email": f"{ADMIN_USER}@{lab_domain(lab)}",
        "groups": ["admins"],
    }
    return HEADER + yaml.safe_dump({"users": {ADMIN_USER: user}}, sort_keys=False)


def files(lab: Lab, vm: Vm, values: Mapping[str, str] | None) -> list[tuple[str, str, bool]]:
    """The authelia stack's generated files: (path relative to the stack's folder, content, is secret).

    ``values`` are the stack's secrets by name; None renders the secret file masked (a preview).
    """
    del vm  # the same files on every VM
    if values is None:
        users = MASKED
    elif values.get(ADMIN_PASSWORD):
        users = users_database(lab, values[ADMIN_PASSWORD])
    else:  # never write a users database nobody can log in with
        raise SecretError(f"stack {STACK}: the secret {ADMIN_PASSWORD} has no value")
    return [("configuration.yml", configuration(lab), False), ("secrets/users_database.yml", users, True)]
