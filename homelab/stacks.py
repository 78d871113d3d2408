"""The catalogue of service stacks shipped in stacks/, and what each declares of itself in its stack.yml."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from homelab.paths import data_dir

# libyaml's safe loader when PyYAML was built with it (the files are homelab's own): 10x faster to read
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# A name in stacks.<name>.env that looks like a credential: never accepted in the lab file.
SECRET_LOOKING = re.compile(r"(PASSWORD|PASSWD|TOKEN|SECRET|PRIVATE_KEY|API_KEY|APIKEY|CREDENTIAL)")


@dataclass(frozen=True)
class SecretSpec:
    """A setting of a stack that is a secret: its value never comes from (or goes into) the lab file.

    ``generate``: "password" makes one on the first deploy and keeps it; empty: the user gives it.
    """

    name: str
    description: str = ""
    generate: str = ""


@dataclass(frozen=True)
class StackInfo:
    """One stack: its folder and what stack.yml says of it."""

    name: str
    path: Path
    description: str
    requires: tuple[str, ...]
    secrets: tuple[SecretSpec, ...] = ()
    version_var: str | None = None  # the variable stacks.<name>.version sets


@lru_cache(maxsize=1)
def catalogue() -> dict[str, StackInfo]:
    """Every stack homelab can deploy, by name."""
    found: dict[str, StackInfo] = {}
    root = data_dir("stacks")
    for meta in sorted(root.glob("*/stack.yml")):
        info = yaml.load(meta.read_text(encoding="utf-8"), Loader=SAFE_LOADER) or {}  # noqa: S506 (a safe loader)
        name = meta.parent.name
        found[name] = StackInfo(
            name=name,
            path=meta.parent,
            description=str(info.get("description", "")),
            requires=tuple(info.get("requires", ())),
            secrets=tuple(
                SecretSpec(str(s["name"]), str(s.get("description", "")), str(s.get("generate", "")))
                for s in info.get("secrets", ())
            ),
            version_var=str(info["version_var"]) if info.get("version_var") else None,
        )
    return found


def is_secret_name(stack: str, key: str) -> bool:
    """``key`` is a secret of ``stack`` (declared in its stack.yml), or any name that looks like a credential."""
    info = catalogue().get(stack)
    declared = {s.name for s in info.secrets} if info else set()
    providers = {n for names in DNS_PROVIDER_SECRETS.values() for n in names}
    return key in declared or key in providers or bool(SECRET_LOOKING.search(key))


# Images that talk to the Docker API, and the first release that works with Docker Engine 29 (which refuses
# API versions below 1.44): older ones fail with "client version 1.24 is too old". From the projects'
# release notes (Traefik v3.6.1, Portainer 2.33.4); checked by the lab checks and tests/test_stack_pins.py.
ENGINE_29_MINIMUM: dict[str, tuple[int, ...]] = {
    "traefik": (3, 6, 1),
    "portainer/portainer-ce": (2, 33, 4),
}
_IMAGE = re.compile(r"""image:\s*["']?([^"'\s:$]+):\$\{([A-Z0-9_]+):-([^}]+)\}""")


def pinned_images(stack: str) -> list[tuple[str, str, str]]:
    """(image, version variable, default tag) of every image in the stack's compose files."""
    found = []
    for path in sorted(catalogue()[stack].path.glob("compose*.yml")):
        text = path.read_text(encoding="utf-8")
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


# The credentials Traefik's ACME client (lego) reads for each DNS provider homelab knows; each is a secret
# of the traefik stack, handed over as <NAME>_FILE (lego reads the value from that file).
DNS_PROVIDER_SECRETS: dict[str, tuple[str, ...]] = {
    "cloudflare": ("CF_DNS_API_TOKEN",),
    "digitalocean": ("DO_AUTH_TOKEN",),
    "duckdns": ("DUCKDNS_TOKEN",),
    "gandiv5": ("GANDIV5_PERSONAL_ACCESS_TOKEN",),
    "hetzner": ("HETZNER_API_KEY",),
    "ovh": ("OVH_APPLICATION_KEY", "OVH_APPLICATION_SECRET", "OVH_CONSUMER_KEY"),
    "porkbun": ("PORKBUN_API_KEY", "PORKBUN_SECRET_API_KEY"),
    "route53": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
}
