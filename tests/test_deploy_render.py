"""Deploy rendering (pure): each stack's .env from the lab, Homepage's services.yaml, compose files that
docker-compose accepts with the rendered .env, and the inventory's pinned SSH settings."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from homelab.adapters.ssh import ssh_args as ssh_common_args
from homelab.deploy.inventory import host_vars, known_hosts_text
from homelab.deploy.render import env_value, links, render_lab, write_tree
from homelab.errors import InputError
from homelab.lab.loader import load_lab
from homelab.lab.models import Lab
from homelab.stacks import catalogue
from homelab.state.hosts import Host
from tests.harness.docker import COMPOSE, needs_compose
from tests.harness.labs import lab_data, make_lab, write_lab

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


VMS = [
    {"name": "web", "ip": "10.10.0.10", "stacks": ["traefik", "portainer", "homepage"]},
    {"name": "media", "ip": "10.10.0.11", "stacks": ["traefik", "media"]},
    {"name": "spare", "ip": "10.10.0.12"},
]
STACKS = {
    "traefik": {"version": "v3.6.2"},
    "portainer": {"subdomain": "docker"},
    "media": {"env": {"TZ": "Europe/Berlin", "PUID": "1001", "SONARR_VERSION": "4.0.10"}},
}


def env_of(lab: Lab, vm: str, stack: str) -> dict[str, str]:
    files = {f.path: f.content for f in render_lab(lab)[vm].files}
    lines = [line for line in files[f"{stack}/.env"].splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_each_vm_gets_its_stacks_with_env_from_the_lab() -> None:
    lab = make_lab(vms=VMS, domain="lab.example", stacks=STACKS)
    rendered = render_lab(lab)
    assert list(rendered) == ["web", "media"]  # a VM without stacks gets nothing
    assert [f.path for f in rendered["media"].files] == [
        "traefik/compose.yml",
        "traefik/.env",
        "traefik/.homelab-stack",
        "traefik/traefik.yml",
        "traefik/dynamic/tls.yml",
        "traefik/traefik.env",
        "traefik/secrets/dashboard.htpasswd",
        "traefik/secrets/local-tls.crt",
        "traefik/secrets/local-tls.key",
        "media/compose.gpu.yml",
        "media/compose.qbittorrent.yml",
        "media/compose.vpn.yml",
        "media/compose.yml",
        "media/compose.homelab.yml",  # the first-visit guards (homelab.deploy.firstvisit)
        "media/.env",
        "media/.homelab-stack",
    ]
    marker = next(f.content for f in rendered["media"].files if f.path == "media/.homelab-stack")
    assert "lab=test\nstack=media\n" in marker  # what lets homelab remove the folder, and only this one
    assert rendered["web"].root == "/home/homelab/stacks"
    assert {f.path: f.mode for f in rendered["web"].files if f.mode != 0o644} == {
        "traefik/secrets/dashboard.htpasswd": 0o600,
        "traefik/secrets/local-tls.crt": 0o600,
        "traefik/secrets/local-tls.key": 0o600,
        "portainer/secrets/PORTAINER_ADMIN_PASSWORD": 0o600,
    }
    assert all(f.secret for f in rendered["web"].files if f.mode == 0o600)
    assert env_of(lab, "web", "traefik") == {
        "COMPOSE_PROJECT_NAME": "traefik",
        "TZ": "Etc/UTC",
        "STATE_DIR": "/home/homelab/data/stacks/traefik",  # the stack's state, kept when the stack goes
        "TRAEFIK_VERSION": "v3.6.2",
        "TRAEFIK_HOST": "traefik.lab.example",
    }
    assert env_of(lab, "web", "portainer")["PORTAINER_HOST"] == "docker.lab.example"  # stacks.portainer.subdomain
    media = env_of(lab, "media", "media")
    assert media["JELLYFIN_HOST"] == "jellyfin.lab.example" and media["SONARR_HOST"] == "sonarr.lab.example"
    assert media["TZ"] == "Europe/Berlin" and media["PUID"] == "1001" and media["SONARR_VERSION"] == "4.0.10"
    assert media["PGID"] == "@PGID@"  # the VM's user's gid, put in on the VM (homelab_files host_ids)
    assert media["COMPOSE_FILE"] == "compose.yml:compose.qbittorrent.yml:compose.homelab.yml"  # + the guards
    assert media["DATA_ROOT"] == "/data"
    assert "JELLYFIN_VERSION" not in media  # no stacks.media.version: the compose file's default stays


def test_compose_files_are_copied_as_shipped() -> None:
    rendered = render_lab(make_lab(vms=VMS, domain="lab.example", stacks=STACKS))
    compose = next(f for f in rendered["web"].files if f.path == "portainer/compose.yml")
    assert compose.content == (catalogue()["portainer"].path / "compose.yml").read_text()


def test_without_a_domain_hosts_fall_back_to_home_arpa() -> None:
    lab = make_lab(vms=VMS, domain=None, stacks=STACKS)
    assert env_of(lab, "web", "traefik")["TRAEFIK_HOST"] == "traefik.home.arpa"


def test_homepage_lists_every_stack_in_the_lab_by_vm() -> None:
    lab = make_lab(vms=VMS, domain="lab.example", stacks=STACKS)
    files = {f.path: f.content for f in render_lab(lab)["web"].files}
    services = yaml.safe_load(files["homepage/config/services.yaml"])
    groups = {name: entries for group in services for name, entries in group.items()}
    assert list(groups) == ["web", "media"]
    web = {name: entry["href"] for item in groups["web"] for name, entry in item.items()}
    assert web == {
        "Traefik": "https://traefik.lab.example",
        "Portainer": "https://docker.lab.example",
        "Homepage": "https://home.lab.example",
    }
    media = [name for item in groups["media"] for name in item]
    assert media == ["Traefik", "Jellyfin", "Jellyseerr", "Sonarr", "Radarr", "Prowlarr", "Bazarr", "qBittorrent"]
    assert all(link.url.startswith("https://") for link in links(lab))


def test_env_values_are_quoted_so_compose_reads_them_literally() -> None:
    assert env_value("TZ", "Europe/Berlin", "x") == "Europe/Berlin"
    assert env_value("TITLE", "my lab $HOME #1", "x") == "'my lab $HOME #1'"
    with pytest.raises(InputError, match=r"stacks.media.env.NOTE: a value with a quote"):
        env_value("NOTE", "it's", "stacks.media.env")
    with pytest.raises(InputError, match="line break"):
        env_value("NOTE", "two\nlines", "stacks.media.env")


def test_nothing_from_the_environment_or_secrets_file_reaches_the_rendered_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", "s3cr3t-token-value")
    rendered = render_lab(make_lab(vms=VMS, domain="lab.example", stacks=STACKS))
    text = "".join(f.content for r in rendered.values() for f in r.files)
    assert "s3cr3t-token-value" not in text and "token" not in text.lower()


@needs_compose
@pytest.mark.parametrize("stack", sorted(catalogue()))
def test_every_rendered_compose_file_validates_with_its_env(stack: str, tmp_path: Path) -> None:
    assert COMPOSE is not None
    stacks: dict[str, Any] = {}
    for name in catalogue():  # the settings a stack requires (no default), e.g. wg-easy's WG_HOST
        meta = yaml.safe_load((catalogue()[name].path / "stack.yml").read_text()) or {}
        env = {s["name"]: "vpn.lab.example" for s in meta.get("settings") or () if s.get("required")}
        if env:
            stacks[name] = {"env": env}
    env = {**stacks.get(stack, {}).get("env", {}), "TITLE": "my lab $HOME", "TZ": "Europe/Berlin"}
    stacks[stack] = {"version": "9.9.9", "env": env}
    lab = make_lab(
        vms=[{"name": "all", "ip": "10.10.0.10", "stacks": sorted(catalogue())}], domain="lab.example", stacks=stacks
    )
    write_tree(render_lab(lab)["all"], tmp_path)
    folder = tmp_path / stack
    check = subprocess.run([COMPOSE, "-f", "compose.yml", "config", "-q"], cwd=folder, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    resolved = subprocess.run([COMPOSE, "-f", "compose.yml", "config"], cwd=folder, capture_output=True, text=True)
    config = yaml.safe_load(resolved.stdout)
    images = [service["image"] for service in config["services"].values()]
    assert any(image.endswith(":9.9.9") for image in images), images  # stacks.<name>.version reached compose
    rules = [
        value
        for service in config["services"].values()
        for key, value in service.get("labels", {}).items()
        if "rule" in key
    ]
    has_ui = bool(yaml.safe_load((catalogue()[stack].path / "stack.yml").read_text()).get("ui"))
    assert bool(rules) is has_ui  # a stack with a web UI routes it, one without has no router
    assert all(rule.startswith("Host(`") and rule.endswith(".lab.example`)") for rule in rules)
    if has_ui:
        assert config["networks"]["homelab"].get("external") in (True, {"name": "homelab"})


def test_inventory_pins_host_keys_and_uses_homelabs_key(tmp_path: Path) -> None:
    lab = make_lab(vms=VMS, domain="lab.example", stacks=STACKS)
    host = Host("web", "10.77.1.2", "homelab", host_key=HOST_KEY)
    other = Host("media", "10.77.2.2", "homelab", port=2222, host_key=HOST_KEY)
    assert known_hosts_text([host, other]) == f"10.77.1.2 {HOST_KEY}\n[10.77.2.2]:2222 {HOST_KEY}\n"
    with pytest.raises(ValueError, match="not pinned"):
        known_hosts_text([Host("x", "10.0.0.1", "homelab")])
    known = tmp_path / "with space" / "known_hosts"
    entry = host_vars(host, render_lab(lab)["web"], tmp_path / "id_ed25519", known, lab="test", remove=["media"])
    assert entry["ansible_host"] == "10.77.1.2" and entry["ansible_user"] == "homelab"
    assert entry["ansible_ssh_private_key_file"] == str(tmp_path / "id_ed25519")
    args = entry["ansible_ssh_common_args"]
    assert args == ssh_common_args(known)
    assert f"'UserKnownHostsFile={known}'" in args and "StrictHostKeyChecking=yes" in args
    assert "GlobalKnownHostsFile=/dev/null" in args and "StrictHostKeyChecking=no" not in args
    assert entry["homelab_stacks"] == ["traefik", "portainer", "homepage"]
    assert entry["homelab_lab"] == "test" and entry["homelab_remove_stacks"] == ["media"]
    # generated files only in the stack folders; the state (acme, data, config) under STATE_DIR, made when
    # missing; state folders of the earlier layout (inside the stack folder) move there once
    assert entry["homelab_stack_dirs"] == ["traefik", "traefik/dynamic", "portainer", "homepage", "homepage/config"]
    data = "/home/homelab/data"
    assert entry["homelab_state_dirs"] == [
        data,
        f"{data}/stacks",
        f"{data}/stacks/traefik",
        f"{data}/stacks/traefik/acme",
        f"{data}/stacks/portainer",
        f"{data}/stacks/portainer/data",
        f"{data}/stacks/homepage",
        f"{data}/stacks/homepage/config",
    ]
    assert entry["homelab_state_moves"][0] == {
        "stack": "traefik",
        "src": "traefik/acme",
        "dest": f"{data}/stacks/traefik/acme",
    }
    assert entry["homelab_purge_state"] == {}  # removing media keeps its data
    env = next(f for f in entry["homelab_stack_files"] if f["path"] == "traefik/.env")
    assert env["mode"] == "0644" and "TRAEFIK_VERSION=v3.6.2" in base64.b64decode(env["content_b64"]).decode()
    # secret files are never in the inventory (it lives beside ansible-runner's artifacts)
    assert not [f for f in entry["homelab_stack_files"] if "/secrets/" in f["path"] or f["mode"] == "0600"]


@pytest.mark.skipif(shutil.which("ansible-playbook") is None, reason="ansible-playbook is not installed (ansible-core)")
def test_the_playbook_and_its_roles_parse(tmp_path: Path) -> None:
    from homelab.deploy.service import playbook

    check = subprocess.run(
        ["ansible-playbook", "--syntax-check", "-i", "localhost,", str(playbook())],
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_ROLES_PATH": str(playbook().parent / "roles"), "ANSIBLE_LOCAL_TEMP": str(tmp_path)},
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_socket_proxy_opens_only_what_the_vms_stacks_need_and_shared_media_folders_are_made() -> None:
    stacks = ["traefik", "dozzle", "diun", "audiobookshelf", "navidrome"]
    lab = make_lab(vms=[{"name": "box", "ip": "10.10.0.12", "stacks": stacks, "data_disk": "50G"}])
    (render,) = render_lab(lab).values()
    files = {f.path: f.content for f in render.files}
    traefik_env = files["traefik/.env"]
    # dozzle needs INFO, diun IMAGES; nothing here needs networks or volumes: those stay closed (compose's 0)
    assert "SOCKET_PROXY_INFO=1" in traefik_env and "SOCKET_PROXY_IMAGES=1" in traefik_env
    assert "SOCKET_PROXY_NETWORKS" not in traefik_env and "SOCKET_PROXY_VOLUMES" not in traefik_env
    proxy = yaml.safe_load(files["traefik/compose.yml"])["services"]["socket-proxy"]["environment"]
    assert proxy["POST"] == "0" and proxy["INFO"] == "${SOCKET_PROXY_INFO:-0}"
    alone = make_lab(vms=[{"name": "box", "ip": "10.10.0.12", "stacks": ["traefik"]}])
    assert "SOCKET_PROXY_" not in {f.path: f.content for f in render_lab(alone)["box"].files}["traefik/.env"]
    # the music, audiobooks and podcasts of the one /data tree (on the data disk), made owned by the user
    root = "/home/homelab/data/media"
    assert f"DATA_ROOT={root}" in files["audiobookshelf/.env"] and f"DATA_ROOT={root}" in files["navidrome/.env"]
    assert "DATA_ROOT" not in files["dozzle/.env"]
    for folder in (root, f"{root}/media", f"{root}/media/audiobooks", f"{root}/media/podcasts", f"{root}/media/music"):
        assert folder in render.data_dirs, folder


def test_a_stacks_compose_files_are_read_once_however_often_it_renders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "stacks" / "books"
    folder.mkdir(parents=True)
    (folder / "stack.yml").write_text("description: books\n")
    (folder / "compose.yml").write_text('services:\n  books:\n    volumes: ["${DATA_ROOT:-/data}/media/books:/b"]\n')
    (folder / "compose.extra.yml").write_text("services:\n  reader: {}\n")
    vms = [{"name": "web", "ip": "10.10.0.10", "stacks": ["books"]}]
    reads: list[str] = []
    real = Path.read_text

    def counting(self: Path, *args: Any, **kwargs: Any) -> str:
        if self.name.startswith("compose"):
            reads.append(self.name)
        return real(self, *args, **kwargs)

    catalogue.cache_clear()
    try:
        lab = load_lab(write_lab(tmp_path / "lab.yml", lab_data(vms=vms, domain="lab.example")))
        monkeypatch.setattr(Path, "read_text", counting)
        renders = [render_lab(lab)["web"] for _ in range(3)]
        services = catalogue(tmp_path)["books"].services
    finally:
        catalogue.cache_clear()
    assert services == ("reader", "books")  # compose.extra.yml sorts first
    books = next(s for s in renders[-1].stacks if s.name == "books")
    root = books.data_dirs[0]
    assert books.data_dirs[-2:] == (f"{root}/media", f"{root}/media/books")  # made owned by the user
    assert sorted(reads) == ["compose.extra.yml", "compose.yml"]  # each file once, for .env, /data and shipping
