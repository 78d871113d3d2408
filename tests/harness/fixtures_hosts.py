"""pytest fixtures for disposable SSH test hosts (see :mod:`tests.harness.hosts`).

Import them into a conftest or test module::

    from tests.harness.fixtures_hosts import ssh_host, ssh_hosts  # noqa: F401

Both skip the test (``pytest.skip``) when :func:`host_support` gives a reason,
and tear every host down after the test, also when it fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.hosts import SshHost, host_support, make_host

__all__ = ["HostFactory", "skip_unless_hosts", "ssh_host", "ssh_hosts"]

HostFactory = Callable[..., list[SshHost]]
"""Type of the ``ssh_hosts`` fixture: ``ssh_hosts(n)`` returns ``n`` new hosts."""


def skip_unless_hosts() -> None:
    """``pytest.skip`` with the reason when test hosts cannot be made here."""
    reason = host_support()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def ssh_host(tmp_path: Path) -> Iterator[SshHost]:
    """One started test host (function scope), torn down after the test."""
    skip_unless_hosts()
    host = make_host("host", tmp_path / "hosts", 1)
    try:
        yield host
    finally:
        host.stop()


@pytest.fixture
def ssh_hosts(tmp_path: Path) -> Iterator[HostFactory]:
    """Factory: ``ssh_hosts(n)`` starts and returns ``n`` new hosts; all are torn down after the test.

    It may be called more than once in a test; hosts are named ``h1``, ``h2``, ...
    across calls.
    """
    skip_unless_hosts()
    made: list[SshHost] = []

    def factory(n: int, per_user_keys: bool = False) -> list[SshHost]:
        new: list[SshHost] = []
        for _ in range(n):
            number = len(made) + 1
            host = make_host(f"h{number}", tmp_path / "hosts", number % 256, per_user_keys=per_user_keys)
            made.append(host)
            new.append(host)
        return new

    try:
        yield factory
    finally:
        for host in made:
            host.stop()
