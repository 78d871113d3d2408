"""The one way homelab runs outside programs (packer, terraform): argv only, logged, streamed.

Never a shell: the command is a list, so nothing in a lab file or a secret is ever parsed by one.
Output (stdout and stderr merged, in order) goes line by line to a progress callback and to a log file.
Secrets reach a tool only through its environment; their values are masked in every line we pass on.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from homelab.errors import OperationError, OperationTimeout

log = logging.getLogger(__name__)

OnLine = Callable[[str], None]

# Seconds a stopped tool gets to clean up after SIGTERM before its process group is killed.
STOP_GRACE = 10.0


class ToolMissing(OperationError):
    """The program is not installed (or not on PATH)."""


class ToolFailed(OperationError):
    """The program exited with a status other than 0; ``tail`` holds its last lines of output."""

    def __init__(self, message: str, returncode: int, tail: list[str]):
        super().__init__(message)
        self.returncode = returncode
        self.tail = tail

    def lines(self) -> list[str]:
        return [str(self), *(f"  | {line}" for line in self.tail)]


@dataclass(frozen=True)
class RunResult:
    """How a run went: its argv, exit status, wall time and where its output was logged."""

    argv: tuple[str, ...]
    returncode: int
    seconds: float
    log_path: Path | None
    tail: list[str] = field(default_factory=list)


def which(program: str) -> str | None:
    """The full path of a program on PATH, or None."""
    return shutil.which(program)


def _masker(secrets: Iterable[str]) -> Callable[[str], str]:
    values = sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True)

    def mask(line: str) -> str:
        for value in values:
            line = line.replace(value, "***")
        return line

    return mask


def _signal_group(process: subprocess.Popen[str], signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass  # the whole group is gone already


def _stop(process: subprocess.Popen[str]) -> None:
    """Stop a tool and everything it started: it runs in its own session, so its process group holds its
    children (Packer's plugins, Ansible). SIGTERM lets Packer cancel the build and clean up; whatever is
    still there after STOP_GRACE seconds, or outlives the tool itself, is killed."""
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process, signal.SIGKILL)
    process.wait()


def run(
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    secret_env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log_path: Path | None = None,
    on_line: OnLine | None = None,
    timeout: float | None = None,
    check: bool = True,
    what: str | None = None,
    tail_lines: int = 20,
) -> RunResult:
    """Run ``argv`` (never through a shell) and stream its output.

    env: extra environment variables (logged by name and value); secret_env: extra variables whose values
    are secrets (logged by name only, masked in the output). Raises ToolMissing when the program is not
    installed, ToolFailed on a non-zero exit (when ``check``), OperationTimeout after ``timeout`` seconds.
    """
    if not argv:
        raise ValueError("run() needs a program to run")
    what = what or Path(argv[0]).name
    program = argv[0] if os.sep in argv[0] else which(argv[0])
    if program is None or not os.access(program, os.X_OK):
        raise ToolMissing(f"{argv[0]}: not installed (or not on PATH); install it to {what}")
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.update(secret_env or {})
    mask = _masker((secret_env or {}).values())
    shown_env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted((env or {}).items()))
    shown_env += "".join(f" {k}=***" for k in sorted(secret_env or {}))
    command_line = " ".join(shlex.quote(a) for a in argv)
    log.info("run: %s%s (cwd %s)", f"{shown_env.strip()} " if shown_env.strip() else "", command_line, cwd or ".")

    out = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = log_path.open("a", encoding="utf-8")
        out.write(f"$ {command_line}\n")
        if shown_env.strip():
            out.write(f"# environment: {shown_env.strip()}\n")
        out.flush()
    tail: list[str] = []
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            [program, *argv[1:]],
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
        )
        timed_out = threading.Event()
        timer = None
        if timeout is not None:

            def expire() -> None:
                timed_out.set()
                _stop(process)

            timer = threading.Timer(timeout, expire)
            timer.daemon = True
            timer.start()
        try:
            assert process.stdout is not None
            for raw in process.stdout:
                line = mask(raw.rstrip("\n"))
                tail.append(line)
                del tail[:-tail_lines]
                if out is not None:
                    out.write(line + "\n")
                    out.flush()
                if on_line is not None:
                    on_line(line)
            returncode = process.wait()
        except BaseException:
            _stop(process)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        seconds = time.monotonic() - started
        if out is not None:
            out.write(f"# exit status {returncode} after {seconds:.1f}s\n")
        if timed_out.is_set():
            raise OperationTimeout(f"{what}: {argv[0]} did not finish within {timeout:g}s and was stopped")
    finally:
        if out is not None:
            out.close()
    log.info("run: %s exited %s after %.1fs", argv[0], returncode, seconds)
    result = RunResult(tuple(argv), returncode, seconds, log_path, tail)
    if check and returncode != 0:
        where = f" (full output: {log_path})" if log_path else ""
        raise ToolFailed(f"{what}: {argv[0]} exited with status {returncode}{where}", returncode, tail[-8:])
    return result
