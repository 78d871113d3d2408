"""Reads with an API token go straight through urllib3 (client.py's _Reads): the same answers and the same
errors as through proxmoxer, TLS verified, against the fake Proxmox."""

from __future__ import annotations

import pytest

from homelab.adapters.proxmox.client import ProxmoxerTransport
from homelab.demo.launcher import FakeProxmox
from homelab.errors import ConnectionLost, ProxmoxError
from homelab.state.secrets import ProxmoxAuth
from tests.harness.fixtures_pve import refused_transport


def transports(fake: FakeProxmox) -> tuple[ProxmoxerTransport, ProxmoxerTransport]:
    """(reads through urllib3, every call through proxmoxer) for the same fake and token."""
    auth = ProxmoxAuth(token_id=fake.token_id, token_secret=fake.token_secret)
    fast = ProxmoxerTransport.connect(fake.url, auth, True, fake.cafile)
    slow = ProxmoxerTransport.connect(fake.url, auth, True, fake.cafile)
    slow._reads = None
    assert fast._reads is not None
    return fast, slow


def outcome(transport: ProxmoxerTransport, path: str, params: dict[str, object]) -> object:
    try:
        return transport.request("GET", path, params)
    except ProxmoxError as exc:
        return ("error", str(exc), exc.status, exc.transient)


@pytest.mark.fake_pve(agent_delay=3600)
@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/version", {}),
        ("/nodes/pve1/qemu/9000/config", {}),
        ("/cluster/resources", {"type": "vm"}),
        ("/nodes/pve1/qemu/9000/cloudinit/dump", {"type": "meta"}),
        ("/nodes/pve1/qemu/4242/config", {}),  # no such VM: PVE's 500 and its message
        ("/nodes/pve1/qemu/abc/config", {}),  # a vmid the schema refuses: PVE's 400
        ("/nodes/pve1/qemu/9000/agent/file-read", {"file": "/etc/a b&c"}),  # quoted; the agent is not up yet
        ("/nodes/pve1/tasks/UPID:pve1:00000001:00000001:00000001:qmstart:100:root@pam!x:/status", {}),
    ],
)
def test_reads_answer_and_fail_as_through_proxmoxer(
    fake_pve: FakeProxmox, path: str, params: dict[str, object]
) -> None:
    fast, slow = transports(fake_pve)
    assert outcome(fast, path, params) == outcome(slow, path, params)


def test_a_certificate_from_another_ca_is_refused(fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    auth = ProxmoxAuth(token_id=fake_pve.token_id, token_secret=fake_pve.token_secret)
    transport = ProxmoxerTransport.connect(fake_pve.url, auth)  # the system's CAs, which never signed the fake's
    with pytest.raises(ProxmoxError, match="TLS certificate not trusted"):
        transport.request("GET", "/version", {})


def test_no_server_is_a_lost_connection() -> None:
    transport = refused_transport()
    assert transport._reads is not None
    with pytest.raises(ConnectionLost, match="connection refused"):
        transport.request("GET", "/version", {})
