"""Shared fixtures: isolated config/state folders, the fake Proxmox, SSH test hosts, build hosts."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import beside
from tests.harness.fixtures_build import build_host  # noqa: F401
from tests.harness.fixtures_hosts import ssh_host, ssh_hosts  # noqa: F401
from tests.harness.fixtures_pve import fake_pve, pve_api  # noqa: F401

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_homelab_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own state and config folders and no lab or secret from the environment."""
    for name in list(os.environ):
        if name.startswith("HOMELAB_"):
            monkeypatch.delenv(name)
    state = tmp_path / "state"
    config = tmp_path / "config"
    monkeypatch.setenv("HOMELAB_STATE_DIR", str(state))
    monkeypatch.setenv("HOMELAB_CONFIG_DIR", str(config))
    yield tmp_path


@pytest.fixture(autouse=True)
def signal_handlers_as_found() -> Iterator[None]:
    """A test leaves the handlers of SIGINT, SIGTERM and SIGHUP as it found them: one left behind changes what
    Ctrl-C does in every later test (a leaked one made three of test_interrupts fail in CI)."""
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {sig: signal.getsignal(sig) for sig in signals}
    yield
    changed = {sig: handler for sig in signals if (handler := signal.getsignal(sig)) != before[sig]}
    for sig in changed:
        signal.signal(sig, before[sig])  # type: ignore[arg-type]
    assert not changed, f"the test left signal handlers changed: {changed} (they were {before})"


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected what they deselect
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The real-guest tests run in a child process beside the others (tests/harness/beside.py)."""
    beside.split(config, items)


def pytest_sessionfinish(session: pytest.Session) -> None:
    beside.finish(session)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The real-guest tests' timings (image build, boot, `homelab up`) at the end of every run that had them, and
    the result of those that ran beside the others."""
    import sys

    beside.report(terminalreporter)
    module = sys.modules.get("tests.test_e2e_guest")
    timings = getattr(module, "TIMINGS", None)
    if timings:
        terminalreporter.write_line("real-guest timings (s): " + ", ".join(f"{k}={v:.1f}" for k, v in timings.items()))
