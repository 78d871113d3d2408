"""What homelab adds to a stack's own compose files (pure): ``compose.homelab.yml`` and ``secrets/secrets.env``.

compose.homelab.yml is an overlay (listed last in COMPOSE_FILE) with what the lab file says beyond the stack's
own files: ``stacks.<name>.extend`` (environment, labels and volumes per service, so a built-in stack can be
extended without copying it) and the forward-auth middleware in front of every Traefik router of the stack
when the lab asks for it (``stacks.<name>.auth`` or ``settings.auth``): Authelia, through the middleware its
stack defines (``authelia@docker``); and the guards of what a first visitor could claim
(:mod:`homelab.deploy.firstvisit`).

secrets/secrets.env holds every secret of the stack as NAME=value (0600), for images that cannot read a
secret from a file (``<NAME>_FILE``); only stacks whose compose files use it get one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from homelab.deploy import firstvisit
from homelab.lab.models import Lab
from homelab.stacks import StackInfo, for_lab

OVERLAY = "compose.homelab.yml"
SECRETS_ENV = "secrets.env"
AUTH_MIDDLEWARE = {"authelia": "authelia@docker"}
# stacks never put behind the lab-wide default: the auth server itself, and Traefik (its dashboard has a login)
NO_DEFAULT_AUTH = frozenset({"authelia", "traefik"})
_ROUTER_RULE = re.compile(r"^traefik\.http\.routers\.([A-Za-z0-9_-]+)\.rule$")
HEADER = "# Written by `homelab deploy` from the lab file (stacks.{name}: extend, auth); changes here are lost.\n"


def auth_for(lab: Lab, name: str) -> str:
    """The forward-auth in front of stack ``name``'s web UIs: authelia or none."""
    settings = lab.stacks.get(name)
    if settings is not None and settings.auth:
        return settings.auth if name != "authelia" else "none"
    info = for_lab(lab).get(name)
    if name in NO_DEFAULT_AUTH or info is None or not info.uis:
        return "none"
    return lab.settings.auth


def guard_middleware(lab: Lab, name: str) -> str | None:
    """The login in front of the stack's first-visit guards (stack.yml ui[].first_visit.guard): the stack's
    forward-auth, else the traefik stack's basic auth; None when the lab turned them off (auth: none)."""
    if firstvisit.opted_out(lab, name):
        return None
    return AUTH_MIDDLEWARE.get(auth_for(lab, name)) or firstvisit.GUARD_MIDDLEWARE


def routers(labels: Mapping[str, Mapping[str, str]]) -> dict[str, list[tuple[str, str | None]]]:
    """Per service, its Traefik routers with their current middlewares label (None when it has none); ``labels``:
    :func:`firstvisit.service_labels` of the stack's compose files."""
    found: dict[str, list[tuple[str, str | None]]] = {}
    for service, own in labels.items():
        for key in own:
            m = _ROUTER_RULE.match(key)
            if m:
                middlewares = own.get(f"traefik.http.routers.{m.group(1)}.middlewares")
                found.setdefault(service, []).append((m.group(1), middlewares))
    return found


def overlay(lab: Lab, name: str, compose_texts: Iterable[str]) -> str | None:
    """compose.homelab.yml for stack ``name`` (its selected compose files' text given), or None: nothing to add."""
    compose_texts = list(compose_texts)
    services: dict[str, dict[str, Any]] = {}
    settings = lab.stacks.get(name)
    info = for_lab(lab).get(name)
    if settings is not None and settings.extend is not None:
        for service, ext in settings.extend.services.items():
            body: dict[str, Any] = {}
            if ext.environment:
                body["environment"] = dict(ext.environment)
            if ext.labels:
                body["labels"] = dict(ext.labels)
            if ext.volumes:
                body["volumes"] = list(ext.volumes)
            services[service] = body
    middleware = AUTH_MIDDLEWARE.get(auth_for(lab, name))
    # a UI its own apps sign in to (Jellyfin's TV and phone apps) gets the forward-auth only on its setup paths
    labels_now = firstvisit.service_labels(compose_texts)  # parsed once for the three uses below
    own_login = firstvisit.own_login_routers(info, labels_now) if info is not None else set()
    if middleware:
        for service, found in routers(labels_now).items():
            labels = services.setdefault(service, {}).setdefault("labels", {})
            for router, current in found:
                if router in own_login:
                    continue
                key = f"traefik.http.routers.{router}.middlewares"
                now = labels.get(key, current)
                labels[key] = middleware if not now else f"{middleware},{now}"
    if info is not None and (guard := guard_middleware(lab, name)):
        for service, labels in firstvisit.guard_labels(lab, info, labels_now, guard, services).items():
            services.setdefault(service, {}).setdefault("labels", {}).update(labels)
    if not services:
        return None
    return HEADER.format(name=name) + yaml.safe_dump({"services": services}, sort_keys=False)


def uses_secrets_env(compose_texts: Iterable[str]) -> bool:
    """A compose file of the stack reads secrets/secrets.env (env_file)."""
    return any(f"secrets/{SECRETS_ENV}" in text for text in compose_texts)


def secrets_env(info: StackInfo, values: Mapping[str, str] | None, quote: Any) -> str | None:
    """secrets/secrets.env: NAME=value of each secret of the stack (None: values not given, masked)."""
    if values is None:
        return None
    lines = ["# Written by `homelab deploy`: the stack's secrets (0600), for images without <NAME>_FILE."]
    lines += [f"{s.name}={quote(s.name, values[s.name], f'secret {s.name}')}" for s in info.secrets if s.name in values]
    return "\n".join(lines) + "\n"
