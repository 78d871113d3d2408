"""The containers a VM runs when its stacks are up: each stack's compose services, as `docker compose up -d` in
the stack's folder starts them (its .env's COMPOSE_FILE and COMPOSE_PROJECT_NAME decide which and under what
name). The preview compares them with what Docker runs, in one call per VM, to say whether anything is to start.
"""

from __future__ import annotations

from typing import Any

import yaml

from homelab.deploy.render import RenderedStack, VmRender
from homelab.stacks import SAFE_LOADER


def env_value(env: str, key: str) -> str | None:
    """A value of a rendered .env (``KEY=value`` or ``KEY='value'``), None when it is not set."""
    for line in env.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            value = value.strip()
            return value[1:-1] if len(value) > 1 and value[0] == value[-1] == "'" else value
    return None


def stack_containers(stack: RenderedStack) -> list[str]:
    """``project/service`` of every service the stack's compose files start (services with profiles start only
    when asked for: not counted)."""
    files = {f.path: f.content for f in stack.files if not f.secret}
    env = files.get(f"{stack.name}/.env", "")
    project = env_value(env, "COMPOSE_PROJECT_NAME") or stack.name
    services: dict[str, Any] = {}
    for name in (env_value(env, "COMPOSE_FILE") or "compose.yml").split(":"):
        data = yaml.load(files.get(f"{stack.name}/{name}", ""), Loader=SAFE_LOADER) or {}  # noqa: S506 (a safe loader)
        for service, spec in (data.get("services") or {}).items():
            merged = services.setdefault(str(service), {})
            merged.update(spec if isinstance(spec, dict) else {})
    return [f"{project}/{s}" for s, spec in services.items() if not spec.get("profiles")]


def vm_containers(render: VmRender) -> list[str]:
    """``project/service`` of every container the VM runs once its stacks are up, sorted."""
    return sorted(c for stack in render.stacks for c in stack_containers(stack))
