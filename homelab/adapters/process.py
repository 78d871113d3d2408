"""The one way homelab runs outside programs (packer, git, ssh-keyscan): argv only, logged, never a shell.

The command is a list, so nothing in a lab file or a secret is ever parsed by a shell. Secrets reach a
program only through its environment; their values are masked in every line we pass on or log.

Two modes over the same start and stop:

- streaming (the default): stdout and stderr merged, in order, line by line to a callback and a log file;
- capture (``capture=True``): stdout and stderr kept apart and returned, for programs whose output we parse.

Every program runs in its own session. On a timeout or Ctrl-C its whole process group is stopped:
SIGTERM, STOP_GRACE seconds to clean up, then SIGKILL for whatever is left.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from homelab.errors import OperationError, OperationTimeout

log = logging.getLogger(__name__)

OnLine = Callable[[str], None]
Process = subprocess.Popen[str]

# Seconds a stopped program gets to clean up after SIGTERM before its process group is killed.
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
    """How a run went: its argv, exit status, wall time, where its output was logged, its last lines.

    ``stdout`` and ``stderr`` hold the (masked) output in capture mode; they are empty when it was streamed.
    """

    argv: tuple[str, ...]
    returncode: int
    seconds: float
    log_path: Path | None
    tail: list[str] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""


def which(program: str) -> str | None:
    """The full path of a program on PATH, or None."""
    return shutil.which(program)


@dataclass(frozen=True)
class _Command:
    """A resolved command: what to start, in which environment, and how to show it without its secrets."""

    argv: tuple[str, ...]
    program: str
    env: dict[str, str] = field(repr=False)
    shown_env: str
    what: str
    mask: Callable[[str], str]

    @property
    def line(self) -> str:
        """The command as a shell would show it (for the log only: it never goes through a shell)."""
        return shlex.join(self.argv)


def _masker(secrets: Iterable[str]) -> Callable[[str], str]:
    values = sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True)

    def mask(line: str) -> str:
        for value in values:
            line = line.replace(value, "***")
        return line

    return mask


def _resolve(
    argv: Sequence[str],
    env: Mapping[str, str] | None,
    secret_env: Mapping[str, str] | None,
    base_env: Mapping[str, str] | None,
    what: str | None,
) -> _Command:
    """The program's path (ToolMissing when there is none), its environment and the masking of its secrets."""
    if not argv:
        raise ValueError("run() needs a program to run")
    what = what or Path(argv[0]).name
    full_env = dict(os.environ if base_env is None else base_env)
    full_env.update(env or {})
    full_env.update(secret_env or {})
    program = argv[0] if os.sep in argv[0] else shutil.which(argv[0], path=full_env.get("PATH"))
    if program is None or not os.access(program, os.X_OK):
        raise ToolMissing(f"{argv[0]}: not installed (or not on PATH); install it to {what}")
    shown = [f"{k}={shlex.quote(v)}" for k, v in sorted((env or {}).items())]
    shown += [f"{k}=***" for k in sorted(secret_env or {})]
    return _Command(tuple(argv), program, full_env, " ".join(shown), what, _masker((secret_env or {}).values()))


def _start(command: _Command, cwd: Path | None, *, capture: bool, stdin: bool) -> Process:
    """Start the program in a session of its own, so that stopping it stops its children too."""
    return subprocess.Popen(
        [command.program, *command.argv[1:]],
        cwd=cwd,
        env=command.env,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if capture else subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,
    )


def _signal_group(process: Process, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass  # the whole group is gone already


def _stop(process: Process) -> None:
    """Stop a program and everything it started: its process group holds its children (Packer's plugins,
    Ansible, ssh). SIGTERM lets Packer cancel the build and clean up; whatever is still there after
    STOP_GRACE seconds, or outlives the program itself, is killed."""
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process, signal.SIGKILL)
    process.wait()


@contextmanager
def _supervised(process: Process, timeout: float | None) -> Iterator[threading.Event]:
    """Stop the program when ``timeout`` seconds pass (the event is set then) or when the caller is
    interrupted (Ctrl-C) or fails while it runs."""
    expired = threading.Event()
    timer = None
    if timeout is not None:

        def expire() -> None:
            expired.set()
            _stop(process)

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
    try:
        yield expired
    except BaseException:
        _stop(process)
        raise
    finally:
        if timer is not None:
            timer.cancel()


@dataclass(frozen=True)
class _Output:
    """Where a run's output goes: the log file, the caller's callback, the tail kept for messages."""

    log: IO[str] | None
    on_line: OnLine | None
    capture: bool
    tail_lines: int

    def sinks(self) -> list[OnLine]:
        found: list[OnLine] = []
        if self.log is not None:
            found.append(_log_writer(self.log))
        if self.on_line is not None:
            found.append(self.on_line)
        return found


