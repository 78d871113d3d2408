"""What the stacks give a homelabber, rendered (pure): HTTPS on every router, the Docker socket only in the
socket proxy and Portainer, stack secrets (refused in lab.yml, 0600, masked without values), Traefik's
configuration per certificate mode, the media stack's /data tree and download client, image pins that work
with Docker Engine 29, and compose files that pass the compose-spec schema."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import bcrypt
import jsonschema
import pytest
import yaml

from homelab.deploy import stackfiles
from homelab.deploy.render import render_lab, write_tree
from homelab.errors import LabFileError, SecretError
from homelab.lab.loader import parse_lab
from homelab.stackimages import pinned_images, too_old_for_engine_29
from homelab.stacks import catalogue
from homelab.state.stacksecrets import generated_file, resolve
from tests.harness.cli import run_cli
from tests.harness.docker import COMPOSE, needs_compose
from tests.harness.labs import lab_data, make_lab, write_lab

ALL = sorted(catalogue())
SCHEMA = json.loads((Path(__file__).parent / "data" / "compose-spec" / "compose_spec.json").read_text())
ACME_DNS = {"ca": "acme", "acme": {"email": "me@lab.example.com", "dns_provider": "cloudflare"}}


CORE = ["homepage", "media", "portainer", "traefik"]  # the stacks whose secrets the secret tests name


def required_env(names: list[str]) -> dict[str, dict[str, Any]]:
    """stacks.<name>.env for the settings a stack requires (no default), e.g. wg-easy's WG_HOST."""
    found: dict[str, dict[str, Any]] = {}
    for name in names:
        meta = yaml.safe_load((catalogue()[name].path / "stack.yml").read_text()) or {}
        env = {s["name"]: "example.lab.example.com" for s in meta.get("settings") or () if s.get("required")}
        if env:
            found[name] = {"env": env}
    return found


def one_vm(stacks_: list[str] = ALL, **sections: Any) -> dict[str, Any]:
    stacks = required_env(stacks_)
    for name, given in (sections.pop("stacks", None) or {}).items():
        stacks[name] = {**stacks.get(name, {}), **given}
    vms = [{"name": "all", "ip": "10.10.0.10", "stacks": stacks_}]
    return lab_data(vms=vms, domain="lab.example.com", **({"stacks": stacks} if stacks else {}), **sections)


def files_of(lab_data_: dict[str, Any], secrets: Any = None) -> dict[str, Any]:
    lab = parse_lab(yaml.safe_dump(lab_data_, sort_keys=False))
    return {f.path: f for f in render_lab(lab, secrets)["all"].files}


