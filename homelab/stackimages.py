"""The images a stack's compose files pin (``image: name:${VAR:-tag}``) and which tags are too old for the Docker
Engine the VMs get."""

from __future__ import annotations

import re
from collections.abc import Mapping

from homelab.stacks import StackInfo, catalogue

# Images that talk to the Docker API, and the first release that works with Docker Engine 29 (which refuses
# API versions below 1.44): older ones fail with "client version 1.24 is too old". From the projects'
# release notes (Traefik v3.6.1, Portainer 2.33.4); checked by the lab checks and tests/test_stack_pins.py.
ENGINE_29_MINIMUM: dict[str, tuple[int, ...]] = {
    "traefik": (3, 6, 1),
    "portainer/portainer-ce": (2, 33, 4),
}
_IMAGE = re.compile(r"""image:\s*["']?([^"'\s:$]+):\$\{([A-Z0-9_]+):-([^}]+)\}""")


def pinned_images(stack: str, known: Mapping[str, StackInfo] | None = None) -> list[tuple[str, str, str]]:
    """(image, version variable, default tag) of every image in the stack's compose files."""
    found = []
    for _, text in (catalogue() if known is None else known)[stack].compose_texts:
        found += [(m.group(1), m.group(2), m.group(3)) for m in _IMAGE.finditer(text)]
    return list(dict.fromkeys(found))


def version_tuple(tag: str) -> tuple[int, ...] | None:
    """v3.6.1 -> (3, 6, 1); None for a tag that is not a version (latest)."""
    m = re.match(r"^v?(\d+(?:\.\d+)*)", tag)
    return tuple(int(p) for p in m.group(1).split(".")) if m else None


def too_old_for_engine_29(image: str, tag: str) -> str | None:
    """Why ``image:tag`` cannot talk to Docker Engine 29, or None (fine, or not known to care)."""
    minimum = ENGINE_29_MINIMUM.get(image)
    version = version_tuple(tag)
    if minimum is None or version is None:
        return None
    # a short tag (v3.6) floats to the newest patch release
    if version[: len(minimum)] < minimum[: len(version)] or (len(version) >= len(minimum) and version < minimum):
        return f"{image}:{tag} cannot talk to Docker Engine 29 (needs {'.'.join(map(str, minimum))} or later)"
    return None
