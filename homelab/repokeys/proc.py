"""The one subprocess helper of the deploy-key code: logs argv, never a shell, never secret values."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Mapping, Sequence

from homelab.errors import OperationError, OperationTimeout

log = logging.getLogger("homelab.repokeys")


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with captured text output; never raises for a non-zero exit.

    Only argv is logged (it never holds a secret: keys travel as paths or on stdin).
    """
    log.debug("run: %s", " ".join(argv))
    try:
        return subprocess.run(
            list(argv),
            env=dict(env) if env is not None else None,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise OperationTimeout(f"{argv[0]} did not finish within {timeout:.0f} s") from None
    except FileNotFoundError:
        raise OperationError(f"{argv[0]} is not installed (it comes with git / openssh-client)") from None


# git's generic advice after any remote failure; the cause is on the lines before it.
_BOILERPLATE = (
    "fatal: Could not read from remote repository.",
    "Please make sure you have the correct access rights",
    "and the repository exists.",
)


def last_lines(text: str, n: int = 3) -> str:
    """The last ``n`` meaningful lines of a command's output, joined for a one-line message."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and line.strip() not in _BOILERPLATE]
    return " / ".join(lines[-n:])