def composes(files: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {path: yaml.safe_load(f.content) for path, f in files.items() if Path(path).name.startswith("compose")}


def services(files: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every service as compose sees it across the files: a later file's mappings (labels, ...) merge in."""
    found: dict[str, dict[str, Any]] = {}
    for doc in composes(files).values():
        for name, svc in doc["services"].items():
            base = found.setdefault(name, {})
            for key, value in svc.items():
                both = isinstance(value, dict) and isinstance(base.get(key), dict)
                base[key] = {**base[key], **value} if both else value
    return found


def test_every_rendered_compose_file_passes_the_compose_spec_schema() -> None:
    for variant in (one_vm(), one_vm(https=ACME_DNS, stacks={"media": {"env": {"VPN_SERVICE_PROVIDER": "mullvad"}}})):
        for path, doc in composes(files_of(variant)).items():
            errors = [e.message for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(doc)]
            assert not errors, (path, errors)


def test_only_the_socket_proxy_and_portainer_mount_the_docker_socket() -> None:
    mounting = {
        name
        for name, svc in services(files_of(one_vm())).items()
        if any("docker.sock" in str(volume) for volume in svc.get("volumes", ()))
    }
    assert mounting == {"socket-proxy", "portainer"}
    proxy = services(files_of(one_vm()))["socket-proxy"]
    assert proxy["environment"]["POST"] == "0" and proxy["networks"] == ["homelab-socket"]
    allowed = {key for key, value in proxy["environment"].items() if value == "1"}
    assert allowed == {"CONTAINERS", "EVENTS", "PING", "VERSION"}  # read-only, only what Traefik and Homepage use
    files = files_of(one_vm())
    assert yaml.safe_load(files["traefik/traefik.yml"].content)["providers"]["docker"]["endpoint"] == (
        "tcp://socket-proxy:2375"
    )
    assert yaml.safe_load(files["homepage/config/docker.yaml"].content) == {
        "homelab": {"host": "socket-proxy", "port": 2375}
    }


def test_every_router_is_https_and_port_80_only_redirects() -> None:
    files = files_of(one_vm())
    routers = {}
    for svc in services(files).values():
        for key, value in (svc.get("labels") or {}).items():
            parts = key.split(".")
            if parts[:3] == ["traefik", "http", "routers"]:
                routers.setdefault(parts[3], {})[".".join(parts[4:])] = value
    uis = sum(len(yaml.safe_load((catalogue()[name].path / "stack.yml").read_text()).get("ui") or ()) for name in ALL)
    guards = sum(  # and one per web UI whose setup paths are guarded (homelab.deploy.firstvisit)
        1 for name in ALL for ui in catalogue()[name].uis if ui.first_visit and set(ui.first_visit.guard) - {"/"}
    )
    assert len(routers) == uis + guards  # one router per web UI a stack declares, none more
    for name, router in routers.items():
        assert router["entrypoints"] == "websecure" and router["tls"] == "true", name
    static = yaml.safe_load(files["traefik/traefik.yml"].content)
    web, websecure = static["entryPoints"]["web"], static["entryPoints"]["websecure"]
    assert web["http"]["redirections"]["entryPoint"] == {"to": "websecure", "scheme": "https", "permanent": True}
    assert websecure["address"] == ":443"
    assert routers["traefik"]["middlewares"] == "traefik-dashboard-auth"  # the dashboard needs a login
    hrefs = [
        entry["href"]
        for group in yaml.safe_load(files["homepage/config/services.yaml"].content)
        for items in group.values()
        for item in items
        for entry in item.values()
    ]
    assert hrefs and all(href.startswith("https://") for href in hrefs)


def test_certificates_local_ca_acme_dns_wildcard_and_acme_http() -> None:
    local = yaml.safe_load(files_of(one_vm())["traefik/dynamic/tls.yml"].content)
    assert local["tls"]["stores"]["default"]["defaultCertificate"]["keyFile"] == "/secrets/local-tls.key"
    assert "certificatesResolvers" not in yaml.safe_load(files_of(one_vm())["traefik/traefik.yml"].content)

    dns = files_of(one_vm(https=ACME_DNS))
    static = yaml.safe_load(dns["traefik/traefik.yml"].content)
    acme = static["certificatesResolvers"]["homelab"]["acme"]
    assert acme["dnsChallenge"] == {"provider": "cloudflare"} and acme["storage"] == "/acme/acme.json"
    assert acme["caServer"].startswith("https://acme-v02.api.letsencrypt.org/")
    tls = static["entryPoints"]["websecure"]["http"]["tls"]
    assert tls == {"certResolver": "homelab", "domains": [{"main": "lab.example.com", "sans": ["*.lab.example.com"]}]}
    assert dns["traefik/traefik.env"].content.splitlines()[1:] == ["CF_DNS_API_TOKEN_FILE=/secrets/CF_DNS_API_TOKEN"]
    assert dns["traefik/secrets/CF_DNS_API_TOKEN"].mode == 0o600 and "traefik/secrets/local-tls.key" not in dns

    http = one_vm(https={"ca": "acme", "acme": {"email": "me@lab.example.com", "challenge": "http"}})
    static = yaml.safe_load(files_of(http)["traefik/traefik.yml"].content)
    assert static["certificatesResolvers"]["homelab"]["acme"]["httpChallenge"] == {"entryPoint": "web"}


def test_acme_needs_a_public_domain_and_a_known_dns_provider() -> None:
    with pytest.raises(LabFileError, match=r"https.ca: home.arpa is not a public domain"):
        parse_lab(yaml.safe_dump(lab_data(https=ACME_DNS)))
    bad = {"ca": "acme", "acme": {"email": "a@b.c", "dns_provider": "nope"}}
    with pytest.raises(LabFileError, match=r"https.acme.dns_provider: unknown DNS provider 'nope'"):
        parse_lab(yaml.safe_dump(one_vm(https=bad)))


@pytest.mark.parametrize("key", ["CF_DNS_API_TOKEN", "PORTAINER_ADMIN_PASSWORD", "MY_API_KEY"])
def test_a_secret_in_the_lab_file_is_refused_with_where_it_belongs(key: str) -> None:
    text = yaml.safe_dump(one_vm(stacks={"portainer": {"env": {key: "hunter2-value"}}}), sort_keys=False)
    with pytest.raises(LabFileError) as caught:
        parse_lab(text)
    (line,) = caught.value.lines()
    line_no = next(i for i, row in enumerate(text.splitlines(), 1) if key in row)
    assert line.startswith(f"lab.yml:{line_no}: stacks.portainer.env.{key}: a secret does not belong in the lab file")
    assert f"HOMELAB_PORTAINER_{key}" in line and "secrets file" in line and "hunter2-value" not in line


def test_secrets_come_from_the_environment_the_secrets_file_or_are_generated_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = parse_lab(yaml.safe_dump(one_vm(CORE, https=ACME_DNS)))
    wanted = stackfiles.wanted_secrets(lab)
    names = {stack: [s.name for s in specs] for stack, specs in wanted.items()}
    assert names["portainer"] == ["PORTAINER_ADMIN_PASSWORD"]
    assert names["traefik"] == ["TRAEFIK_DASHBOARD_PASSWORD", "CF_DNS_API_TOKEN"]
    assert "WIREGUARD_PRIVATE_KEY" not in names["media"]  # no VPN: no WireGuard key
    assert names["media"] == [  # generated, for the apps' settings written before their first start
        "SONARR_API_KEY",
        "RADARR_API_KEY",
        "PROWLARR_API_KEY",
        "QBITTORRENT_PASSWORD",
        "BAZARR_PASSWORD",
        "BAZARR_API_KEY",
    ]
    with pytest.raises(SecretError, match=r"CF_DNS_API_TOKEN has no value: set HOMELAB_TRAEFIK_CF_DNS_API_TOKEN"):
        resolve(lab, wanted)
    assert not generated_file(lab).exists()  # nothing half-kept
    secrets_file = tmp_path / "config" / "secrets.yml"
    secrets_file.parent.mkdir(parents=True, exist_ok=True)
    secrets_file.write_text(yaml.safe_dump({"test": {"stacks": {"traefik": {"CF_DNS_API_TOKEN": "from-file"}}}}))
    with pytest.raises(SecretError, match="readable by other users"):
        resolve(lab, wanted)
    secrets_file.chmod(0o600)
    first = resolve(lab, wanted)
    assert first["traefik"]["CF_DNS_API_TOKEN"].source == "secrets file"
    assert first["portainer"]["PORTAINER_ADMIN_PASSWORD"].source == "generated"
    password = first["portainer"]["PORTAINER_ADMIN_PASSWORD"].value
    assert len(password) >= 24 and password not in repr(first)
    assert generated_file(lab).stat().st_mode & 0o777 == 0o600
    again = resolve(lab, wanted)
    assert again["portainer"]["PORTAINER_ADMIN_PASSWORD"].value == password  # kept
    monkeypatch.setenv("HOMELAB_TRAEFIK_CF_DNS_API_TOKEN", "from-env")
    assert resolve(lab, wanted)["traefik"]["CF_DNS_API_TOKEN"].value == "from-env"
    preview = make_lab(vms=[{"name": "p", "ip": "10.10.0.11", "stacks": ["traefik"]}], name="other")
    resolve(preview, stackfiles.wanted_secrets(preview), keep=False)
    assert not generated_file(preview).exists()  # a preview keeps nothing


def test_secret_files_are_0600_in_a_0700_folder_and_masked_without_values(tmp_path: Path) -> None:
    masked = files_of(one_vm(CORE))
    secret = {path: f for path, f in masked.items() if f.secret}
    assert set(secret) == {
        "traefik/secrets/dashboard.htpasswd",
        "traefik/secrets/local-tls.crt",
        "traefik/secrets/local-tls.key",
        "portainer/secrets/PORTAINER_ADMIN_PASSWORD",
    }
    assert all(f.mode == 0o600 and "homelab secrets show" in f.content for f in secret.values())
    values = {"portainer": {"PORTAINER_ADMIN_PASSWORD": "pw-one"}, "traefik": {"TRAEFIK_DASHBOARD_PASSWORD": "pw-two"}}
    values["media"] = {s.name: f"media-{s.name}" for s in catalogue()["media"].secrets}
    real = files_of(one_vm(CORE), values)
    assert real["portainer/secrets/PORTAINER_ADMIN_PASSWORD"].content == "pw-one"
    user, hashed = real["traefik/secrets/dashboard.htpasswd"].content.strip().split(":", 1)
    assert user == "admin" and bcrypt.checkpw(b"pw-two", hashed.encode())
    assert (
        files_of(one_vm(CORE), values)["traefik/secrets/dashboard.htpasswd"].content
        == real["traefik/secrets/dashboard.htpasswd"].content
    )  # the same password gives the same file: a second deploy changes nothing
    plain = "".join(f.content for f in real.values() if not f.secret)
    assert "pw-one" not in plain and "pw-two" not in plain
    portainer = services(real)["portainer"]
    assert portainer["command"] == ["--admin-password-file", "/secrets/PORTAINER_ADMIN_PASSWORD"]


def test_the_media_stack_shares_one_data_tree_and_picks_its_download_client() -> None:
    files = files_of(one_vm())
    base = services({p: f for p, f in files.items() if p in ("media/compose.yml", "media/compose.qbittorrent.yml")})
    assert set(base) == {"jellyfin", "sonarr", "radarr", "prowlarr", "bazarr", "jellyseerr", "qbittorrent"}
    for name in ("jellyfin", "sonarr", "radarr", "bazarr", "qbittorrent"):
        assert "${DATA_ROOT:-/data}:/data" in base[name]["volumes"], name  # one mount: hardlinks work
    for name, svc in base.items():
        assert svc["environment"]["UMASK"] == "002" and svc["environment"]["PUID"] == "${PUID:-1000}", name
    env = files["media/.env"].content
    assert "COMPOSE_FILE=compose.yml:compose.qbittorrent.yml" in env and files["media/.env"].host_ids
    lab = parse_lab(yaml.safe_dump(one_vm(timezone="Europe/Berlin")))
    assert stackfiles.data_dirs(lab, lab.vms[0]) == (
        "/data",
        "/data/torrents",
        "/data/torrents/tv",
        "/data/torrents/movies",
        "/data/media",
        "/data/media/tv",
        "/data/media/movies",
    )
    made = render_lab(lab)["all"].data_dirs  # with the folders other stacks mount from the tree (media/music, ...)
    assert set(stackfiles.data_dirs(lab, lab.vms[0])) <= set(made) and made[0] == "/data"
    on_disk = parse_lab(yaml.safe_dump(one_vm(settings={"data_disk": "100G"})))  # the VM's data disk holds it
    assert stackfiles.data_root(on_disk, on_disk.vms[0]) == "/home/homelab/data/media"
    assert all(
        "TZ=Europe/Berlin" in f.content
        for p, f in files_of(one_vm(timezone="Europe/Berlin")).items()
        if p.endswith("/.env")
    )

    vpn = one_vm(stacks={"media": {"env": {"VPN_SERVICE_PROVIDER": "mullvad"}}})
    vpn["vms"][0]["gpu"] = "igpu"
    files = files_of(vpn)
    assert "COMPOSE_FILE=compose.yml:compose.vpn.yml:compose.gpu.yml" in files["media/.env"].content
    assert "media/secrets/WIREGUARD_PRIVATE_KEY" in files
    routed = services({p: files[p] for p in ("media/compose.vpn.yml",)})
    assert routed["qbittorrent"]["network_mode"] == "service:gluetun"
    gpu = services({"media/compose.gpu.yml": files["media/compose.gpu.yml"]})
    assert gpu["jellyfin"]["devices"] == ["/dev/dri:/dev/dri"]


def test_shipped_image_pins_work_with_docker_engine_29() -> None:
    # the table knows the releases that broke: these pins were shipped before and fail against Engine 29
    assert too_old_for_engine_29("traefik", "v3.1") and too_old_for_engine_29("portainer/portainer-ce", "2.21.0")
    assert too_old_for_engine_29("traefik", "v3.5.3") and not too_old_for_engine_29("traefik", "v3.6")
    pins = [(stack, image, tag) for stack in ALL for image, _, tag in pinned_images(stack)]
    assert {image for _, image, _ in pins} >= {"traefik", "portainer/portainer-ce", "tecnativa/docker-socket-proxy"}
    assert [p for p in pins if too_old_for_engine_29(p[1], p[2])] == []
    with pytest.raises(LabFileError, match=r"stacks.traefik.version: traefik:v3.1 cannot talk to Docker Engine 29"):
        parse_lab(yaml.safe_dump(one_vm(stacks={"traefik": {"version": "v3.1"}})))
    parse_lab(yaml.safe_dump(one_vm(stacks={"traefik": {"version": "v3.1"}}, docker={"source": "distribution"})))


@needs_compose
@pytest.mark.parametrize("vpn", [False, True])
def test_the_media_stack_validates_as_compose_reads_it_from_its_env(vpn: bool, tmp_path: Path) -> None:
    assert COMPOSE is not None
    data = one_vm(stacks={"media": {"env": {"VPN_SERVICE_PROVIDER": "mullvad"}}} if vpn else {})
    data["vms"][0]["gpu"] = "igpu"
    write_tree(render_lab(parse_lab(yaml.safe_dump(data)))["all"], tmp_path)
    env = (tmp_path / "media" / ".env").read_text().replace("@PUID@", "1000").replace("@PGID@", "1000")
    (tmp_path / "media" / ".env").write_text(env)
    out = subprocess.run([COMPOSE, "config"], cwd=tmp_path / "media", capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    assert ("gluetun" in config["services"]) is vpn and config["services"]["jellyfin"]["devices"] == [
        "/dev/dri:/dev/dri"
    ]


def test_stack_render_writes_what_each_vm_gets_with_secrets_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab_path = write_lab(tmp_path / "lab.yml", one_vm(https=ACME_DNS))
    monkeypatch.setenv("HOMELAB_TRAEFIK_CF_DNS_API_TOKEN", "cf-token-value-123")
    result = run_cli("stack", "render", str(tmp_path / "out"), lab=lab_path)
    assert result.exit_code == 0, result.output
    written = {
        str(p.relative_to(tmp_path / "out" / "all")) for p in (tmp_path / "out" / "all").rglob("*") if p.is_file()
    }
    lab = parse_lab(lab_path.read_text())
    assert written == {f.path for f in render_lab(lab)["all"].files}
    token = tmp_path / "out" / "all" / "traefik" / "secrets" / "CF_DNS_API_TOKEN"
    assert token.stat().st_mode & 0o777 == 0o600 and "cf-token-value-123" not in token.read_text()
    assert (token.parent.stat().st_mode & 0o777) == 0o700
    everything = "".join(p.read_text() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert "cf-token-value-123" not in everything + result.output
    assert "and the folder /data/media/movies on the VM, owned by homelab" in result.output
    seeded = "/home/homelab/data/stacks/media/sonarr/config.xml on the VM when missing"
    assert seeded in result.output  # what the apps get before their first start is said, never written here


def test_secrets_show_prints_a_stacks_secrets_and_list_never_does(tmp_path: Path) -> None:
    lab_path = write_lab(tmp_path / "lab.yml", one_vm(CORE))
    lab = parse_lab(lab_path.read_text())
    shown = run_cli("secrets", "show", "portainer", lab=lab_path)
    assert "PORTAINER_ADMIN_PASSWORD: not set yet (made by the first deploy)" in shown.output
    password = resolve(lab, stackfiles.wanted_secrets(lab))["portainer"]["PORTAINER_ADMIN_PASSWORD"].value
    shown = run_cli("secrets", "show", "portainer", lab=lab_path)
    assert shown.exit_code == 0 and f"PORTAINER_ADMIN_PASSWORD (user admin): {password}" in shown.output
    listed = run_cli("secrets", "list", lab=lab_path)
    assert "portainer  PORTAINER_ADMIN_PASSWORD  generated" in listed.output and password not in listed.output


def test_docker_comes_from_dockers_repository_after_cloud_init_is_done() -> None:
    role = catalogue()["traefik"].path.parent / "ansible" / "roles" / "docker"
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    assert defaults["homelab_docker_source"] == "docker"
    assert "docker-compose-plugin" in defaults["homelab_docker_packages"]["docker"]
    assert defaults["homelab_docker_releases"] == {"Debian": ["bookworm", "trixie"], "Ubuntu": ["noble"]}
    (block,) = yaml.safe_load((role / "tasks" / "main.yml").read_text())
    step = next(task for task in block["block"] if task["name"] == "Install Docker")
    assert step["ansible.builtin.include_tasks"] == "install.yml"
    install = yaml.safe_load((role / "tasks" / "install.yml").read_text())
    names = [task["name"] for task in install]
    assert names.index("Wait for cloud-init to finish") < names.index("Docker's packages")
    assert "cloud-init status --wait" in install[0]["ansible.builtin.shell"]
    included = next(t for t in install if t["name"] == "Docker's packages")
    assert included["ansible.builtin.include_tasks"] == "packages.yml"
    repo, packages = yaml.safe_load((role / "tasks" / "packages.yml").read_text())
    assert packages["name"] == "Install Docker and compose"
    source = next(task for task in repo["block"] if task["name"] == "Docker's repository")["ansible.builtin.copy"]
    assert defaults["homelab_docker_repository"] == "https://download.docker.com/linux/{distribution}"
    assert "URIs: {{ homelab_docker_repo_url }}" in source["content"]
    assert "Signed-By: /etc/apt/keyrings/docker.asc" in source["content"]
    lab = make_lab(vms=[{"name": "w", "ip": "10.10.0.11", "stacks": ["traefik"]}])
    from homelab.deploy.plan import prepare

    assert any("Docker's apt repository" in line for line in prepare(lab, hosts=[]).describe())


def test_a_lab_without_a_public_domain_gets_a_wildcard_certificate_from_its_own_ca() -> None:
    from cryptography import x509

    from homelab.deploy.localca import ca_cert_path, ca_dir, local_tls
    from homelab.deploy.secretvalues import stack_secret_values

    lab = make_lab(vms=[{"name": "w", "ip": "10.10.0.11", "stacks": ["traefik"]}])  # home.arpa
    preview = local_tls(lab, "home.arpa", keep=False)
    assert not ca_dir(lab).exists() and "first deploy" in preview.cert  # a preview makes no CA
    values = stack_secret_values(lab)["traefik"]
    ca = x509.load_pem_x509_certificate(ca_cert_path(lab).read_bytes())
    leaf = x509.load_pem_x509_certificate(values["LOCAL_TLS_CERT"].encode())
    leaf.verify_directly_issued_by(ca)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["*.home.arpa", "home.arpa"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (ca_dir(lab) / "homelab-ca.key").stat().st_mode & 0o777 == 0o600
    assert (ca_dir(lab) / "wildcard.key").stat().st_mode & 0o777 == 0o600
    from cryptography.hazmat.primitives import serialization

    loaded = serialization.load_pem_private_key(values["LOCAL_TLS_KEY"].encode(), None)
    assert loaded.public_key().public_numbers() == leaf.public_key().public_numbers()
    assert stack_secret_values(lab)["traefik"]["LOCAL_TLS_CERT"] == values["LOCAL_TLS_CERT"]  # kept, not remade
