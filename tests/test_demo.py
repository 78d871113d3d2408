"""`homelab demo`: the README's first command, end to end against the built-in fake Proxmox."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
