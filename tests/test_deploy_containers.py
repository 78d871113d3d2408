"""What the preview expects to run on a VM: each stack's compose services, as `docker compose up -d` starts them."""

from __future__ import annotations

from homelab.deploy.containers import env_value, vm_containers
from homelab.deploy.render import render_vm
from tests.harness.labs import make_lab


def test_every_service_of_every_stack_under_its_project() -> None:
    web = {"name": "web", "ip": "10.10.0.10", "stacks": ["traefik", "homepage"]}
    lab = make_lab(vms=[web], domain="lab.example")
    assert vm_containers(render_vm(lab, lab.vms[0])) == ["homepage/homepage", "traefik/socket-proxy", "traefik/traefik"]


def test_the_media_stack_follows_its_compose_file_list() -> None:
    vpn = {"media": {"env": {"VPN_SERVICE_PROVIDER": "mullvad"}}}
    web = {"name": "web", "ip": "10.10.0.10", "stacks": ["traefik", "media"]}
    plain = make_lab(vms=[web], domain="lab.example")
    behind_vpn = make_lab(vms=[web], domain="lab.example", stacks=vpn)
    plain_media = [c for c in vm_containers(render_vm(plain, plain.vms[0])) if c.startswith("media/")]
    vpn_media = [c for c in vm_containers(render_vm(behind_vpn, behind_vpn.vms[0])) if c.startswith("media/")]
    assert "media/qbittorrent" in plain_media and "media/gluetun" not in plain_media
    assert "media/gluetun" in vpn_media and "media/qbittorrent" in vpn_media and "media/jellyfin" in vpn_media


def test_env_values_as_rendered() -> None:
    env = "COMPOSE_PROJECT_NAME=media\nCOMPOSE_FILE='compose.yml:compose.vpn.yml'\n# X=1\n"
    assert env_value(env, "COMPOSE_FILE") == "compose.yml:compose.vpn.yml"
    assert env_value(env, "COMPOSE_PROJECT_NAME") == "media" and env_value(env, "X") is None
