"""Faults named for what they are: the Proxmox API gone while apply waits is retried for the lab's
timeouts.connection, then reported as the lost connection, not as a guest agent that never came up."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from homelab.demo.launcher import FakeProxmox
from tests.harness.cli import run_cli
from tests.harness.labs import lab_data, write_lab


def _when_running(fake: FakeProxmox, name: str, then: str) -> threading.Thread:
    """Once the VM ``name`` runs (apply now waits for its agent, which never answers): stop or freeze the fake."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            vms = [v for v in fake.vms() if v["name"] == name]
            if vms and vms[0]["status"] == "running":
                fake.call("vm_set", vmid=vms[0]["vmid"], no_agent=True, agent=None)
                if then == "stop":
                    fake.stop()
                else:
                    os.kill(fake.process.pid, signal.SIGSTOP)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.fake_pve(time_scale=0.01, agent_delay=500, start_secs=0)
@pytest.mark.parametrize("fault", ["stop", "freeze"])
def test_the_api_gone_while_waiting_for_the_agent_is_named_as_the_lost_connection(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    settings = {"timeouts": {"connection": 2, "agent": 600}}
    lab = write_lab(tmp_path / "lab.yml", lab_data(fake_pve, [{"name": "web", "ip": "10.10.0.10"}], settings=settings))
    watcher = _when_running(fake_pve, "web", fault)
    try:
        result = run_cli("apply", "--yes", lab=lab)
    finally:
        watcher.join()
        if fault == "freeze":
            os.kill(fake_pve.process.pid, signal.SIGCONT)
    assert result.exit_code == 1, result.output
    assert "web: lost the connection to Proxmox: no answer for 2s (cannot reach" in result.output
    assert "guest agent" not in result.output.split("FAILED")[-1]
    assert "unexpected error" not in result.output


def test_an_address_that_never_answered_fails_at_once_not_after_the_grace(tmp_path: Path) -> None:
    """No answer ever: a wrong address or a Proxmox that is down, said after the usual retries."""
    settings = {"timeouts": {"connection": 600}}
    data = lab_data(None, [{"name": "web", "ip": "10.10.0.10"}], settings=settings)
    data["proxmox"]["url"] = "https://127.0.0.1:9"
    lab = write_lab(tmp_path / "lab.yml", data)
    result = run_cli("plan", lab=lab, env={"HOMELAB_PROXMOX_TOKEN": "x"})  # would hang for 600 s if it waited
    assert result.exit_code == 1 and "cannot reach https://127.0.0.1:9 (connection refused" in result.stderr
    assert "lost the connection" not in result.stderr
