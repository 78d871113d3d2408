"""pytest fixtures for the fake Proxmox: a separate process over HTTPS on its own loopback address."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from homelab.demo.launcher import FakeProxmox, start_fake_proxmox


@pytest.fixture
def fake_pve(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[FakeProxmox]:
    """A fake PVE 9 server with node pve1, storages local + local-lvm and one template version (vmid 9000).

    Options come from ``@pytest.mark.fake_pve(time_scale=..., guests=[...], agent_delay=...)``.
    """
    pytest.importorskip("fakepve", reason="the fake Proxmox needs the test extra: pip install -e '.[test]'")
    marker = request.node.get_closest_marker("fake_pve")
    options: dict[str, Any] = dict(marker.kwargs) if marker else {}
    workdir: Path = tmp_path_factory.mktemp("fakepve")
    fake = start_fake_proxmox(workdir, **options)
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def pve_api(fake_pve: FakeProxmox) -> Any:
    """A proxmoxer connection to fake_pve, logged in with an API token and verifying TLS."""
    from proxmoxer import ProxmoxAPI

    user, token = fake_pve.token_id.split("!")
    return ProxmoxAPI(
        fake_pve.host,
        port=fake_pve.port,
        user=user,
        token_name=token,
        token_value=fake_pve.token_secret,
        verify_ssl=fake_pve.cafile,
    )


def refused_transport() -> Any:
    """A token transport (ProxmoxerTransport) to a loopback port nothing listens on."""
    import socket

    from homelab.adapters.proxmox.client import ProxmoxerTransport
    from homelab.state.secrets import ProxmoxAuth

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    auth = ProxmoxAuth(token_id="root@pam!homelab", token_secret="x")
    return ProxmoxerTransport.connect(f"https://127.0.0.1:{port}", auth)
