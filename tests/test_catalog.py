"""The catalog test: every stack homelab knows, rendered with its defaults on a VM of its own, meets the stack
format (notes: stack format v2). A new stack folder under stacks/ is checked by being there.

Per stack: the compose-spec JSON schema; `docker compose config` where compose v2 is installed; every image
pinned to a version tag (never latest; a major-only tag only for databases); every Traefik router on
websecure with TLS and a matching web UI entry in stack.yml (the Homepage link, same container port); no
secret with a literal default or value in compose; every bind mount from STATE_DIR (a folder listed in
state:), ./secrets, ${DATA_ROOT}, /dev, /etc/localtime, a file the stack ships or homelab generates, or a
read-only view of the host (/, /proc, /sys); the Docker socket only
in the traefik stack's socket proxy and in Portainer; restart: unless-stopped; a category from the list and
a description. The scaffold of `homelab stack new` passes the same checks.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from homelab import stacks
from homelab.deploy.render import render_lab, write_tree
from homelab.deploy.scaffold import new_stack
from homelab.errors import InputError
from homelab.lab.loader import parse_lab
from homelab.stacks import CATEGORIES, StackInfo, catalogue
from tests.harness.labs import lab_data

SCHEMA = json.loads((Path(__file__).parent / "data" / "compose-spec" / "compose_spec.json").read_text())
# images whose projects publish major-only tags as their stable line (databases and caches)
DATABASES = re.compile(r"(^|/)(postgres|postgis|pgvecto-rs|vectorchord|redis|valkey|mariadb|mysql|mongo|memcached)\b")
SOCKET_USERS = {("traefik", "socket-proxy"), ("portainer", "portainer")}
_DEFAULT = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def needed(known: Mapping[str, StackInfo], name: str) -> list[str]:
    """``name`` and what it requires, requirements first."""
    order: list[str] = []

    def visit(stack: str) -> None:
        if stack in order:
            return
        for req in known[stack].requires:
            visit(req)
        order.append(stack)

    visit(name)
    return order


def rendered(name: str, folder: Path | None = None) -> tuple[StackInfo, dict[str, str], Any]:
    """The stack's info, its rendered files (path relative to its folder -> text) and the lab."""
    known = catalogue(folder)
    info = known[name]
    stacks: dict[str, Any] = {}
    required = {s.name: "example" for s in info.required_settings}
    if required:
        stacks[name] = {"env": required}
    data = lab_data(vms=[{"name": "vm", "ip": "10.10.0.10", "stacks": needed(known, name)}], stacks=stacks)
    lab = parse_lab(yaml.safe_dump(data, sort_keys=False), "lab.yml", folder)
    render = render_lab(lab)["vm"]
    files = {f.path.split("/", 1)[1]: f.content for f in render.files if f.path.startswith(f"{name}/")}
    return info, files, lab


