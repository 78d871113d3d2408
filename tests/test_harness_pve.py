"""The fake Proxmox harness: a separate process over verified HTTPS, token and password logins."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from homelab.demo.launcher import FakeProxmox

pytestmark = pytest.mark.integration


def test_reads_the_preloaded_template(pve_api: Any, fake_pve: FakeProxmox) -> None:
    vms = pve_api.cluster.resources.get(type="vm")
    templates = [vm for vm in vms if vm.get("template")]
    assert [(t["vmid"], t["name"]) for t in templates] == [(9000, "debian-docker-202611010930")]
    config = pve_api.nodes("pve1").qemu(9000).config.get()
    assert config["agent"] == "1" and "ide2" in config
    assert fake_pve.process.pid != __import__("os").getpid()


def test_wrong_token_is_refused(fake_pve: FakeProxmox) -> None:
    from proxmoxer import ProxmoxAPI
    from proxmoxer.core import AuthenticationError, ResourceException

    user, token = fake_pve.token_id.split("!")
    api = ProxmoxAPI(
        fake_pve.host, port=8006, user=user, token_name=token, token_value="wrong", verify_ssl=fake_pve.cafile
    )
    with pytest.raises((ResourceException, AuthenticationError)) as info:
        api.version.get()
    assert "401" in str(info.value)


def test_password_login(fake_pve: FakeProxmox) -> None:
    from proxmoxer import ProxmoxAPI

    api = ProxmoxAPI(
        fake_pve.host, port=8006, user=fake_pve.user, password=fake_pve.password, verify_ssl=fake_pve.cafile
    )
    assert api.version.get()["version"].startswith("9.")


def test_tls_is_verified(fake_pve: FakeProxmox) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(fake_pve.url + "/api2/json/version", timeout=10)


def test_control_socket_injects_faults(pve_api: Any, fake_pve: FakeProxmox) -> None:
    from proxmoxer.core import ResourceException

    fake_pve.call("fail", method="GET", suffix="/nodes/pve1/qemu/9000/config", status=500, message="boom")
    with pytest.raises(ResourceException, match="boom"):
        pve_api.nodes("pve1").qemu(9000).config.get()
    fake_pve.call("clear_failures")
    assert pve_api.nodes("pve1").qemu(9000).config.get()["name"].startswith("debian-docker")
    assert ("GET", "/api2/json/nodes/pve1/qemu/9000/config") in fake_pve.requests()


@pytest.mark.fake_pve(agent_delay=0)
def test_agent_reports_the_cloud_init_address(pve_api: Any) -> None:
    node = pve_api.nodes("pve1")
    node.qemu(9000).clone.post(newid=120, name="web")
    node.qemu(120).config.put(ipconfig0="ip=10.10.0.20/24,gw=10.10.0.1")
    node.qemu(120).status.start.post()
    import time

    deadline = time.monotonic() + 10
    while True:
        try:
            answer = node.qemu(120).agent("network-get-interfaces").get()
            break
        except Exception:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    addresses = [a["ip-address"] for i in answer["result"] for a in i["ip-addresses"]]
    assert "10.10.0.20" in addresses
