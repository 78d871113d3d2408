"""Where homelab finds its packaged data and keeps its state."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """A packaged data folder (stacks, templates, inventories/example).

    A wheel carries them under homelab/_data; a source checkout (editable install, tests) has them
    at the top of the repo.
    """
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"homelab's data folder {name!r} is missing from this installation")


def state_root() -> Path:
    """homelab's state folder: $HOMELAB_STATE_DIR, else $XDG_STATE_HOME/homelab, else ~/.local/state/homelab."""
    base = os.environ.get("HOMELAB_STATE_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "homelab"


def state_dir(lab_name: str) -> Path:
    """Per-lab state outside the lab repo: deploy keys, pinned host keys, the last apply's results."""
    return state_root() / lab_name


def config_dir() -> Path:
    """The user's homelab config folder (the secrets file lives here)."""
    base = os.environ.get("HOMELAB_CONFIG_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "homelab"


def debug_log() -> Path:
    """Where unexpected errors write their traceback."""
    return state_root() / "debug.log"
