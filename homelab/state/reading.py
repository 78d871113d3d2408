"""The one reader of homelab's state files: every problem names the file and what to do, never "unexpected error".

A missing file is not a problem (None: nothing recorded yet). Anything else (no permission, a folder where the
file should be, not text, not JSON) is a StateFileError naming the file, or, for a file that only caches what
Proxmox can tell again (hosts.json), a reason to move it aside and rebuild it (see homelab.state.hosts).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from homelab.errors import HomelabError


class StateFileError(HomelabError):
    """A state file exists but cannot be used; the message names it and what to do."""

    def __init__(self, path: Path, problem: str, hint: str = ""):
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" + (f"; {hint}" if hint else ""))


def notice(line: str) -> None:
    """A line for people about local state (a file rebuilt or set aside), on stderr."""
    print(f"homelab: {line}", file=sys.stderr, flush=True)


def read_state_text(path: Path, what: str) -> str | None:
    """The text of the state file ``path`` (``what`` it is, for messages); None when it does not exist."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise StateFileError(path, f"the {what} is a folder, not a file") from None
    except PermissionError:
        raise StateFileError(
            path, f"the {what} cannot be read (permission denied)", "check its owner and mode"
        ) from None
    except UnicodeDecodeError:
        raise StateFileError(path, f"the {what} is not text (damaged)") from None
    except OSError as exc:
        raise StateFileError(path, f"the {what} cannot be read ({exc.strerror or exc})") from None


def read_state_json(path: Path, what: str) -> Any | None:
    """The JSON of the state file ``path``; None when it does not exist."""
    text = read_state_text(path, what)
    if text is None:
        return None
    if not text.strip():
        raise StateFileError(path, f"the {what} is empty (damaged, perhaps by a crash or a full disk)")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise StateFileError(path, f"the {what} is not valid JSON ({_where(exc)})") from None


def read_state_json_lines(path: Path, what: str) -> list[Any]:
    """The records of a JSON-lines state file (an append-only log); empty when it does not exist."""
    text = read_state_text(path, what)
    records = []
    for number, line in enumerate((text or "").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as exc:
            raise StateFileError(path, f"line {number} of the {what} is not valid JSON ({_where(exc)})") from None
    return records


def set_aside(path: Path) -> Path:
    """Move a damaged state file (or whatever stands in its place) out of the way; where it went."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d%H%M%S')}")
    path.rename(aside)
    return aside


def _where(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
    return str(exc)
