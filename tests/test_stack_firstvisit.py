"""Nothing in the media stack can be claimed by whoever opens it first (rendered, pure): the default example
lab's media stack guards every setup a first visitor could take (Jellyfin's wizard only on its /Startup paths,
so its TV and phone apps keep working) and seeds the apps that can be set up in advance, from generated secrets
that appear in no plain file; a stack's first_visit metadata is checked like the rest of stack.yml.

Traefik and the apps' images cannot be pulled here: what the routers do is read from their labels, what the
apps do with their seeded files from their sources (homelab/deploy/seeds.py says which)."""

from __future__ import annotations

import base64
import configparser
import hashlib
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from homelab.deploy import seeds
from homelab.deploy.firstvisit import GUARD_MIDDLEWARE
from homelab.deploy.inventory import host_vars, secret_entries
from homelab.deploy.plan import prepare
from homelab.deploy.render import VmRender, render_lab
from homelab.errors import InputError, LabFileError
from homelab.lab.loader import load_lab, parse_lab
from homelab.lab.models import Lab
from homelab.stacks import catalogue, read_stack
from homelab.state.hosts import Host
from tests.harness.labs import lab_data

EXAMPLE = Path(__file__).parent.parent / "inventories" / "example" / "lab.yml"
# Every web UI of the media stack whose first visit hands something out (a setup wizard, a login to create,
# a temporary password in a log, no login at all): the list.
CLAIMABLE = {"Jellyfin", "Jellyseerr", "Sonarr", "Radarr", "Prowlarr", "qBittorrent", "Bazarr"}
STATE = "/home/homelab/data/stacks/media"


def media_values() -> dict[str, str]:
    return {s.name: f"{s.name.lower()}-Vq3{s.name[:3]}x9" for s in catalogue()["media"].secrets}


def values_for(lab: Lab) -> dict[str, dict[str, str]]:
    values = {stack: {s.name: f"{stack}-{s.name}-Zr8w" for s in catalogue()[stack].secrets} for stack in catalogue()}
    values["media"] = media_values()
    return values


def media_lab(lab_wide_auth: str | None = None, **media: Any) -> Lab:
    data = lab_data(vms=[{"name": "m", "ip": "10.10.0.10", "stacks": ["traefik", "authelia", "media"]}])
    if lab_wide_auth:
        data["settings"] = {"auth": lab_wide_auth}
    if media:
        data["stacks"] = {"media": media}
    return parse_lab(yaml.safe_dump(data, sort_keys=False))


def routers(render: VmRender, stack: str = "media") -> dict[str, dict[str, str]]:
    """Every Traefik router of the stack as compose would merge its files (the overlay last), by name."""
    files = {f.path: f.content for f in render.files}
    env = dict(line.split("=", 1) for line in files[f"{stack}/.env"].splitlines() if line and not line.startswith("#"))
    found: dict[str, dict[str, str]] = {}
    for name in env["COMPOSE_FILE"].split(":"):
        for body in (yaml.safe_load(files[f"{stack}/{name}"])["services"] or {}).values():
            for key, value in ((body or {}).get("labels") or {}).items():
                m = re.match(r"^traefik\.http\.routers\.([^.]+)\.(.+)$", key)
                if m:
                    found.setdefault(m.group(1), {})[m.group(2)] = str(value)
    return found


def ui_router(found: dict[str, dict[str, str]], host_var: str) -> str:
    (name,) = [n for n, r in found.items() if "${" + host_var in r["rule"] and "PathRegexp" not in r["rule"]]
    return name


