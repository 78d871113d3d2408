"""The catalogue of service stacks: those shipped in stacks/ and a lab's own in ``<lab folder>/stacks/``,
and what each declares of itself in its stack.yml (stack format v2).

A user stack is a folder ``<lab folder>/stacks/<name>/`` with a stack.yml and a compose.yml, read and checked
exactly like a built-in one; one with the name of a built-in stack replaces it (its origin says so).
A stack.yml that cannot be read is refused with one line naming the file and the key.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from homelab.errors import InputError
from homelab.paths import data_dir

# libyaml's safe loader when PyYAML was built with it (the files are homelab's own): 10x faster to read
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
if TYPE_CHECKING:
    from homelab.lab.models import Lab

# A name in stacks.<name>.env that looks like a credential: never accepted in the lab file.
SECRET_LOOKING = re.compile(r"(PASSWORD|PASSWD|TOKEN|SECRET|PRIVATE_KEY|API_KEY|APIKEY|CREDENTIAL)")
CATEGORIES = (
    "Media",
    "Downloads",
    "Photos",
    "Documents",
    "Productivity",
    "Home",
    "Network",
    "Security",
    "Monitoring",
    "Development",
    "Management",
    "Remote access",
    "Infrastructure",
)
GENERATE_KINDS = ("password", "hex32", "hex16", "base64-32", "")
BUILT_IN, USER, OVERRIDES = "built-in", "user", "overrides built-in"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_VAR = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_SUB = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
# Docker API sections the traefik stack's socket proxy (tecnativa/docker-socket-proxy) can open, read-only;
# "all": the stack has the socket itself (Portainer).
_DOCKER_API = re.compile(r"^(all|containers|events|info|images|networks|volumes|version|ping|system|plugins)$")
_KEYS = {
    "description",
    "category",
    "requires",
    "version_var",
    "host_ids",
    "state",
    "ports",
    "ui",
    "secrets",
    "settings",
    "docker_api",
}


@dataclass(frozen=True)
class SecretSpec:
    """A setting of a stack that is a secret: its value never comes from (or goes into) the lab file.

    ``generate``: password (32 url-safe characters), hex32, hex16 (32 hex digits), base64-32 make one on the
    first deploy and keep it; empty: the user gives it.
    """

    name: str
    description: str = ""
    generate: str = ""


# What homelab can write into an app's state before its first start (stack.yml ui[].first_visit.seed.kind),
# and the secrets each kind takes (by role): see homelab/deploy/seeds.py.
SEED_KINDS: dict[str, tuple[str, ...]] = {
    "servarr": ("api_key",),
    "qbittorrent": ("password",),
    "bazarr": ("password", "api_key"),
}
_GUARD = re.compile(r"^/[A-Za-z0-9_./-]*$")


@dataclass(frozen=True)
class Seed:
    """A file homelab writes into an app's state before its first start, only when it is not there yet."""

    kind: str  # one of SEED_KINDS
    file: str  # under the stack's STATE_DIR
    secrets: Mapping[str, str] = field(default_factory=dict)  # role (api_key, password) -> secret name


@dataclass(frozen=True)
class FirstVisit:
    """What the first visit of a web UI would give away, and how homelab closes it (stack.yml ui[].first_visit).

    ``guard``: path prefixes (matched ignoring case; "/" is the whole UI) put behind the lab's login by a Traefik
    router of their own, for a setup that cannot be done in advance (Jellyfin's wizard). ``seed``: the app's
    settings written before its first start (an API key, a login), so there is no setup to claim.
    """

    guard: tuple[str, ...] = ()
    seed: Seed | None = None


@dataclass(frozen=True)
class Setting:
    """A non-secret setting (stacks.<name>.env key): its default, or ``required`` when it has none."""

    name: str
    default: str | None = None
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class WebUi:
    """A web UI a stack serves through Traefik, linked from Homepage."""

    name: str
    host_var: str
    subdomain: str
    icon: str = ""
    description: str = ""
    port: int | None = None  # the container port Traefik routes to
    widget: Mapping[str, Any] = field(default_factory=dict)  # Homepage widget settings (no secrets)
    first_visit: FirstVisit | None = None  # a setup the first visitor could claim, and how it is closed


