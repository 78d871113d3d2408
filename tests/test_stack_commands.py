"""`homelab stack add | remove | list | show | new` on a commented lab.yml, and what a lab's own stacks get.

Golden files (tests/data/catalog/): the lab file after each edit, byte for byte, so every comment, blank line
and indentation outside the changed lines is kept. Refusals leave the file as it was, and so does a write
interrupted half-way. A lab's own stacks (<lab folder>/stacks/<name>/) are listed, override built-in ones,
and are rendered like them; stacks.<name>.extend and forward-auth become compose.homelab.yml.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from homelab.deploy import labedit
from homelab.deploy.render import render_lab
from homelab.errors import InputError, LabFileError
from homelab.lab.loader import load_lab
from homelab.stacks import catalogue
from tests.harness.cli import run_cli

DATA = Path(__file__).parent / "data" / "catalog"


@pytest.fixture
def lab_file(tmp_path: Path) -> Path:
    path = tmp_path / "lab.yml"
    shutil.copy(DATA / "lab.yml", path)
    return path


def user_stack(lab_dir: Path, name: str, stack_yml: str, compose: str) -> Path:
    folder = lab_dir / "stacks" / name
    folder.mkdir(parents=True)
    (folder / "stack.yml").write_text(stack_yml)
    (folder / "compose.yml").write_text(compose)
    catalogue.cache_clear()
    return folder


@pytest.mark.parametrize(
    ("args", "golden", "says"),
    [
        (
            ["stack", "add", "media", "--vm", "web", "--set", "VPN_SERVER_COUNTRIES=Netherlands", "--no-deploy"],
            "lab.add-media-web.yml",
            "added media to web.",
        ),
        (["stack", "add", "homepage", "--vm", "db", "--no-deploy"], "lab.add-homepage-db.yml", "and traefik, which"),
        (
            ["stack", "remove", "portainer", "--vm", "web", "--no-deploy", "--yes"],
            "lab.remove-portainer-web.yml",
            "its data in /home/homelab/data/stacks/portainer is kept",
        ),
    ],
)
def test_edits_are_byte_identical_to_the_golden_file(lab_file: Path, args: list[str], golden: str, says: str) -> None:
    result = run_cli(*args, lab=lab_file)
    assert result.exit_code == 0, result.output
    assert says in result.output
    assert lab_file.read_bytes() == (DATA / golden).read_bytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stack", "add", "medai", "--vm", "web"], "unknown stack 'medai'; did you mean 'media'?"),
        (["stack", "add", "media", "--vm", "wbe"], "no VM named 'wbe' in"),
        (["stack", "add", "media", "--vm", "wbe"], "did you mean 'web'?"),
        (["stack", "add", "media", "--vm", "web", "--set", "VPN_PASSWORD=x"], "a secret does not belong"),
        (["stack", "add", "media", "--vm", "web", "--set", "NOEQUALS"], "expected KEY=VALUE"),
        (["stack", "remove", "media", "--vm", "web", "--yes"], "web does not run stack 'media'"),
        (["stack", "remove", "portainr", "--vm", "web", "--yes"], "did you mean 'portainer'?"),
        (["stack", "remove", "portainer", "--vm", "web"], "Not on a terminal: pass --yes"),
        (["stack", "remove", "portainer", "--vm", "web", "--purge-data", "--no-deploy"], "not with --no-deploy"),
    ],
)
def test_refusals_leave_the_file_untouched(lab_file: Path, args: list[str], message: str) -> None:
    before = lab_file.read_bytes()
    mtime = lab_file.stat().st_mtime_ns
    result = run_cli(*args, lab=lab_file)
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output
    assert lab_file.read_bytes() == before and lab_file.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in lab_file.parent.iterdir()) == ["lab.yml"]  # no temp file left


VPN_STACK_YML = (
    "description: A VPN of my own for the lab\ncategory: Remote access\n"
    "settings: [{name: VPN_HOSTNAME, required: true, description: the public name}]\n"
)
VPN_COMPOSE = 'services:\n  vpn:\n    image: "example/vpn:${VPN_VERSION:-1.2.3}"\n    restart: unless-stopped\n'


@pytest.mark.parametrize(
    ("on_db", "args", "says"),
    [
        (  # no terminal to ask on
            False,
            ["stack", "add", "vpn", "--vm", "db", "--no-deploy"],
            "stack vpn needs the setting VPN_HOSTNAME (the public name): pass --set VPN_HOSTNAME=...",
        ),
        (True, ["validate"], "vms[1].stacks[0]: stack vpn needs stacks.vpn.env.VPN_HOSTNAME (the public name)"),
    ],
)
def test_a_missing_required_setting_is_refused_and_named(
    lab_file: Path, on_db: bool, args: list[str], says: str
) -> None:
    user_stack(lab_file.parent, "vpn", VPN_STACK_YML, VPN_COMPOSE)
    if on_db:
        data = yaml.safe_load(lab_file.read_text())
        data["vms"][1]["stacks"] = ["vpn"]
        lab_file.write_text(yaml.safe_dump(data, sort_keys=False))
    before = lab_file.read_bytes()
    result = run_cli(*args, lab=lab_file)
    assert result.exit_code != 0 and says in result.output, result.output
    assert lab_file.read_bytes() == before


def test_a_required_setting_given_with_set_goes_into_the_lab_file(lab_file: Path) -> None:
    user_stack(lab_file.parent, "vpn", VPN_STACK_YML, VPN_COMPOSE)
    done = run_cli(
        "stack", "add", "vpn", "--vm", "db", "--set", "VPN_HOSTNAME=vpn.example", "--no-deploy", lab=lab_file
    )
    assert done.exit_code == 0, done.output
    assert load_lab(lab_file).stacks["vpn"].env == {"VPN_HOSTNAME": "vpn.example"}


def test_an_interrupted_write_leaves_the_old_file(lab_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = lab_file.read_bytes()

    def interrupted(src: object, dst: object) -> None:
        raise KeyboardInterrupt  # as if the user hit Ctrl-C between writing the new file and renaming it

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        labedit.add_stack(lab_file, "media", "web")
    with pytest.raises(KeyboardInterrupt):
        _, new, _ = labedit.removal_text(lab_file, "portainer", "web")
        labedit.write_lab_text(lab_file, new)
    assert lab_file.read_bytes() == before
    assert sorted(p.name for p in lab_file.parent.iterdir()) == ["lab.yml"]


def test_a_lab_stack_is_listed_and_overrides_a_built_in_one(lab_file: Path) -> None:
    user_stack(
        lab_file.parent,
        "portainer",
        "description: My own Portainer build for the lab\ncategory: Management\n",
        'services:\n  portainer:\n    image: "example/portainer:${PORTAINER_VERSION:-9.9.9}"\n'
        "    restart: unless-stopped\n",
    )
    user_stack(
        lab_file.parent,
        "notes",
        "description: Notes app of my own for the lab\ncategory: Productivity\nstate: [data]\n",
        'services:\n  notes:\n    image: "example/notes:${NOTES_VERSION:-1.0.0}"\n    restart: unless-stopped\n'
        '    volumes: ["${STATE_DIR:-./state}/data:/data"]\n',
    )
    rows = {row["name"]: row for row in json.loads(run_cli("stack", "list", "--json", lab=lab_file).output)}
    assert rows["portainer"]["origin"] == "overrides built-in" and rows["portainer"]["vms"] == ["web"]
    assert rows["notes"]["origin"] == "user" and rows["traefik"]["origin"] == "built-in"
    text = run_cli("stack", "list", lab=lab_file).output
    assert "[overrides built-in]" in text and "[user]" in text
    lab = load_lab(lab_file)
    files = {f.path: f.content for f in render_lab(lab)["web"].files}
    assert "example/portainer:" in files["portainer/compose.yml"]  # the lab's own, not the built-in one
    shown = json.loads(run_cli("stack", "show", "notes", "--json", lab=lab_file).output)
    assert shown["origin"] == "user" and shown["state_dir"] == "/home/homelab/data/stacks/notes"
    assert shown["volumes"] == {"notes": ["${STATE_DIR:-./state}/data:/data"]}


def test_a_broken_lab_stack_is_named_in_one_line(lab_file: Path) -> None:
    user_stack(lab_file.parent, "bad", "description: x\nsecrets: [{name: X, generate: uuid}]\n", "services: {}\n")
    result = run_cli("stack", "list", lab=lab_file)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "stacks/bad/stack.yml: secrets[0].generate: 'uuid': one of password, hex32, hex16, base64-32 or empty" in (
        result.output
    )


def test_show_names_settings_secrets_ports_and_uis(lab_file: Path) -> None:
    shown = json.loads(run_cli("stack", "show", "media", "--json", lab=lab_file).output)
    assert shown["category"] == "Media" and shown["requires"] == ["traefik"]
    assert [s["name"] for s in shown["secrets"]][:2] == ["WIREGUARD_PRIVATE_KEY", "SONARR_API_KEY"]
    assert shown["ports"] == ["6881:6881", "6881:6881/udp"] and "jellyfin" in shown["state"]
    jellyfin = next(ui for ui in shown["ui"] if ui["name"] == "Jellyfin")
    assert jellyfin["url"] == "https://jellyfin.lab.example" and jellyfin["port"] == 8096
    text = run_cli("stack", "show", "media", lab=lab_file).output
    assert "state: /home/homelab/data/stacks/media/{jellyfin," in text and "(kept when removed)" in text
    assert "did you mean 'media'?" in run_cli("stack", "show", "medai", lab=lab_file).output


def authelia(lab_dir: Path) -> None:
    user_stack(
        lab_dir,
        "authelia",
        "description: Authelia stand-in for the lab's tests\ncategory: Security\nrequires: [traefik]\n",
        'services:\n  authelia:\n    image: "authelia/authelia:${AUTHELIA_VERSION:-4.39.13}"\n'
        "    restart: unless-stopped\n",
    )


def test_extend_and_forward_auth_go_into_an_overlay(lab_file: Path) -> None:
    authelia(lab_file.parent)
    data = yaml.safe_load(lab_file.read_text())
    data["vms"][0]["stacks"].append("authelia")
    data["settings"] = {"auth": "authelia"}
    data["stacks"]["portainer"] = {
        "extend": {
            "services": {
                "portainer": {
                    "environment": {"LOG_LEVEL": "debug"},
                    "labels": {"com.example.team": "ops"},
                    "volumes": ["/srv/backups:/backups:ro"],
                }
            }
        }
    }
    lab_file.write_text(yaml.safe_dump(data, sort_keys=False))
    files = {f.path: f.content for f in render_lab(load_lab(lab_file))["web"].files}
    overlay = yaml.safe_load(files["portainer/compose.homelab.yml"])
    assert overlay == {
        "services": {
            "portainer": {
                "environment": {"LOG_LEVEL": "debug"},
                "labels": {
                    "com.example.team": "ops",
                    "traefik.http.routers.portainer.middlewares": "authelia@docker",
                },
                "volumes": ["/srv/backups:/backups:ro"],
            }
        }
    }
    assert "COMPOSE_FILE=compose.yml:compose.homelab.yml" in files["portainer/.env"]
    homepage = yaml.safe_load(files["homepage/compose.homelab.yml"])["services"]["homepage"]["labels"]
    assert homepage == {"traefik.http.routers.homepage.middlewares": "authelia@docker"}
    # Traefik keeps its own login (never behind the lab-wide default); stacks without a router get nothing
    assert "traefik/compose.homelab.yml" not in files and "authelia/compose.homelab.yml" not in files
    # a stack that opts out
    data["stacks"]["homepage"] = {"auth": "none"}
    lab_file.write_text(yaml.safe_dump(data, sort_keys=False))
    files = {f.path: f.content for f in render_lab(load_lab(lab_file))["web"].files}
    assert "homepage/compose.homelab.yml" not in files and "COMPOSE_FILE" not in files["homepage/.env"]


def test_forward_auth_needs_authelia_on_the_vm(lab_file: Path) -> None:
    authelia(lab_file.parent)
    data = yaml.safe_load(lab_file.read_text())
    data["stacks"]["portainer"] = {"auth": "authelia"}
    lab_file.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(LabFileError, match=r"stacks\.portainer\.auth is authelia: add the authelia stack to web"):
        load_lab(lab_file)


def test_secrets_env_holds_every_secret_for_images_without_file_support(lab_file: Path) -> None:
    user_stack(
        lab_file.parent,
        "wiki",
        "description: A wiki of my own for the lab\ncategory: Documents\n"
        "secrets: [{name: DB_PASSWORD, generate: password}, {name: SESSION_KEY, generate: hex32},"
        " {name: APP_KEY, generate: base64-32}]\n",
        'services:\n  wiki:\n    image: "example/wiki:${WIKI_VERSION:-2.5.1}"\n    restart: unless-stopped\n'
        "    env_file: [./secrets/secrets.env]\n",
    )
    data = yaml.safe_load(lab_file.read_text())
    data["vms"][1]["stacks"] = ["wiki"]
    lab_file.write_text(yaml.safe_dump(data, sort_keys=False))
    lab = load_lab(lab_file)
    values = {"wiki": {"DB_PASSWORD": "pw-1 $HOME", "SESSION_KEY": "ab" * 32, "APP_KEY": "a+b/c=="}}
    files = {f.path: f for f in render_lab(lab, values)["db"].files}
    env = files["wiki/secrets/secrets.env"]
    assert env.mode == 0o600 and env.secret
    assert env.content.splitlines()[1:] == [
        "DB_PASSWORD='pw-1 $HOME'",  # quoted: compose v2 neither splits nor interpolates it
        f"SESSION_KEY={'ab' * 32}",
        "APP_KEY=a+b/c==",
    ]
    masked = {f.path: f for f in render_lab(lab)["db"].files}["wiki/secrets/secrets.env"]
    assert "pw-1" not in masked.content and "homelab secrets show wiki" in masked.content
    from homelab.stacks import SecretSpec
    from homelab.state.stacksecrets import _generate

    assert len(_generate(SecretSpec("X", generate="password"))) == 32
    assert len(bytes.fromhex(_generate(SecretSpec("X", generate="hex32")))) == 32
    import base64

    assert len(base64.b64decode(_generate(SecretSpec("X", generate="base64-32")))) == 32


def test_stack_new_scaffolds_and_refuses_an_existing_folder(lab_file: Path) -> None:
    result = run_cli("stack", "new", "my-app", lab=lab_file)
    assert result.exit_code == 0 and (lab_file.parent / "stacks" / "my-app" / "compose.yml").is_file()
    assert "my-app" in catalogue(lab_file.parent.absolute())
    again = run_cli("stack", "new", "my-app", lab=lab_file)
    assert again.exit_code != 0 and "exists already" in again.output
    with pytest.raises(InputError, match="DNS label"):
        from homelab.deploy.scaffold import new_stack

        new_stack(lab_file.parent, "My_App")


def test_the_lab_check_names_an_unknown_extended_service(lab_file: Path) -> None:
    data = yaml.safe_load(lab_file.read_text())
    data["stacks"]["portainer"] = {"extend": {"services": {"portainr": {"environment": {"A": "b"}}}}}
    lab_file.write_text(yaml.safe_dump(data, sort_keys=False))
    result = run_cli("validate", lab=lab_file)
    assert result.exit_code != 0
    assert "stacks.portainer.extend.services.portainr: stack portainer has no service 'portainr'" in result.output
    assert "did you mean 'portainer'?" in result.output


def test_two_stacks_publishing_one_port_on_a_vm_are_refused(lab_file: Path) -> None:
    user_stack(
        lab_file.parent,
        "edge",
        'description: Another proxy of my own for the lab\ncategory: Network\nports: ["443:8443"]\n',
        'services:\n  edge:\n    image: "example/edge:${EDGE_VERSION:-1.2.3}"\n    restart: unless-stopped\n',
    )
    data = yaml.safe_load(lab_file.read_text())
    data["vms"][0]["stacks"].append("edge")
    lab_file.write_text(yaml.safe_dump(data, sort_keys=False))
    result = run_cli("validate", lab=lab_file)
    assert result.exit_code != 0 and "vms[0].stacks[3]: edge and traefik both publish port 443/tcp" in result.output


def test_files_a_stack_ships_and_files_a_stack_module_generates_are_rendered(
    lab_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.machinery
    import sys
    import types

    from homelab.deploy import render

    folder = user_stack(
        lab_file.parent,
        "metrics",
        "description: Metrics of my own for the lab\ncategory: Monitoring\n",
        'services:\n  metrics:\n    image: "example/metrics:${METRICS_VERSION:-2.1.0}"\n    restart: unless-stopped\n'
        "    volumes: [./conf/provisioning:/etc/provisioning:ro]\n",
    )
    (folder / "conf" / "provisioning").mkdir(parents=True)
    (folder / "conf" / "provisioning" / "source.yml").write_text("url: http://prometheus:9090\n")
    (folder / ".editor-backup").write_text("not shipped\n")
    data = yaml.safe_load(lab_file.read_text())
    data["vms"][1]["stacks"] = ["metrics"]
    lab_file.write_text(yaml.safe_dump(data, sort_keys=False))
    stack = render.render_stack(load_lab(lab_file), load_lab(lab_file).vms[1], "metrics")
    assert {f.path for f in stack.files} == {
        "metrics/compose.yml",
        "metrics/conf/provisioning/source.yml",
        "metrics/.env",
        "metrics/.homelab-stack",
    }
    assert stack.dirs == ("metrics", "metrics/conf", "metrics/conf/provisioning")  # parents first, for the module

    # a built-in stack with a module homelab.deploy.stack_<name> gets the files its files() generates
    module = types.ModuleType("homelab.deploy.stack_portainer")
    module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)

    def files(lab: object, vm: object, values: object) -> list[tuple[str, str, bool]]:
        return [
            ("generated.yml", "a: 1\n", False),
            ("secrets/users.yml", "masked\n" if values is None else "x\n", True),
        ]

    module.files = files  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    lab = load_lab(lab_file)
    made = {f.path: f for f in render.render_stack(lab, lab.vms[0], "portainer").files}
    assert made["portainer/generated.yml"].content == "a: 1\n" and not made["portainer/generated.yml"].secret
    assert made["portainer/secrets/users.yml"].secret and made["portainer/secrets/users.yml"].mode == 0o600
    assert render.stack_generator("traefik") is None