def test_the_example_labs_media_stack_leaves_nothing_to_claim() -> None:
    lab = load_lab(EXAMPLE)
    (render,) = render_lab(lab, values_for(lab)).values()
    found = routers(render)
    seeded = {f.path: f for f in render.seeds}
    info = catalogue()["media"]
    assert {ui.name for ui in info.uis} == CLAIMABLE
    for ui in info.uis:
        base = found[ui_router(found, ui.host_var)]
        guarded = GUARD_MIDDLEWARE in base.get("middlewares", "").split(",")
        setup_guarded = any(  # a router of its own on the setup paths, with the login
            r["rule"].startswith(f"({base['rule']}) && PathRegexp(") and r["middlewares"] == GUARD_MIDDLEWARE
            for r in found.values()
        )
        seed = ui.first_visit.seed if ui.first_visit else None
        assert guarded or setup_guarded or (seed is not None and f"{STATE}/{seed.file}" in seeded), ui.name
    # Jellyfin: only its setup wizard's API is behind the login, matched ignoring case (its routes do too)
    jellyfin = found["jellyfin"]
    assert "middlewares" not in jellyfin  # its TV and phone apps sign in to Jellyfin itself, as before
    guard = found["jellyfin-setup-guard"]
    assert guard["middlewares"] == GUARD_MIDDLEWARE and guard["service"] == "jellyfin"
    assert guard["rule"] == f"({jellyfin['rule']}) && PathRegexp(`(?i)^(/Startup)`)"
    pattern = re.compile(guard["rule"].split("PathRegexp(`")[1].split("`")[0])
    assert all(pattern.match(p) for p in ("/Startup/User", "/startup/complete", "/STARTUP/Configuration"))
    assert not any(pattern.match(p) for p in ("/Users/AuthenticateByName", "/web/index.html", "/Items"))
    assert int(guard["priority"]) > len(jellyfin["rule"])  # Traefik's default priority is the rule's length
    assert guard["entrypoints"] == "websecure" and guard["tls"] == "true"
    # the *arr apps trust that login (External), so it is in front of all of them; Jellyseerr's first sign-in
    # becomes admin, so all of it too
    for name in ("sonarr", "radarr", "prowlarr", "jellyseerr"):
        assert found[name]["middlewares"] == GUARD_MIDDLEWARE, name
    # the login: Traefik's basic auth with the dashboard's generated password, defined by the traefik stack
    traefik = yaml.safe_load(next(f.content for f in render.files if f.path == "traefik/compose.yml"))
    labels = traefik["services"]["traefik"]["labels"]
    assert labels["traefik.http.middlewares.homelab-guard.basicauth.usersfile"] == "/secrets/dashboard.htpasswd"
    assert labels["traefik.http.middlewares.homelab-guard.basicauth.removeheader"] == "true"  # not the apps' business
    assert "traefik/secrets/dashboard.htpasswd" in {f.path for f in render.secret_files}
    plan = "\n".join(prepare(lab, hosts=[], deployed=(), secrets=values_for(lab)).describe())
    assert "media: Jellyfin /Startup, Jellyseerr, Sonarr, Radarr, Prowlarr behind the lab's login" in plan
    assert "`homelab secrets show traefik`" in plan and "`homelab secrets show media`" in plan


def test_the_seeded_files_parse_and_carry_the_generated_values() -> None:
    lab = load_lab(EXAMPLE)
    values = values_for(lab)
    (render,) = render_lab(lab, values).values()
    seeded = {f.path: f for f in render.seeds}
    assert all(f.secret and f.mode == 0o600 for f in seeded.values())
    media = values["media"]
    for app in ("sonarr", "radarr", "prowlarr"):
        config = ET.fromstring(seeded[f"{STATE}/{app}/config.xml"].content)
        assert config.tag == "Config"
        assert config.findtext("ApiKey") == media[f"{app.upper()}_API_KEY"]
        assert config.findtext("AuthenticationMethod") == "External"  # the guard's login is theirs
        assert config.findtext("AuthenticationRequired") == "Enabled"  # never DisabledForLocalAddresses
    conf = configparser.ConfigParser(interpolation=None, strict=True)
    conf.optionxform = str  # type: ignore[assignment,method-assign]
    conf.read_string(seeded[f"{STATE}/qbittorrent/qBittorrent/qBittorrent.conf"].content)
    prefs = conf["Preferences"]
    assert prefs["WebUI\\Username"] == "admin"
    m = re.fullmatch(r'"@ByteArray\(([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)\)"', prefs["WebUI\\Password_PBKDF2"])
    assert m, prefs["WebUI\\Password_PBKDF2"]
    salt, key = base64.b64decode(m.group(1)), base64.b64decode(m.group(2))
    assert len(salt) == 16 and len(key) == 64
    password = media["QBITTORRENT_PASSWORD"].encode()
    assert hashlib.pbkdf2_hmac("sha512", password, salt, 100_000, 64) == key
    assert hashlib.pbkdf2_hmac("sha512", b"wrong", salt, 100_000, 64) != key
    assert conf["BitTorrent"]["Session\\DefaultSavePath"] == "/data/torrents"  # into the one /data tree
    bazarr = yaml.safe_load(seeded[f"{STATE}/bazarr/config/config.yaml"].content)["auth"]
    assert bazarr["type"] == "form" and bazarr["username"] == "admin"
    assert bazarr["password"] == hashlib.md5(media["BAZARR_PASSWORD"].encode()).hexdigest()
    assert bazarr["apikey"] == media["BAZARR_API_KEY"]
    # the same secrets render the same files: a redeploy has nothing new to write
    (again,) = render_lab(lab, values).values()
    assert [f.content for f in again.seeds] == [f.content for f in render.seeds]