@dataclass(frozen=True)
class StackInfo:
    """One stack: its folder and what stack.yml says of it."""

    name: str
    path: Path
    description: str
    requires: tuple[str, ...]
    secrets: tuple[SecretSpec, ...] = ()
    version_var: str | None = None  # the variable stacks.<name>.version sets
    category: str = ""
    state: tuple[str, ...] = ()  # subfolders of STATE_DIR the deploy makes, owned by the user
    ports: tuple[str, ...] = ()  # host ports it publishes (non-HTTP)
    uis: tuple[WebUi, ...] = ()
    settings: tuple[Setting, ...] = ()
    host_ids: bool = False  # .env gets PUID/PGID of the VM's user
    docker_api: tuple[str, ...] = ()  # sections of the Docker API it reads through the socket proxy
    origin: str = BUILT_IN  # built-in, user, or overrides built-in

    @property
    def required_settings(self) -> tuple[Setting, ...]:
        return tuple(s for s in self.settings if s.required)

    @cached_property
    def compose_texts(self) -> tuple[tuple[str, str], ...]:
        """(file name, text) of every compose file of the stack (compose*.yml), read once per StackInfo."""
        found = []
        for path in sorted(self.path.glob("compose*.yml")):
            try:
                found.append((path.name, path.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as exc:
                raise InputError(f"{path}: cannot read: {str(exc).splitlines()[0]}") from None
        return tuple(found)

    @cached_property
    def services(self) -> tuple[str, ...]:
        """The services of every compose file of the stack (for stacks.<name>.extend)."""
        names: dict[str, None] = {}
        for _, text in self.compose_texts:
            try:
                doc = yaml.load(text, Loader=SAFE_LOADER) or {}  # noqa: S506 (a safe loader)
            except yaml.YAMLError:
                continue
            names.update(dict.fromkeys(str(s) for s in (doc.get("services") or {}) if isinstance(doc, dict)))
        return tuple(names)


def is_stack_name(name: str) -> bool:
    """``name`` can name a stack (a DNS label: its folder, its state folder)."""
    return bool(_NAME.match(name))


def _fail(meta: Path, key: str, message: str) -> InputError:
    return InputError(f"{meta}: {key}: {message}")


def _strings(meta: Path, key: str, value: object, pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise _fail(meta, key, "must be a list of strings")
    items = tuple(str(v) for v in value)
    for item in items:
        if pattern is not None and not pattern.match(item):
            raise _fail(meta, key, f"{item!r} is not allowed here")
    return items


def _entries(meta: Path, key: str, value: object, required: tuple[str, ...]) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise _fail(meta, key, "must be a list of mappings")
    for i, entry in enumerate(value):
        for name in required:
            if not entry.get(name):
                raise _fail(meta, f"{key}[{i}].{name}", "missing")
    return value


def _first_visit(meta: Path, key: str, value: object, secret_names: set[str]) -> FirstVisit | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"guard", "seed"} or not value:
        raise _fail(meta, key, "a mapping with guard (paths) and/or seed ({kind, file, <role>: SECRET})")
    guard = _strings(meta, f"{key}.guard", value.get("guard"), _GUARD)
    seed = None
    raw = value.get("seed")
    if raw is not None:
        if not isinstance(raw, dict):
            raise _fail(meta, f"{key}.seed", "a mapping: kind, file and the secrets the kind takes")
        kind = str(raw.get("kind") or "")
        if kind not in SEED_KINDS:
            raise _fail(meta, f"{key}.seed.kind", f"{kind!r}: one of {', '.join(SEED_KINDS)}")
        file = str(raw.get("file") or "")
        if not _SUB.match(file) or ".." in file.split("/"):
            raise _fail(meta, f"{key}.seed.file", "a path under the stack's STATE_DIR (app/config.xml)")
        unknown = sorted(set(raw) - {"kind", "file", *SEED_KINDS[kind]})
        if unknown:
            raise _fail(meta, f"{key}.seed.{unknown[0]}", f"unknown; {kind} takes {', '.join(SEED_KINDS[kind])}")
        roles = {}
        for role in SEED_KINDS[kind]:
            name = str(raw.get(role) or "")
            if name not in secret_names:
                raise _fail(meta, f"{key}.seed.{role}", "must name a secret the stack declares (secrets:)")
            roles[role] = name
        seed = Seed(kind, file, roles)
    return FirstVisit(guard, seed)


def read_stack(folder: Path, origin: str = BUILT_IN) -> StackInfo:
    """The stack in ``folder`` (its stack.yml), checked; InputError naming the file and key otherwise."""
    meta = folder / "stack.yml"
    name = folder.name
    if not _NAME.match(name):
        raise InputError(f"{folder}: a stack's folder name must be a DNS label (a-z, 0-9, '-')")
    if not (folder / "compose.yml").is_file():
        raise InputError(f"{folder}: a stack needs a compose.yml beside its stack.yml")
    try:
        data = yaml.load(meta.read_text(encoding="utf-8"), Loader=SAFE_LOADER) or {}  # noqa: S506 (a safe loader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{meta}: cannot read: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InputError(f"{meta}: must be a mapping (description, category, ...)")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise _fail(meta, unknown[0], f"unknown key; known: {', '.join(sorted(_KEYS))}")
    category = str(data.get("category") or "")
    if category and category not in CATEGORIES:
        raise _fail(meta, "category", f"{category!r} is not one of: {', '.join(CATEGORIES)}")
    secrets = []
    for i, s in enumerate(_entries(meta, "secrets", data.get("secrets"), ("name",))):
        kind = str(s.get("generate") or "")
        if kind not in GENERATE_KINDS:
            raise _fail(meta, f"secrets[{i}].generate", f"{kind!r}: one of password, hex32, hex16, base64-32 or empty")
        if not _VAR.match(str(s["name"])):
            raise _fail(meta, f"secrets[{i}].name", "an environment variable name (A-Z, 0-9, _)")
        secrets.append(SecretSpec(str(s["name"]), str(s.get("description", "")), kind))
    settings = []
    for i, s in enumerate(_entries(meta, "settings", data.get("settings"), ("name",))):
        if not _VAR.match(str(s["name"])):
            raise _fail(meta, f"settings[{i}].name", "an environment variable name (A-Z, 0-9, _)")
        default = s.get("default")
        required = bool(s.get("required", False))
        if required and default is not None:
            raise _fail(meta, f"settings[{i}]", "a required setting has no default")
        default_text = None if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        settings.append(Setting(str(s["name"]), default_text, str(s.get("description", "")), required))
    uis = []
    for i, ui in enumerate(_entries(meta, "ui", data.get("ui"), ("name", "host_var", "subdomain"))):
        port = ui.get("port")
        if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
            raise _fail(meta, f"ui[{i}].port", "a port number (the container port Traefik routes to)")
        widget = ui.get("widget") or {}
        if not isinstance(widget, dict):
            raise _fail(meta, f"ui[{i}].widget", "a mapping ({type: ..., ...})")
        first_visit = _first_visit(meta, f"ui[{i}].first_visit", ui.get("first_visit"), {s.name for s in secrets})
        uis.append(
            WebUi(
                name=str(ui["name"]),
                host_var=str(ui["host_var"]),
                subdomain=str(ui["subdomain"]),
                icon=str(ui.get("icon", "")),
                description=str(ui.get("description", "")),
                port=port,
                widget=widget,
                first_visit=first_visit,
            )
        )
    return StackInfo(
        name=name,
        path=folder,
        description=str(data.get("description") or ""),
        requires=_strings(meta, "requires", data.get("requires"), _NAME),
        secrets=tuple(secrets),
        version_var=str(data["version_var"]) if data.get("version_var") else None,
        category=category,
        state=_strings(meta, "state", data.get("state"), _SUB),
        ports=_strings(meta, "ports", data.get("ports")),
        uis=tuple(uis),
        settings=tuple(settings),
        host_ids=bool(data.get("host_ids", False)),
        docker_api=_strings(meta, "docker_api", data.get("docker_api"), _DOCKER_API),
        origin=origin,
    )


def builtin_root() -> Path:
    """The packaged stacks folder."""
    return data_dir("stacks")


def user_root(lab_folder: Path | None) -> Path | None:
    """The lab's own stacks folder (``<lab folder>/stacks``), when there is one and it is not the packaged one."""
    if lab_folder is None:
        return None
    root = lab_folder / "stacks"
    if not root.is_dir():
        return None
    try:
        if root.resolve() == builtin_root().resolve():
            return None  # a lab file at the top of a source checkout: its stacks/ are the built-in ones
    except OSError:
        return None
    return root


class Catalogue(Mapping[str, StackInfo]):
    """The stacks by name. A built-in stack's stack.yml is read when it is first looked up (a lab names a few of
    the thirty-odd, and reading them all was a third of `homelab validate`); the lab's own stacks are read at
    once, so a broken one is reported wherever the catalogue is used, as before."""

    def __init__(self, builtin: Mapping[str, Path], own: Mapping[str, StackInfo]):
        self._folders = dict(builtin)
        self._read = dict(own)
        self._names = sorted({*builtin, *own})
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> StackInfo:
        info = self._read.get(name)
        if info is None:
            folder = self._folders[name]  # KeyError: no such stack
            with self._lock:
                info = self._read.get(name) or self._read.setdefault(name, read_stack(folder))
        return info

    def __contains__(self, name: object) -> bool:
        return name in self._read or name in self._folders

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@lru_cache(maxsize=16)
def catalogue(lab_folder: Path | None = None) -> Catalogue:
    """Every stack homelab can deploy, by name (in name order): the built-in ones, and with ``lab_folder`` the
    lab's own (``<lab_folder>/stacks/<name>/``), which replace a built-in one of the same name."""
    builtin = {meta.parent.name: meta.parent for meta in builtin_root().glob("*/stack.yml")}
    own: dict[str, StackInfo] = {}
    root = user_root(lab_folder)
    if root is not None:
        for meta in sorted(root.glob("*/stack.yml")):
            origin = OVERRIDES if meta.parent.name in builtin else USER
            own[meta.parent.name] = read_stack(meta.parent, origin)
    return Catalogue(builtin, own)


def lab_folder(lab: Lab | None) -> Path | None:
    """The folder of the lab's file (where its own stacks live), when the lab was read from a file."""
    return None if lab is None else lab.folder


def for_lab(lab: Lab | None) -> Catalogue:
    """The catalogue as the lab sees it (built-in stacks and its own)."""
    return catalogue(lab_folder(lab))


def is_secret_name(stack: str, key: str, known: Mapping[str, StackInfo] | None = None) -> bool:
    """``key`` is a secret of ``stack`` (declared in its stack.yml), or any name that looks like a credential."""
    info = (catalogue() if known is None else known).get(stack)
    declared = {s.name for s in info.secrets} if info else set()
    providers = {n for names in DNS_PROVIDER_SECRETS.values() for n in names}
    return key in declared or key in providers or bool(SECRET_LOOKING.search(key))


# The credentials Traefik's ACME client (lego) reads for each DNS provider homelab knows; each is a secret
# of the traefik stack, handed over as <NAME>_FILE (lego reads the value from that file).
DNS_PROVIDER_SECRETS: dict[str, tuple[str, ...]] = {
    "cloudflare": ("CF_DNS_API_TOKEN",),
    "digitalocean": ("DO_AUTH_TOKEN",),
    "duckdns": ("DUCKDNS_TOKEN",),
    "gandiv5": ("GANDIV5_PERSONAL_ACCESS_TOKEN",),
    "hetzner": ("HETZNER_API_KEY",),
    "ovh": ("OVH_APPLICATION_KEY", "OVH_APPLICATION_SECRET", "OVH_CONSUMER_KEY"),
    "porkbun": ("PORKBUN_API_KEY", "PORKBUN_SECRET_API_KEY"),
    "route53": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
}
