"""The real-guest tests run in a second pytest process, beside the rest of the suite.

The real-guest tests (marked ``realvm``, tests/test_e2e_guest.py) are one long sequence of QEMU/TCG emulation:
one process busy on one core for twenty minutes or more. The rest of the suite mostly waits (on sshd, dockerd,
the fake's clock, ansible's round trips). One after the other their times add up; side by side the run takes
about as long as the longer of the two. So when a session has selected realvm tests *and* others, those are
deselected here and a child ``python -m pytest -q -ra <their node ids>`` starts at once, its output going to a
log; at the end of the session the parent waits for it, prints its summary (the whole log when it failed), and
the session fails when the child did. Ctrl-C in the parent stops the child and its guests.

Nothing changes when only realvm tests are selected, when the session only collects, or with
``HOMELAB_REALVM_BESIDE=0`` (then they run in this process, in file order like every other module).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

CHILD = "HOMELAB_REALVM_CHILD"
SWITCH = "HOMELAB_REALVM_BESIDE"
MARK = "realvm"

_KEY = pytest.StashKey["Beside"]()


class Beside:
    """The child pytest process that runs the realvm tests."""

    def __init__(self, rootdir: Path, nodeids: list[str]) -> None:
        self.nodeids = nodeids
        fd, name = tempfile.mkstemp(prefix="homelab-realvm-", suffix=".log")
        self.log = Path(name)
        argv = [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", *nodeids]
        with os.fdopen(fd, "wb") as out:
            self.process = subprocess.Popen(
                argv,
                cwd=rootdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, CHILD: "1"},
                start_new_session=True,  # Ctrl-C in the terminal reaches the parent, which stops the child
            )
        self.started = time.monotonic()
        self.code: int | None = None
        self.minutes = 0.0

    def wait(self) -> int:
        if self.code is None:
            self.code = self.process.wait()
            self.minutes = (time.monotonic() - self.started) / 60
        return self.code

    def stop(self) -> None:
        """Stop the child (SIGINT first: its fixtures stop the guests and delete their network namespace)."""
        if self.process.poll() is not None:
            return
        for sig, grace in ((signal.SIGINT, 60.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(grace)
                return
            except subprocess.TimeoutExpired:
                continue

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def summary(self, failed: bool) -> list[str]:
        """What the parent prints: the whole log when the child failed, else its short summary and last lines."""
        lines = self.output().splitlines()
        if failed:
            return lines
        keep = [line for line in lines if line.startswith(("SKIPPED", "XFAIL", "real-guest timings"))]
        return keep + lines[-1:]


def split(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the realvm tests and start them in a child process, when the session also has others."""
    if os.environ.get(CHILD) or os.environ.get(SWITCH) == "0" or config.option.collectonly:
        return
    guests = [item for item in items if item.get_closest_marker(MARK)]
    others = [item for item in items if not item.get_closest_marker(MARK)]
    if not guests or not others:
        return
    config.hook.pytest_deselected(items=guests)
    items[:] = others
    config.stash[_KEY] = Beside(config.rootpath, [item.nodeid for item in guests])


def finish(session: pytest.Session) -> None:
    """Wait for the child (or stop it when the session was interrupted); its failure fails the session."""
    beside = session.config.stash.get(_KEY, None)
    if beside is None:
        return
    if session.shouldstop or session.exitstatus == pytest.ExitCode.INTERRUPTED:
        beside.stop()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and beside.process.poll() is None:
        pid = beside.process.pid
        reporter.write_line(f"\nwaiting for the real-guest tests beside this run (pid {pid}, {beside.log})")
    code = beside.wait()
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def report(terminalreporter: pytest.TerminalReporter) -> None:
    """The child's result at the end of the parent's summary."""
    beside = terminalreporter.config.stash.get(_KEY, None)
    if beside is None or beside.code is None:
        return
    failed = beside.code not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    title = f"real-guest tests, run beside the others ({len(beside.nodeids)} tests, {beside.minutes:.1f} min)"
    terminalreporter.section(title)
    for line in beside.summary(failed):
        terminalreporter.write_line(line)
    if failed:
        what = f"the real-guest tests failed (exit {beside.code}); their log: {beside.log}"
        terminalreporter.write_line(what, red=True)
    else:
        beside.log.unlink(missing_ok=True)
