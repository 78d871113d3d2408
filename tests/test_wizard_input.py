"""init checks the connection answers before connecting: one clear line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.harness.cli import run_cli


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ({"proxmox.url": "https://pve:8006", "proxmox.token_id": "root@pam"}, "proxmox.token_id"),
        ({"proxmox.url": "pve.home.arpa", "proxmox.token_id": "root@pam!x"}, "proxmox.url"),
        ({"proxmox.url": "https://pve:70000", "proxmox.token_id": "root@pam!x"}, "the port must be 1 to 65535"),
    ],
)
def test_bad_connection_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answers: dict[str, str], expected: str
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", "x")
    path = tmp_path / "answers.yml"
    path.write_text(yaml.safe_dump(answers))
    result = run_cli("init", "--defaults", "--answers", str(path), lab=tmp_path / "lab.yml")
    assert result.exit_code == 2
    assert result.stderr.startswith("init: ") and expected in result.stderr
    assert "unexpected" not in result.stderr
    assert not (tmp_path / "lab.yml").exists()
