"""The catalogue of service stacks shipped in stacks/."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from homelab.paths import data_dir


@dataclass(frozen=True)
class StackInfo:
    """One stack: its folder and what stack.yml says of it."""

    name: str
    path: Path
    description: str
    requires: tuple[str, ...]


@lru_cache(maxsize=1)
def catalogue() -> dict[str, StackInfo]:
    """Every stack homelab can deploy, by name."""
    found: dict[str, StackInfo] = {}
    root = data_dir("stacks")
    for meta in sorted(root.glob("*/stack.yml")):
        info = yaml.safe_load(meta.read_text(encoding="utf-8")) or {}
        name = meta.parent.name
        found[name] = StackInfo(
            name=name,
            path=meta.parent,
            description=str(info.get("description", "")),
            requires=tuple(info.get("requires", ())),
        )
    return found