def test_no_seeded_secret_reaches_a_plain_file_the_inventory_or_a_masked_render() -> None:
    lab = load_lab(EXAMPLE)
    values = values_for(lab)
    (render,) = render_lab(lab, values).values()
    host = Host("docker-01", "10.10.0.20", "homelab", host_key="ssh-ed25519 AAAA")
    inventory = yaml.safe_dump(host_vars(host, render, Path("/k"), Path("/kh"), lab="example"))
    plain = "".join(f.content for f in render.plain_files)
    for path in [f.path for f in render.plain_files]:
        assert not path.startswith("media/secrets/"), path  # seeded secrets get no file of their own
    encoded = {base64.b64encode(f.content.encode()).decode() for f in render.seeds}
    for name, value in values["media"].items():
        assert value not in plain and value not in inventory, name
    assert not any(e in inventory for e in encoded)
    assert {e["path"] for e in secret_entries(render)["seeds"]} == {f.path for f in render.seeds}
    (masked,) = render_lab(lab).values()  # a preview (`homelab stack render`): nothing to hide
    assert all("homelab secrets show media" in f.content for f in masked.seeds)
    assert EXAMPLE.read_text().count("API_KEY") == 0


def test_with_authelia_the_guards_are_its_login_and_auth_none_opts_out_with_a_warning() -> None:
    for behind in (media_lab("authelia"), media_lab(auth="authelia")):  # lab-wide, or the stack's
        (render,) = render_lab(behind, values_for(behind)).values()
        found = routers(render)
        assert found["jellyfin-setup-guard"]["middlewares"] == "authelia@docker"
        assert "middlewares" not in found["jellyfin"]  # a login page in front would lock its TV apps out
        assert found["sonarr"]["middlewares"] == "authelia@docker"  # once, not twice
        seeded = {f.path: f.content for f in render.seeds}
        assert "<AuthenticationMethod>External</AuthenticationMethod>" in seeded[f"{STATE}/sonarr/config.xml"]
        plan = "\n".join(prepare(behind, hosts=[], deployed=()).describe())
        assert "behind Authelia's login" in plan

    opened = media_lab(auth="none")
    (render,) = render_lab(opened, values_for(opened)).values()
    found = routers(render)
    assert "jellyfin-setup-guard" not in found and "middlewares" not in found["sonarr"]
    seeded = {f.path: f.content for f in render.seeds}
    # without a login in front, External would open Sonarr to anyone: the app asks for its own, as it does alone
    assert "AuthenticationMethod" not in seeded[f"{STATE}/sonarr/config.xml"]
    warnings = prepare(opened, hosts=[], deployed=()).warnings
    assert any("stacks.media.auth is none" in w and "claimed by whoever opens them first" in w for w in warnings)


