"""Packer is handed the API address the API client uses (with PVE's :8006 when the lab names no port) and
builds into the lab's pool."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from homelab.adapters.proxmox.api import with_port
from homelab.demo.launcher import FakeProxmox
from homelab.templates.build import build_template
from homelab.templates.packer import PackerSettings
from homelab.templates.packer_config import MAIN_FILE, write_files
from tests.harness.labs import lab_data, make_lab
from tests.test_cluster import as_root
from tests.test_templates_packer import ISO, NOW, PACKER, needs_packer, packer_env, rendered
from tests.test_templates_support import LOCAL_WITH_IMPORT, api_for


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://pve.test", "https://pve.test:8006"),
        ("https://pve.test/", "https://pve.test:8006"),
        ("https://pve.test:443", "https://pve.test:443"),
        ("https://[fd00::1]", "https://[fd00::1]:8006"),
    ],
)
def test_with_port_adds_the_port_the_api_client_assumes(url: str, expected: str) -> None:
    assert with_port(url) == expected


def test_packer_gets_the_url_with_the_port_and_the_pool() -> None:
    proxmox = {"url": "https://pve.test", "node": "pve1", "user": "root@pam", "pool": "lab"}
    hcl = rendered("debian-12", ISO, proxmox=proxmox)[MAIN_FILE]
    assert re.search(r'default += "https://pve\.test:8006/api2/json"', hcl)
    assert re.search(r'^ +pool += "lab"$', hcl, re.MULTILINE)
    assert not re.search(r"^ +pool +=", rendered("debian-12", ISO)[MAIN_FILE], re.MULTILINE)  # no pool: no line


@needs_packer
def test_the_render_with_a_pool_passes_packer_validate_and_fmt(tmp_path: Path) -> None:
    proxmox = {"url": "https://pve.test", "node": "pve1", "user": "root@pam", "pool": "lab"}
    write_files(tmp_path, rendered("debian-12", ISO, "none", proxmox=proxmox))
    env = packer_env(PKR_VAR_proxmox_password="only-for-validate")
    for argv in (["validate", MAIN_FILE], ["fmt", "-check", MAIN_FILE]):
        done = subprocess.run([PACKER or "packer", *argv], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.integration
@needs_packer
@pytest.mark.fake_pve(storages=LOCAL_WITH_IMPORT, pools={"lab": {}})
def test_a_packer_build_against_a_url_without_port_reaches_proxmox_and_joins_the_pool(
    fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxmox = dict(lab_data(fake_pve, password=True)["proxmox"], url=f"https://{fake_pve.host}", pool="lab")
    golden = {"name": "golden", "builder": "packer", "packer": ISO}
    lab = make_lab(fake_pve, password=True, proxmox=proxmox, templates=[golden])  # the fake listens on 8006
    api = api_for(fake_pve, lab, monkeypatch)
    settings = PackerSettings(packer=PACKER or "packer", communicator="none")
    result = build_template(api, lab, "golden", packer=settings, now=NOW)

    assert result.version.name == "golden-202611020815"
    members = as_root(fake_pve).pools.get(poolid="lab")[0]["members"]
    assert [m["vmid"] for m in members] == [result.version.vmid]
