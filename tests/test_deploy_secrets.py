"""Stack secrets through a real deploy (ansible-runner -> ssh -> an SSH test host): on the VM only in 0600
files of a 0700 folder, and nowhere else: not in lab.yml, the command's output, the debug log, or any file of
the deploy's workdir (the inventory and every artifact ansible-runner keeps), not even base64-encoded."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from homelab.deploy.plan import workdir
from homelab.lab import load_lab
from homelab.paths import debug_log
from tests.harness.cli import run_cli
from tests.harness.fixtures_hosts import HostFactory
from tests.harness.vms import provision

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
https:
  ca: acme
  acme:
    email: me@lab.example.com
    dns_provider: cloudflare
templates:
  - name: debian-docker
vms:
  - name: web
    ip: 10.10.0.10
    stacks: [traefik, portainer]
"""
FILES_ONLY = ("--yes", "--no-install-docker", "--no-start")


def leaks(value: str, places: dict[str, bytes]) -> list[str]:
    """The places that hold ``value`` as it is or base64-encoded (at any of the three alignments)."""
    forms = {value.encode()}
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + value.encode()).decode()
        forms.add(encoded[4 if pad else 0 : -4].encode())  # the part that does not depend on its neighbours
    return [where for where, data in places.items() if any(form in data for form in forms)]


def everywhere(lab_path: Path, output: str) -> dict[str, bytes]:
    lab = load_lab(lab_path)
    places = {"lab.yml": lab_path.read_bytes(), "output": output.encode()}
    if debug_log().exists():
        places["debug log"] = debug_log().read_bytes()
    for path in workdir(lab).rglob("*"):
        if path.is_file():
            places[str(path.relative_to(workdir(lab)))] = path.read_bytes()
    return places


def test_secrets_reach_the_vm_in_0600_files_and_nothing_else(tmp_path: Path, ssh_hosts: HostFactory) -> None:
    lab_path = tmp_path / "lab.yml"
    lab_path.write_text(LAB)
    (vm,) = ssh_hosts(1, per_user_keys=True)
    provision(load_lab(lab_path), {"web": vm})
    token = "cf-token-7Hq2vX9pL4mN8rT1"
    result = run_cli("deploy", *FILES_ONLY, lab=lab_path, env={"HOMELAB_TRAEFIK_CF_DNS_API_TOKEN": token})
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "  ~ web: Stack secrets (0600 files; not shown)" in result.stdout

    secrets = vm.home_dir / "homelab" / "stacks"
    on_vm = {
        path: vm.exec(["stat", "-c", "%U %a", f"/home/homelab/stacks/{path}"]).stdout.split()
        for path in (
            "traefik/secrets",
            "traefik/secrets/CF_DNS_API_TOKEN",
            "portainer/secrets/PORTAINER_ADMIN_PASSWORD",
        )
    }
    assert on_vm == {
        "traefik/secrets": ["homelab", "700"],
        "traefik/secrets/CF_DNS_API_TOKEN": ["homelab", "600"],
        "portainer/secrets/PORTAINER_ADMIN_PASSWORD": ["homelab", "600"],
    }
    assert (secrets / "traefik/secrets/CF_DNS_API_TOKEN").read_text() == token
    assert "CF_DNS_API_TOKEN_FILE=/secrets/CF_DNS_API_TOKEN" in (secrets / "traefik/traefik.env").read_text()
    password = (secrets / "portainer/secrets/PORTAINER_ADMIN_PASSWORD").read_text()
    shown = run_cli("secrets", "show", "portainer", lab=lab_path)
    assert f"PORTAINER_ADMIN_PASSWORD (user admin): {password}" in shown.stdout  # shown when asked for
    dashboard = run_cli("secrets", "show", "traefik", lab=lab_path).stdout
    dashboard_password = dashboard.split("TRAEFIK_DASHBOARD_PASSWORD (user admin): ", 1)[1].split()[0]

    places = everywhere(lab_path, result.stdout + result.stderr)
    assert any(name.startswith("artifacts/") and name.endswith("stdout") for name in places)  # it did look there
    for secret in (token, password, dashboard_password):
        assert leaks(secret, places) == []

    # A new token: the preview says a secret file would change and shows neither value; check exits 3.
    new_token = "cf-token-Zb5Kd3Wq8Ys6Uf0J"
    check = run_cli(
        "deploy",
        "--check",
        "--no-install-docker",
        "--no-start",
        lab=lab_path,
        env={"HOMELAB_TRAEFIK_CF_DNS_API_TOKEN": new_token},
    )
    assert check.exit_code == 3, check.stdout + check.stderr
    assert "  ~ web: Stack secrets (0600 files; not shown)" in check.stdout
    places = everywhere(lab_path, check.stdout + check.stderr)
    for secret in (token, new_token, password, dashboard_password):
        assert leaks(secret, places) == []
    assert (secrets / "traefik/secrets/CF_DNS_API_TOKEN").read_text() == token  # a check changes nothing

    again = run_cli(
        "deploy",
        "--check",
        "--no-install-docker",
        "--no-start",
        lab=lab_path,
        env={"HOMELAB_TRAEFIK_CF_DNS_API_TOKEN": token},
    )
    assert again.exit_code == 0, again.stdout + again.stderr
    assert "(no file or package would change)" in again.stdout
