"""A VM that does not answer SSH at once (just booted, or just took over its address from the VM it replaced while
the neighbours still hold the old one's MAC) is tried again for a while; one that never answers fails with the
reason. Against a real sshd on a test host, reached through a relay that opens its port only after a delay."""

from __future__ import annotations

import select
import socket
import threading
import time
from pathlib import Path

import pytest

from homelab.adapters import ssh
from homelab.errors import OperationError
from homelab.lab.models import Lab
from homelab.state.hosts import Host
from tests.harness.fixtures_hosts import HostFactory
from tests.harness.hosts import SshHost
from tests.harness.labs import HOSTS_NETWORK, lab_data, write_lab
from tests.harness.vms import provision


class LateRelay:
    """A TCP port on loopback that refuses connections for ``delay`` seconds, then relays them to ``target``."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()  # nothing listens until the delay is over: connections are refused
        self.target, self.delay, self.accepted = target, delay, 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        time.sleep(self.delay)
        with socket.create_server(("127.0.0.1", self.port)) as server:
            conn, _ = server.accept()
            self.accepted += 1
            with conn, socket.create_connection(self.target) as upstream:
                self._relay({conn: upstream, upstream: conn})

    @staticmethod
    def _relay(ends: dict[socket.socket, socket.socket]) -> None:
        """Copy both ways until either end closes (or resets: the client is done)."""
        try:
            while True:
                ready, _, _ = select.select(list(ends), [], [], 30)
                if not ready:
                    return
                for end in ready:
                    data = end.recv(65536)
                    if not data:
                        return
                    ends[end].sendall(data)
        except OSError:
            return


def _lab(tmp_path: Path, host: SshHost) -> Lab:
    from homelab.lab.loader import load_lab

    data = lab_data(None, [{"name": "web", "ip": host.address}])
    data["network"] = dict(HOSTS_NETWORK)
    path = write_lab(tmp_path / "lab.yml", data)
    lab = load_lab(path)
    provision(lab, {"web": host})
    return lab


@pytest.fixture
def patient(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOMELAB_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(ssh, "CONNECT_RETRY_PAUSE", 1)


def test_a_host_that_answers_late_is_tried_again(
    tmp_path: Path, ssh_hosts: HostFactory, patient: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    (vm,) = ssh_hosts(1, per_user_keys=True)
    lab = _lab(tmp_path, vm)
    relay = LateRelay((vm.address, 22), delay=3)
    host = Host("web", "127.0.0.1", "homelab", port=relay.port, host_key=vm.host_key_pub)
    started = time.monotonic()
    result = ssh.run_script(host, lab.name, "echo hello", as_user="homelab")
    assert result.stdout.strip() == "hello"
    assert relay.accepted == 1
    assert time.monotonic() - started >= 3  # it did meet the refusals first


def test_a_host_that_never_answers_fails_after_the_patience_with_the_reason(
    tmp_path: Path, ssh_hosts: HostFactory, patient: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    (vm,) = ssh_hosts(1, per_user_keys=True)
    lab = _lab(tmp_path, vm)
    monkeypatch.setattr(ssh, "CONNECT_PATIENCE", 3)
    relay = LateRelay((vm.address, 22), delay=3600)
    host = Host("web", "127.0.0.1", "homelab", port=relay.port, host_key=vm.host_key_pub)
    refused = rf"web: cannot connect to homelab@127.0.0.1:{relay.port}: .*Unable to connect"
    with pytest.raises(OperationError, match=refused):
        ssh.run_script(host, lab.name, "true", as_user="homelab")
    assert relay.accepted == 0