def test_setup_done_lifts_a_guard_but_never_one_an_app_trusts() -> None:
    lab = media_lab(setup_done=["Jellyseerr"])
    (render,) = render_lab(lab, values_for(lab)).values()
    found = routers(render)
    assert "middlewares" not in found["jellyseerr"]  # its users sign in with their Jellyfin accounts now
    assert found["sonarr"]["middlewares"] == GUARD_MIDDLEWARE and "jellyfin-setup-guard" in found
    plan = "\n".join(prepare(lab, hosts=[], deployed=()).describe())
    assert "Jellyfin /Startup, Sonarr, Radarr, Prowlarr behind the lab's login" in plan
    assert "Jellyseerr set up by you (stacks.media.setup_done)" in plan
    for name, message in (
        ("Sonarr", "Sonarr trusts the login in front of it"),
        ("Plex", "'Plex' is no web UI of media with a guarded setup"),
        ("Bazarr", "'Bazarr' is no web UI of media with a guarded setup"),
    ):
        data = lab_data(vms=[{"name": "m", "ip": "10.10.0.10", "stacks": ["traefik", "media"]}])
        data["stacks"] = {"media": {"setup_done": [name]}}
        text = yaml.safe_dump(data, sort_keys=False)
        with pytest.raises(LabFileError) as caught:
            parse_lab(text)
        (line,) = caught.value.lines()
        line_no = next(i for i, row in enumerate(text.splitlines(), 1) if f"- {name}" in row)
        assert line.startswith(f"lab.yml:{line_no}: stacks.media.setup_done[0]: {message}"), line


@pytest.mark.parametrize(
    ("first_visit", "message"),
    [
        ("{guard: [Startup]}", r"ui\[0\]\.first_visit\.guard: 'Startup' is not allowed here"),
        ("{seed: {kind: plex, file: a.xml}}", r"ui\[0\]\.first_visit\.seed\.kind: 'plex': one of servarr"),
        (
            "{seed: {kind: servarr, file: ../x.xml, api_key: K}}",
            r"ui\[0\]\.first_visit\.seed\.file: a path under the stack's STATE_DIR",
        ),
        (
            "{seed: {kind: servarr, file: a.xml, api_key: NOPE}}",
            r"ui\[0\]\.first_visit\.seed\.api_key: must name a secret the stack",
        ),
        (
            "{seed: {kind: servarr, file: a.xml, api_key: K, password: K}}",
            r"ui\[0\]\.first_visit\.seed\.password: unknown; servarr takes",
        ),
        ("{login: yes}", r"ui\[0\]\.first_visit: a mapping with guard"),
    ],
)
def test_a_bad_first_visit_is_refused_naming_the_file_and_key(tmp_path: Path, first_visit: str, message: str) -> None:
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "compose.yml").write_text("services: {}\n")
    (folder / "stack.yml").write_text(
        "description: x\nsecrets: [{name: K, generate: hex16}]\n"
        f"ui: [{{name: App, host_var: APP_HOST, subdomain: app, first_visit: {first_visit}}}]\n"
    )
    with pytest.raises(InputError, match=re.escape(str(folder / "stack.yml")) + ": " + message):
        read_stack(folder)


def test_a_guard_needs_a_router_naming_the_uis_host(tmp_path: Path) -> None:
    folder = tmp_path / "stacks" / "app"
    folder.mkdir(parents=True)
    (folder / "compose.yml").write_text("services:\n  app:\n    image: x\n")
    (folder / "stack.yml").write_text(
        "description: x\nui: [{name: App, host_var: APP_HOST, subdomain: app, first_visit: {guard: [/setup]}}]\n"
    )
    data = lab_data(vms=[{"name": "m", "ip": "10.10.0.10", "stacks": ["traefik", "app"]}])
    lab = parse_lab(yaml.safe_dump(data), folder=tmp_path)
    with pytest.raises(InputError, match=r"ui App: first_visit\.guard needs a Traefik router whose rule names"):
        render_lab(lab)


def test_the_qbittorrent_hash_is_the_form_qbittorrent_checks() -> None:
    salt = bytes(range(16))
    value = seeds.qbittorrent_hash("adminadmin", salt)
    key = hashlib.pbkdf2_hmac("sha512", b"adminadmin", salt, 100_000, 64)
    assert value == f"@ByteArray({base64.b64encode(salt).decode()}:{base64.b64encode(key).decode()})"
