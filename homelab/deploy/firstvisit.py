"""Nothing a stack serves can be claimed by whoever opens it first (pure): its stack.yml says, per web UI,
what the first visit would give away (``ui[].first_visit``) and this closes it.

- ``guard``: paths behind the lab's login. "/" puts the login in front of the UI's router; other paths get a
  Traefik router of their own (the UI's rule and ``PathRegexp`` ignoring case, as the apps' routes do, at a
  higher priority) with the login, so the rest of the UI is as before: Jellyfin's TV and phone apps keep
  working and only its setup wizard (/Startup) asks for the login. The login is Authelia's when the stack
  is behind it (settings.auth or stacks.<name>.auth: authelia), else Traefik's basic auth ``homelab-guard``
  (the traefik stack's, with the dashboard's user admin and generated password: `homelab secrets show traefik`).
  A UI guarded only on paths is one whose own apps sign in to it: a forward-auth goes on those paths only,
  never in front of all of it (stacks.<name>.extend can still add a middleware to its router by hand).
- ``seed``: a file written into the app's state before its first start (:mod:`homelab.deploy.seeds`), from the
  stack's generated secrets, only when it is not there yet.

``stacks.<name>.auth: none`` turns the guards off; the deploy's plan then warns what is left open.
``stacks.<name>.setup_done: [Jellyseerr]`` lifts a UI's guard once its setup is done (never of one that trusts
the guard's login: the *arr apps).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from homelab.errors import InputError
from homelab.lab.models import Lab
from homelab.stacks import SAFE_LOADER, Seed, StackInfo, WebUi

GUARD_MIDDLEWARE = "homelab-guard@docker"  # defined by the traefik stack (stacks/traefik/compose.yml)
GUARD_PRIORITY = "10000"  # above any Host() rule's default priority (its length)
_LABEL = "traefik.http.routers."


def opted_out(lab: Lab, name: str) -> bool:
    """The lab turned the stack's guards off (stacks.<name>.auth: none)."""
    settings = lab.stacks.get(name)
    return settings is not None and settings.auth == "none"


def service_labels(compose_texts: Iterable[str]) -> dict[str, dict[str, str]]:
    """Every service's labels (a mapping) across the compose files, later files winning (as compose merges them)."""
    found: dict[str, dict[str, str]] = {}
    for text in compose_texts:
        doc = yaml.load(text, Loader=SAFE_LOADER) or {}  # noqa: S506 (a safe loader)
        for service, body in (doc.get("services") or {}).items():
            labels = (body or {}).get("labels") or {}
            if isinstance(labels, list):
                labels = dict(str(item).split("=", 1) for item in labels if "=" in str(item))
            found.setdefault(str(service), {}).update({str(k): str(v) for k, v in labels.items()})
    return found


def _setup_done(lab: Lab, name: str) -> set[str]:
    """The UIs stacks.<name>.setup_done names: set up by the user, their guard lifted."""
    return set(lab.stacks[name].setup_done) if name in lab.stacks else set()


def ui_router(info: StackInfo, ui: WebUi, labels: Mapping[str, Mapping[str, str]]) -> tuple[str, str]:
    """(service, router) of the Traefik router whose rule names the UI's host variable."""
    needle = re.compile(r"\$\{" + re.escape(ui.host_var) + r"[}:]")
    for service, found in labels.items():
        for key, value in found.items():
            if key.startswith(_LABEL) and key.endswith(".rule") and needle.search(value):
                return service, key[len(_LABEL) : -len(".rule")]
    raise InputError(
        f"{info.path / 'stack.yml'}: ui {ui.name}: first_visit.guard needs a Traefik router whose rule names "
        f"${{{ui.host_var}}}; none of the stack's compose files has one"
    )


def _chain(middleware: str, current: str | None) -> str:
    names = [n for n in (current or "").split(",") if n]
    return ",".join(names if middleware in names else [middleware, *names])


def path_rule(rule: str, paths: Iterable[str]) -> str:
    """The UI's rule narrowed to ``paths`` (prefixes, any case; no '$', which compose would read)."""
    alternatives = "|".join(re.escape(p.rstrip("/")) for p in paths)
    return f"({rule}) && PathRegexp(`(?i)^({alternatives})`)"


