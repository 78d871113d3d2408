"""pytest fixture for a build host: an SSH test host that plays a template's build VM (tests.harness.buildhost),
made known to the ``fake_pve`` of the same test."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from homelab.demo.launcher import FakeProxmox
from tests.harness.buildhost import BuildHost, make_build_host
from tests.harness.fixtures_hosts import skip_unless_hosts

__all__ = ["bake_network", "build_host"]


@pytest.fixture
def build_host(tmp_path: Path, fake_pve: FakeProxmox) -> Iterator[BuildHost]:
    """A started build host for the lab user ``homelab``, registered with ``fake_pve``; torn down after."""
    skip_unless_hosts()
    host = make_build_host(tmp_path / "buildhost", 128 + secrets.randbelow(120), "homelab")
    try:
        fake_pve.call("build_hosts", hosts={host.address: host.fake_entry()})
        yield host
    finally:
        host.stop()


def bake_network(host: BuildHost) -> dict[str, Any]:
    """The lab's network section for builds on ``host``: its address is network.build_ip, so the subnet is wide
    enough to hold it and the tests' usual 10.10.0.x addresses."""
    return {
        "subnet": "10.0.0.0/8",
        "gateway": "10.10.0.1",
        "dns": ["10.10.0.1"],
        "domain": "home.arpa",
        "build_ip": host.address,
    }