def _log_writer(out: IO[str]) -> OnLine:
    def write(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    return write


def _collect(
    process: Process, mask: Callable[[str], str], output: _Output, input: str | None
) -> tuple[list[str], str, str]:
    """Read the program's output until it closes: (last lines, stdout, stderr); the latter two in capture mode."""
    sinks = output.sinks()
    if output.capture:
        stdout, stderr = (mask(text or "") for text in process.communicate(input))
        lines = stdout.splitlines() + stderr.splitlines()
        for line in lines:  # the log gets them after the fact, stdout first
            for sink in sinks:
                sink(line)
        return lines[-output.tail_lines :], stdout, stderr
    tail: list[str] = []
    assert process.stdout is not None
    for raw in process.stdout:
        line = mask(raw.rstrip("\n"))
        tail.append(line)
        del tail[: -output.tail_lines]
        for sink in sinks:
            sink(line)
    return tail, "", ""


def _open_log(log_path: Path | None, command: _Command) -> IO[str] | None:
    if log_path is None:
        return None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = log_path.open("a", encoding="utf-8")
    out.write(f"$ {command.line}\n")
    if command.shown_env:
        out.write(f"# environment: {command.shown_env}\n")
    out.flush()
    return out


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    secret_env: Mapping[str, str] | None = None,
    base_env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log_path: Path | None = None,
    on_line: OnLine | None = None,
    capture: bool = False,
    input: str | None = None,
    timeout: float | None = None,
    check: bool = True,
    what: str | None = None,
    tail_lines: int = 20,
) -> RunResult:
    """Run ``argv`` (never through a shell), streaming its output or, with ``capture``, returning it.

    env: extra environment variables (logged by name and value); secret_env: extra variables whose values
    are secrets (logged by name only, masked in the output); base_env: the environment they are added to
    (default: this process's). input: text for the program's stdin (otherwise stdin is empty). what: what
    the run is for, in messages ("build template web").

    Raises ToolMissing when the program is not installed, ToolFailed on a non-zero exit (when ``check``),
    OperationTimeout after ``timeout`` seconds (the program and its children are stopped first).
    """
    command = _resolve(argv, env, secret_env, base_env, what)
    log.info("run: %s%s (cwd %s)", f"{command.shown_env} " if command.shown_env else "", command.line, cwd or ".")
    out = _open_log(log_path, command)
    try:
        returncode, seconds, (tail, stdout, stderr) = _execute(
            command, cwd, _Output(out, on_line, capture, tail_lines), input, timeout
        )
    finally:
        if out is not None:
            out.close()
    log.info("run: %s exited %s after %.1fs", argv[0], returncode, seconds)
    if check and returncode != 0:
        where = f" (full output: {log_path})" if log_path else ""
        raise ToolFailed(f"{command.what}: {argv[0]} exited with status {returncode}{where}", returncode, tail[-8:])
    return RunResult(command.argv, returncode, seconds, log_path, tail, stdout, stderr)


def _execute(
    command: _Command, cwd: Path | None, output: _Output, input: str | None, timeout: float | None
) -> tuple[int, float, tuple[list[str], str, str]]:
    """Start the program, read its output, wait for it: (exit status, seconds, what _collect read)."""
    started = time.monotonic()
    process = _start(command, cwd, capture=output.capture, stdin=input is not None)
    with _supervised(process, timeout) as expired:
        collected = _collect(process, command.mask, output, input)
        returncode = process.wait()
    seconds = time.monotonic() - started
    if output.log is not None:
        output.log.write(f"# exit status {returncode} after {seconds:.1f}s\n")
    if expired.is_set():
        raise OperationTimeout(f"{command.what}: {command.argv[0]} did not finish within {timeout:g}s and was stopped")
    return returncode, seconds, collected


# git's generic advice after any remote failure; the cause is on the lines before it.
_BOILERPLATE = (
    "fatal: Could not read from remote repository.",
    "Please make sure you have the correct access rights",
    "and the repository exists.",
)


def last_lines(text: str, n: int = 3) -> str:
    """The last ``n`` meaningful lines of a program's output, joined for a one-line message."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and line.strip() not in _BOILERPLATE]
    return " / ".join(lines[-n:])


def start_python(module: str, *args: str, stderr: IO[str]) -> Process:
    """Start ``python -m module args`` in the background (the demo's fake Proxmox): stdout is a pipe for its
    first lines, stderr goes to ``stderr``. It stays in our process group, so a Ctrl-C reaches it too."""
    argv = [sys.executable, "-m", module, *args]
    log.info("start: %s", shlex.join(argv))
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True)


def terminate(process: Process, grace: float = 10.0) -> None:
    """Stop a background process: SIGTERM, ``grace`` seconds, then SIGKILL. Safe to call twice."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(grace)
