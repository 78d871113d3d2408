"""The media stack's seeded settings through a real deploy (ansible-runner -> ssh -> an SSH test host, the real
stacks role): written into the apps' state before their first start, 0600 and the user's, carrying the values
`homelab secrets show media` shows, and nowhere else (lab.yml, output, debug log, ansible-runner's artifacts);
a redeploy never overwrites one the user changed, and writes one that went missing.

The apps themselves (and Traefik) cannot run here: no image can be pulled (files only, --no-start)."""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from homelab.deploy.plan import DeployOptions
from homelab.deploy.service import deploy_stacks
from homelab.lab import load_lab
from tests.harness.cli import run_cli
from tests.harness.fixtures_hosts import HostFactory
from tests.test_deploy_hosts import provision
from tests.test_deploy_secrets import everywhere, leaks

pytestmark = pytest.mark.integration

LAB = """\
name: test
proxmox:
  url: https://pve.test:8006
  node: pve1
  token_id: root@pam!homelab
network:
  subnet: 10.10.0.0/24
  gateway: 10.10.0.1
  domain: lab.example.com
  build_ip: 10.10.0.250
templates:
  - name: debian-docker
vms:
  - name: web
    ip: 10.10.0.10
    stacks: [traefik, media]
stacks:
  media:
    env:
      DATA_ROOT: /home/homelab/data/media
"""
STATE = "/home/homelab/data/stacks/media"
# files only (no image can be pulled); DATA_ROOT is under the user's home, so no sudo is needed
OPTIONS = DeployOptions(install_packages=False, start_stacks=False, extra_vars={"homelab_data_become": False})
SEEDS = (
    "sonarr/config.xml",
    "radarr/config.xml",
    "prowlarr/config.xml",
    "bazarr/config/config.yaml",
    "qbittorrent/qBittorrent/qBittorrent.conf",
)


def test_seeds_reach_the_apps_state_once_and_a_redeploy_keeps_the_users_changes(
    tmp_path: Path, ssh_hosts: HostFactory
) -> None:
    lab_path = tmp_path / "lab.yml"
    lab_path.write_text(LAB)
    (vm,) = ssh_hosts(1, per_user_keys=True)
    lab = load_lab(lab_path)
    provision(lab, {"web": vm})

    def deploy(check: bool = False) -> tuple[bool, bool, str]:
        lines: list[str] = []
        result = deploy_stacks(lab, lines.append, lambda question: None, OPTIONS, check_only=check)
        return result.ok, bool(result.would_change), "\n".join(lines)

    ok, _, output = deploy()
    assert ok, output
    assert "behind the lab's login (user admin, `homelab secrets show traefik`)" in output  # the plan says so
    assert "  ~ web: Stack secrets (0600 files; not shown)" in output.splitlines()

    modes = vm.exec(["stat", "-c", "%U %a", *(f"{STATE}/{p}" for p in SEEDS)]).stdout.split("\n")
    assert [m for m in modes if m] == ["homelab 600"] * len(SEEDS)
    state = vm.home_dir / "homelab" / "data" / "stacks" / "media"
    shown = run_cli("secrets", "show", "media", lab=lab_path).stdout
    values = dict(re.findall(r"^([A-Z_]+)(?: \(user admin\))?: (\S+)$", shown, re.MULTILINE))
    assert set(values) >= {"SONARR_API_KEY", "QBITTORRENT_PASSWORD", "BAZARR_PASSWORD"}, shown
    assert ET.fromstring((state / "sonarr/config.xml").read_text()).findtext("ApiKey") == values["SONARR_API_KEY"]
    assert len(values["SONARR_API_KEY"]) == 32 and int(values["SONARR_API_KEY"], 16) >= 0  # the apps' own form
    assert (
        hashlib.md5(values["BAZARR_PASSWORD"].encode()).hexdigest() in (state / "bazarr/config/config.yaml").read_text()
    )

    places = everywhere(lab_path, output)
    assert any(name.startswith("artifacts/") and name.endswith("stdout") for name in places)  # it did look there
    for name, value in values.items():
        assert leaks(value, places) == [], name

    # The user changes Sonarr's settings (or Sonarr does): a redeploy leaves them, and has nothing to do.
    vm.exec(["su", "homelab", "-c", f"echo '<Config><ApiKey>mine</ApiKey></Config>' > {STATE}/sonarr/config.xml"])
    ok, _, output = deploy()
    assert ok, output
    assert (state / "sonarr/config.xml").read_text() == "<Config><ApiKey>mine</ApiKey></Config>\n"
    ok, would_change, output = deploy(check=True)
    assert ok and not would_change, output  # `homelab deploy --check` exits 0

    # One that went missing (a reset app): the preview says a secret file would be written, the deploy writes it.
    vm.exec(["rm", f"{STATE}/qbittorrent/qBittorrent/qBittorrent.conf"])
    ok, would_change, output = deploy(check=True)
    assert ok and would_change, output  # exits 3
    assert "  ~ web: Stack secrets (0600 files; not shown)" in output.splitlines()
    assert deploy()[0]
    assert "WebUI\\Username=admin" in (state / "qbittorrent/qBittorrent/qBittorrent.conf").read_text()
    assert (state / "sonarr/config.xml").read_text() == "<Config><ApiKey>mine</ApiKey></Config>\n"