def env_of(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def chosen_composes(files: Mapping[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The compose files compose reads for this render (COMPOSE_FILE, else compose.yml), parsed."""
    listed = env_of(files[".env"]).get("COMPOSE_FILE", "compose.yml").split(":")
    for path in listed:
        yield path, yaml.safe_load(files[path]) or {}


def all_composes(files: Mapping[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, text in files.items():
        if path.startswith("compose") and path.endswith(".yml"):
            yield path, yaml.safe_load(text) or {}


def labels_of(service: Mapping[str, Any]) -> dict[str, str]:
    labels = service.get("labels") or {}
    if isinstance(labels, list):
        labels = dict(str(item).split("=", 1) for item in labels)
    return {str(k): str(v) for k, v in labels.items()}


def default_of(text: str) -> str:
    """``text`` with every ${VAR:-default} replaced by its default (what compose uses without a .env)."""
    return _DEFAULT.sub(lambda m: m.group(2) or "", text)


def problems(name: str, folder: Path | None = None) -> list[str]:
    """Every way stack ``name`` breaks the stack format (empty: it meets it)."""
    info, files, _ = rendered(name, folder)
    found: list[str] = []
    if info.category not in CATEGORIES:
        found.append(f"category {info.category!r} is not one of {CATEGORIES}")
    if len(info.description.strip()) < 10:
        found.append("stack.yml has no description (one line: what it is and what it is for)")
    secrets = {s.name for s in info.secrets}
    generated = {path for path in files if not path.startswith(("compose", ".env", "secrets/", ".homelab"))}
    uis = {ui.host_var: ui for ui in info.uis}
    linked: set[str] = set()
    for path, doc in all_composes(files):
        errors = [e.message for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(doc)]
        found += [f"{path}: compose-spec: {error}" for error in errors]
        for service, body in (doc.get("services") or {}).items():
            where = f"{path}: services.{service}"
            body = body or {}
            image = body.get("image")
            if image is not None:
                found += image_problems(where, str(image))
                if body.get("restart") != "unless-stopped":
                    found.append(f"{where}: restart: unless-stopped is missing")
            for key, value in environment(body).items():
                if key in secrets and not re.match(r"^(file:)?/secrets/[A-Za-z0-9_.-]+$", value):
                    found.append(f"{where}: secret {key} has a value in compose (use {key}_FILE or secrets.env)")
                for var in re.findall(r"\$\{([A-Z0-9_]+)", str(value)):
                    if var in secrets:
                        found.append(f"{where}: secret {var} comes from .env (use {var}_FILE or secrets.env)")
            for volume in body.get("volumes") or ():
                problem = volume_problem(name, service, info, volume, generated)
                if problem:
                    found.append(f"{where}: {problem}")
            found += router_problems(where, labels_of(body), uis, linked)
    for text in files.values():
        for var, default in re.findall(r"\$\{([A-Z0-9_]+):?-([^}]*)\}", text):
            if var in secrets:
                found.append(f"secret {var} has a default in compose ({default!r})")
    if "secrets/secrets.env" in " ".join(files.values()) and not secrets:
        found.append("env_file secrets/secrets.env, but stack.yml declares no secrets")
    for ui in info.uis:
        if ui.host_var not in linked:
            found.append(f"ui {ui.name}: no Traefik router uses ${{{ui.host_var}}}")
    return found


def environment(body: Mapping[str, Any]) -> dict[str, str]:
    env = body.get("environment") or {}
    if isinstance(env, list):
        env = dict(str(item).split("=", 1) if "=" in str(item) else (str(item), "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def image_problems(where: str, image: str) -> list[str]:
    resolved = default_of(image)
    repo, sep, tag = resolved.rpartition(":")
    if not sep or "/" in tag:
        return [f"{where}: image {image!r} has no tag (pin a version: repo:${{VERSION_VAR:-1.2.3}})"]
    if tag == "latest" or not re.match(r"^v?\d", tag):
        return [f"{where}: image {image!r}: {tag!r} is not a version tag"]
    if not re.match(r"^v?\d+\.\d+", tag) and not DATABASES.search(repo):
        return [f"{where}: image {image!r}: {tag!r} is a major-only tag (pin the full version)"]
    return []


def split_volume(text: str) -> tuple[str, str]:
    """("source", "target[:mode]") of a short-syntax volume; a ':' inside ${...} is not a separator."""
    depth = 0
    for i, char in enumerate(text):
        if text.startswith("${", i):
            depth += 1
        elif char == "}" and depth:
            depth -= 1
        elif char == ":" and not depth:
            return text[:i], text[i + 1 :]
    return text, ""


def volume_problem(stack: str, service: str, info: StackInfo, volume: Any, generated: set[str]) -> str | None:
    if isinstance(volume, dict):
        if volume.get("type") != "bind":
            return None
        source = str(volume.get("source", ""))
        rest = "x:ro" if volume.get("read_only") else "x"
    else:
        source, rest = split_volume(str(volume))
        if not rest:
            return None  # an anonymous volume
    if not source.startswith((".", "/", "$", "~")):
        return None  # a named volume
    if source == "/var/run/docker.sock":
        ok = (stack, service) in SOCKET_USERS
        return None if ok else "mounts the Docker socket (use DOCKER_HOST: tcp://socket-proxy:2375, requires traefik)"
    m = re.match(r"^\$\{STATE_DIR(?::-[^}]*)?\}/([^/]+)", source)
    if m:
        return None if m.group(1) in info.state else f"{source}: {m.group(1)!r} is not listed in state:"
    if source.startswith("${DATA_ROOT") or source.startswith("/dev/") or source == "/etc/localtime":
        return None
    if source in ("/", "/proc", "/sys") and "ro" in rest.split(":")[-1].split(","):
        return None  # a read-only view of the host (node exporter)
    if source in ("./secrets",):
        return None
    rel = source.removeprefix("./")
    if rel in generated or any(path.startswith(f"{rel.rstrip('/')}/") for path in generated):
        return None  # a file homelab writes into the stack folder (read-only configuration)
    return (
        f"bind mount {source!r} is not under ${{STATE_DIR}} (state:), ./secrets, ${{DATA_ROOT}}, /dev or /etc/localtime"
    )


def router_problems(where: str, labels: Mapping[str, str], uis: Mapping[str, Any], linked: set[str]) -> list[str]:
    found = []
    for key, rule in labels.items():
        m = re.match(r"^traefik\.http\.routers\.([A-Za-z0-9_-]+)\.rule$", key)
        if not m:
            continue
        router = m.group(1)
        prefix = f"traefik.http.routers.{router}"
        if labels.get(f"{prefix}.entrypoints") != "websecure":
            found.append(f"{where}: router {router} is not on entrypoint websecure (HTTPS)")
        if labels.get(f"{prefix}.tls") != "true":
            found.append(f'{where}: router {router} has no tls: "true"')
        hosts = re.findall(r"\$\{([A-Z0-9_]+)", rule)
        ui = next((uis[h] for h in hosts if h in uis), None)
        if ui is None:
            found.append(f"{where}: router {router} has no ui entry in stack.yml (its Host variable: {hosts})")
            continue
        linked.add(ui.host_var)
        service = labels.get(f"{prefix}.service", router)
        port = labels.get(f"traefik.http.services.{service}.loadbalancer.server.port")
        if port is not None and ui.port is not None and str(ui.port) != port:
            found.append(f"{where}: ui {ui.name} says port {ui.port}, the router's service port is {port}")
        if port is not None and ui.port is None:
            found.append(f"{where}: ui {ui.name} has no port (the router's service port is {port})")
    return found


ALL = sorted(catalogue())


@pytest.mark.parametrize("name", ALL)
def test_every_stack_meets_the_stack_format(name: str) -> None:
    assert problems(name) == []


def compose_v2() -> str | None:
    """Why `docker compose config` cannot run here, or None."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    done = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, check=False)
    return None if done.returncode == 0 else "the compose v2 plugin is not installed (`docker compose` is unknown)"


@pytest.mark.parametrize("name", ALL)
def test_every_stack_passes_docker_compose_config(name: str, tmp_path: Path) -> None:
    why = compose_v2()
    if why:
        pytest.skip(why)
    _, _, lab = rendered(name)
    write_tree(render_lab(lab)["vm"], tmp_path)
    done = subprocess.run(
        ["docker", "compose", "config", "--quiet"], cwd=tmp_path / name, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_the_catalog_test_catches_what_it_is_for(tmp_path: Path) -> None:
    """A user stack that breaks every rule is caught by each check (so a check that cannot fail is seen)."""
    folder = new_stack(tmp_path, "broken")
    (folder / "stack.yml").write_text(
        "description: x\nrequires: [traefik]\nstate: [data]\n"
        "ui: [{name: Broken, host_var: BROKEN_HOST, subdomain: broken, port: 81}]\n"
        "secrets: [{name: ADMIN_PASSWORD, generate: password}]\n"
    )
    (folder / "compose.yml").write_text(
        """\
services:
  broken:
    image: "example/broken:${BROKEN_VERSION:-latest}"
    environment:
      ADMIN_PASSWORD: "${ADMIN_PASSWORD:-changeme}"
    volumes:
      - /var/run/docker.sock:/var/run/docker.sock
      - ./config:/config
      - "${STATE_DIR:-./state}/cache:/cache"
    labels:
      traefik.http.routers.broken.rule: "Host(`${BROKEN_HOST:-broken.home.arpa}`)"
      traefik.http.routers.broken.entrypoints: web
      traefik.http.services.broken.loadbalancer.server.port: "80"
  db:
    image: "example/db:16"
    restart: unless-stopped
"""
    )
    catalogue.cache_clear()
    found = "\n".join(problems("broken", tmp_path))
    (folder / "stack.yml").write_text("description: Broken but for its category\ncategory: Misc\n")
    catalogue.cache_clear()
    with pytest.raises(InputError, match=r"stack.yml: category: 'Misc' is not one of: Media, "):
        catalogue(tmp_path)
    for expected in (
        "category ''",
        "no description",
        "'latest' is not a version tag",
        "restart: unless-stopped is missing",
        "secret ADMIN_PASSWORD has a value in compose",
        "secret ADMIN_PASSWORD has a default in compose",
        "mounts the Docker socket",
        "bind mount './config'",
        "'cache' is not listed in state:",
        "not on entrypoint websecure",
        'has no tls: "true"',
        "says port 81, the router's service port is 80",
        "'16' is a major-only tag",
    ):
        assert expected in found, (expected, found)


def test_the_scaffold_of_stack_new_passes(tmp_path: Path) -> None:
    new_stack(tmp_path, "my-app")
    assert catalogue(tmp_path)["my-app"].origin == "user"
    assert problems("my-app", tmp_path) == []


def test_a_built_in_stack_is_read_when_first_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing the catalogue or asking whether a stack exists reads no stack.yml; looking one up reads it once."""
    read: list[str] = []
    real = stacks.read_stack

    def counted(folder: Path, origin: str = stacks.BUILT_IN) -> StackInfo:
        read.append(folder.name)
        return real(folder, origin)

    monkeypatch.setattr(stacks, "read_stack", counted)
    catalogue.cache_clear()
    try:
        known = catalogue()
        assert len(known) == len(ALL) and list(known) == ALL and "traefik" in known and "nope" not in known
        assert read == []
        assert known["traefik"] is known["traefik"] and known.get("traefik") is known["traefik"]
        assert read == ["traefik"] and known.get("nope") is None
        with pytest.raises(KeyError):
            known["nope"]
    finally:
        catalogue.cache_clear()
