"""`homelab demo`: the README's first command, end to end against the built-in fake Proxmox."""

from __future__ import annotations

import os
import queue
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import yaml

from tests.harness.cli import run_cli

pytestmark = pytest.mark.e2e


def test_demo_brings_up_the_example_lab(tmp_path: Path) -> None:
    pytest.importorskip("fakepve", reason="the demo needs the demo extra")
    proc = subprocess.run(
        [sys.executable, "-m", "homelab", "demo", "--vms", "3", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "template debian-docker: version" in out  # baked through the API (cloud image)
    assert "Plan: 3 create." in out
    assert "3 ok, 0 failed" in out
    assert "Plan: 3 unchanged." in out
    assert "docker-01" in out and "192.168.10.20" in out
    lab = (tmp_path / "lab.yml").read_text()
    # the token's secret is handed over in-process, never written to the lab file
    assert "token_id" in lab and "proxmox_token" not in lab
    secret_lines = [line for line in (tmp_path / "fakepve" / "fakepve.json").read_text().splitlines()]
    assert secret_lines  # the fake's own config holds the token...
    assert (tmp_path / "fakepve" / "fakepve.json").stat().st_mode & 0o077 == 0  # ...readable by its owner only
    assert (tmp_path / "state" / "demo" / "hosts.json").exists()


@pytest.fixture
def temp_root() -> Iterator[Path]:
    """A TMPDIR of the demo's own, to see what it leaves behind; short, as the fake's Unix socket needs."""
    root = Path(tempfile.mkdtemp(prefix="hl-", dir="/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_demo_prints_no_line_twice_leaves_nothing_behind_and_says_what_next(temp_root: Path) -> None:
    pytest.importorskip("fakepve", reason="the demo needs the demo extra")
    proc = subprocess.run(
        [sys.executable, "-m", "homelab", "demo", "--vms", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # progress and results as a terminal shows them, interleaved
        text=True,
        timeout=120,
        env=dict(os.environ, TMPDIR=str(temp_root)),
    )
    assert proc.returncode == 0, proc.stdout
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    assert [line for line in lines if lines.count(line) > 1] == []
    # each template step and each VM's result once
    assert sum("download https://cloud.debian.org" in line for line in lines) == 1
    assert sum(line.endswith("bake: installing qemu-guest-agent git") for line in lines) == 1
    assert sum("docker-01" in line and "192.168.10.20" in line for line in lines) == 2  # apply summary, status
    assert "ok      docker-01 vmid 100 at 192.168.10.20" in proc.stdout
    assert list(temp_root.iterdir()) == []  # the demo folder is gone
    root = next(line for line in lines if line.startswith("Started the fake Proxmox")).split("demo folder ")[1][:-2]
    assert root.startswith(str(temp_root))
    end = proc.stdout[proc.stdout.index("$ homelab status") :]
    assert root not in end  # the end points at nothing that is gone
    assert "homelab init" in end and "homelab up" in end and "homelab demo --keep" in end


def test_without_the_demo_extra_the_hint_names_the_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fakepve", None)  # import fakepve raises ImportError
    result = run_cli("demo")
    assert result.exit_code == 2
    assert "pip install 'homelab-pve[demo]'" in result.stderr


class Lines:
    """A process's output lines as they come, read in a thread so that a test can wait with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def until(self, text: str, timeout: float = 90) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            line = self.queue.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                raise AssertionError("the output ended before " + repr(text) + ":\n" + "\n".join(self.seen))
            self.seen.append(line)
            if text in line:
                return self.seen


def port_open(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex((host, port)) == 0


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_keep_leaves_the_fake_running_for_the_printed_commands_until_stopped(
    temp_root: Path, stop: signal.Signals
) -> None:
    pytest.importorskip("fakepve", reason="the demo needs the demo extra")
    proc = subprocess.Popen(
        [sys.executable, "-m", "homelab", "demo", "--keep", "--vms", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, TMPDIR=str(temp_root)),
    )
    try:
        assert proc.stdout is not None
        out = Lines(proc.stdout).until("Press Ctrl-C")
        assert "demo's own throwaway" in "\n".join(out)  # the printed secret is said to be the demo's
        export = next(line.strip() for line in out if line.strip().startswith("export "))
        env = dict(item.split("=", 1) for item in shlex.split(export)[1:])
        assert set(env) >= {"HOMELAB_LAB", "HOMELAB_PROXMOX_TOKEN"}
        commands = [line.split("#")[0].strip() for line in out if line.strip().startswith("homelab ")]
        assert commands == ["homelab plan", "homelab status", "homelab apply", "homelab destroy"]
        # the printed lines, as a user pastes them in another terminal (that has no homelab variables of its own)
        pasted = {**{k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_")}, **env}
        status = subprocess.run(
            [sys.executable, "-m", "homelab", "status"], capture_output=True, text=True, env=pasted, timeout=60
        )
        assert status.returncode == 0, status.stdout + status.stderr
        rows = {line.split()[0]: line.split() for line in status.stdout.splitlines()[1:]}
        assert rows["docker-01"][2:4] == ["running", "192.168.10.20"] and rows["node-01"][2] == "running"
        plan = subprocess.run(
            [sys.executable, "-m", "homelab", "plan"], capture_output=True, text=True, env=pasted, timeout=60
        )
        assert plan.returncode == 0 and "Plan: 2 unchanged." in plan.stdout

        lab = yaml.safe_load(Path(env["HOMELAB_LAB"]).read_text())
        url = urllib.parse.urlsplit(lab["proxmox"]["url"])
        assert url.hostname and url.port and port_open(url.hostname, url.port)
        root = Path(env["HOMELAB_LAB"]).parent
        assert root.parent == temp_root

        proc.send_signal(stop)
        assert proc.wait(timeout=30) == 0
        assert not port_open(url.hostname, url.port)  # the fake is stopped...
        assert not root.exists() and list(temp_root.iterdir()) == []  # ...and its folder removed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