def guard_labels(
    lab: Lab,
    info: StackInfo,
    compose_labels: Mapping[str, Mapping[str, str]],
    middleware: str,
    overlay: Mapping[str, Mapping[str, Any]],
) -> dict[str, dict[str, str]]:
    """Per service, the labels that put ``middleware`` in front of each guarded path of the stack's UIs.

    ``compose_labels``: :func:`service_labels` of the stack's compose files. ``overlay``: the labels homelab
    already adds per service (stacks.<name>.extend, the forward-auth), which a guard builds on. UIs named in
    stacks.<name>.setup_done get none.
    """
    labels = {service: dict(found) for service, found in compose_labels.items()}
    done = _setup_done(lab, info.name)
    for service, body in overlay.items():
        labels.setdefault(service, {}).update({k: str(v) for k, v in (body.get("labels") or {}).items()})
    added: dict[str, dict[str, str]] = {}
    for ui in info.uis:
        guard = ui.first_visit.guard if ui.first_visit else ()
        if not guard or ui.name in done:  # stacks.<name>.setup_done: the user did it, the login is lifted
            continue
        service, router = ui_router(info, ui, labels)
        own = labels[service]
        prefix = f"{_LABEL}{router}."
        middlewares = own.get(f"{prefix}middlewares")
        if "/" in guard:
            added.setdefault(service, {})[f"{prefix}middlewares"] = _chain(middleware, middlewares)
            continue
        name = f"{router}-setup-guard"
        new = {f"{_LABEL}{name}.{k[len(prefix) :]}": v for k, v in own.items() if k.startswith(prefix)}
        new[f"{_LABEL}{name}.rule"] = path_rule(own[f"{prefix}rule"], guard)
        new[f"{_LABEL}{name}.priority"] = GUARD_PRIORITY
        new[f"{_LABEL}{name}.middlewares"] = _chain(middleware, middlewares)
        if f"{_LABEL}{name}.service" not in new:
            services = sorted({k.split(".")[3] for k in own if k.startswith("traefik.http.services.")})
            if len(services) != 1:
                raise InputError(
                    f"{info.path / 'stack.yml'}: ui {ui.name}: first_visit.guard: router {router} names no service "
                    f"and its container defines {len(services)}: give the router a service label"
                )
            new[f"{_LABEL}{name}.service"] = services[0]
        added.setdefault(service, {}).update(new)
    return added


def own_login_routers(info: StackInfo, labels: Mapping[str, Mapping[str, str]]) -> set[str]:
    """The routers of the UIs guarded only on setup paths: their own apps sign in to them (a browser login page
    in front would lock Jellyfin's TV and phone apps out), so a forward-auth goes only on those paths."""
    return {ui_router(info, ui, labels)[1] for ui, paths in guarded_uis(info) if "/" not in paths}


def guarded_uis(info: StackInfo) -> list[tuple[WebUi, tuple[str, ...]]]:
    return [(ui, ui.first_visit.guard) for ui in info.uis if ui.first_visit and ui.first_visit.guard]


def seeded_uis(info: StackInfo) -> list[tuple[WebUi, Seed]]:
    return [(ui, ui.first_visit.seed) for ui in info.uis if ui.first_visit and ui.first_visit.seed]


def seeded_secrets(info: StackInfo) -> frozenset[str]:
    """The secrets that go only into seeded files (never a file of their own in secrets/)."""
    return frozenset(n for _, seed in seeded_uis(info) for n in seed.secrets.values())


def describe(lab: Lab, info: StackInfo, forward_auth: str) -> tuple[list[str], list[str]]:
    """(plan lines, warnings) saying what of the stack's first visits is guarded or seeded, and where the
    credentials are (``forward_auth``: the stack's, authelia or none)."""
    lines: list[str] = []
    warnings: list[str] = []
    done = _setup_done(lab, info.name)
    guarded = [
        ui.name + ("" if "/" in paths else " " + ", ".join(paths))
        for ui, paths in guarded_uis(info)
        if ui.name not in done
    ]
    if done:
        lines.append(f"{info.name}: {', '.join(sorted(done))} set up by you (stacks.{info.name}.setup_done): own login")
    if guarded and opted_out(lab, info.name):
        warnings.append(
            f"stacks.{info.name}.auth is none: {', '.join(guarded)} can be claimed by whoever opens them first"
        )
    elif guarded:
        login = (
            "Authelia's login"
            if forward_auth == "authelia"
            else "the lab's login (user admin, `homelab secrets show traefik`)"
        )
        lines.append(f"{info.name}: {', '.join(guarded)} behind {login}")
    seeded = [ui.name for ui, _ in seeded_uis(info)]
    if seeded:
        lines.append(
            f"{info.name}: {', '.join(seeded)} set up before their first start, once "
            f"(API keys and logins: `homelab secrets show {info.name}`)"
        )
    return lines, warnings
