"""The Proxmox adapter's error paths: what is retried, what is not, TLS and logins."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import requests
import requests_mock

from homelab.adapters.proxmox.api import PveApi, RetryPolicy
from homelab.adapters.proxmox.client import ProxmoxerTransport
from homelab.errors import OperationTimeout, ProxmoxError, TaskFailed
from homelab.lab.loader import parse_lab
from homelab.state.secrets import ProxmoxAuth

URL = "https://pve.test:8006/api2/json"
LAB = """
name: t
proxmox: {url: "https://pve.test:8006", node: pve1, token_id: "root@pam!homelab"}
network: {subnet: 10.0.0.0/24, gateway: 10.0.0.1, build_ip: 10.0.0.250}
templates: [{name: base}]
"""


def api_for(sleeps: list[float]) -> PveApi:
    lab = parse_lab(LAB)
    transport = ProxmoxerTransport.from_lab(lab, ProxmoxAuth(token_id="root@pam!homelab", token_secret="s3cret"))
    return PveApi(transport, RetryPolicy(attempts=4, first_delay=0.1, sleep=sleeps.append))


def test_lock_timeout_is_retried_then_succeeds() -> None:
    sleeps: list[float] = []
    with requests_mock.Mocker() as m:
        m.put(
            f"{URL}/nodes/pve1/qemu/100/config",
            [
                {
                    "status_code": 500,
                    "reason": "can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout",
                    "json": {"data": None},
                },
                {"status_code": 200, "json": {"data": None}},
            ],
        )
        api_for(sleeps).put("/nodes/pve1/qemu/100/config", cores=2)
        assert m.call_count == 2
    assert sleeps == [0.1]


@pytest.mark.parametrize("status", [400, 403])
def test_client_errors_are_never_retried(status: int) -> None:
    sleeps: list[float] = []
    with requests_mock.Mocker() as m:
        m.put(
            f"{URL}/nodes/pve1/qemu/100/config",
            status_code=status,
            reason="Parameter verification failed.",
            json={"data": None, "errors": {"cores": "value must be at least 1"}},
        )
        with pytest.raises(ProxmoxError) as info:
            api_for(sleeps).put("/nodes/pve1/qemu/100/config", cores=0)
        assert m.call_count == 1
    assert sleeps == []
    assert info.value.status == status and not info.value.transient
    assert "cores: value must be at least 1" in str(info.value) or status == 403


def test_plain_500_is_final() -> None:
    with requests_mock.Mocker() as m:
        m.post(
            f"{URL}/nodes/pve1/qemu/9000/clone",
            status_code=500,
            reason="unable to create VM 100: config file already exists",
            json={"data": None},
        )
        with pytest.raises(ProxmoxError, match="already exists"):
            api_for([]).post("/nodes/pve1/qemu/9000/clone", newid=100)
        assert m.call_count == 1


def test_connection_errors_and_gateway_errors_are_retried_until_attempts_run_out() -> None:
    sleeps: list[float] = []
    with requests_mock.Mocker() as m:
        m.get(
            f"{URL}/cluster/resources",
            [
                {"exc": requests.exceptions.ConnectionError("reset by peer")},
                {"status_code": 503, "reason": "Service Unavailable", "json": {"data": None}},
                {"exc": requests.exceptions.ConnectTimeout("slow")},
                {"exc": requests.exceptions.ConnectionError("reset by peer")},
            ],
        )
        with pytest.raises(ProxmoxError, match=r"cannot reach https://pve\.test:8006") as info:
            api_for(sleeps).get("/cluster/resources")
        assert m.call_count == 4
    assert info.value.transient
    assert sleeps == [0.1, 0.2, 0.4]


def test_secret_is_not_in_errors() -> None:
    with requests_mock.Mocker() as m:
        m.get(f"{URL}/version", status_code=401, reason="invalid token value", json={"data": None})
        with pytest.raises(ProxmoxError) as info:
            api_for([]).get("/version")
        assert "s3cret" not in str(info.value)
        assert m.last_request.headers["Authorization"].endswith("=s3cret")


class ScriptedTransport:
    def __init__(self, answers: list[Any]):
        self.answers = answers
        self.seen: list[tuple[str, str]] = []

    def request(self, method: str, path: str, params: dict[str, Any]) -> Any:
        self.seen.append((method, path))
        return self.answers.pop(0)


def test_task_error_carries_pve_message() -> None:
    transport = ScriptedTransport(
        [{"status": "running"}, {"status": "stopped", "exitstatus": "clone failed: disk full"}]
    )
    api = PveApi(transport, RetryPolicy(sleep=lambda s: None))
    with pytest.raises(TaskFailed, match="clone of web failed on Proxmox: clone failed: disk full"):
        api.wait_task("pve1", "UPID:x", timeout=10, what="clone of web")


def test_task_timeout_is_clear() -> None:
    transport = ScriptedTransport([{"status": "running"}] * 3)
    api = PveApi(transport, RetryPolicy(sleep=lambda s: None))
    with pytest.raises(OperationTimeout, match="clone of web did not finish within 0s"):
        api.wait_task("pve1", "UPID:x", timeout=0, what="clone of web")


def test_warnings_count_as_success() -> None:
    api = PveApi(ScriptedTransport([{"status": "stopped", "exitstatus": "WARNINGS: 1"}]))
    api.wait_task("pve1", "UPID:x", timeout=1)


def test_tls_off_warns(tmp_path: Path) -> None:
    lab = parse_lab(LAB.replace('token_id: "root@pam!homelab"}', 'token_id: "root@pam!homelab", verify_tls: false}'))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ProxmoxerTransport.from_lab(lab, ProxmoxAuth(token_id="root@pam!homelab", token_secret="x"))
    assert any("TLS verification is off" in str(w.message) for w in caught)


def test_ctrl_c_stops_a_task_wait_at_the_next_poll() -> None:
    from homelab.errors import Interrupted

    transport = ScriptedTransport([{"status": "running"}] * 100)
    api = PveApi(transport, RetryPolicy(sleep=lambda s: api.cancel.set()))
    with pytest.raises(Interrupted, match="interrupted while waiting for the clone of web"):
        api.wait_task("pve1", "UPID:x", timeout=1800, what="clone of web")
    assert len(transport.seen) == 1
