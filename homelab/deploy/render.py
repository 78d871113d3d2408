"""What each VM's stacks folder should hold, rendered from the lab file: pure, no I/O but the packaged stacks.

For every stack a VM lists, /home/<user>/stacks/<name>/ gets the stack's compose files as shipped and a
``.env`` that compose reads beside it: the image version (stacks.<name>.version), one ``<UI>_HOST``
per web UI (<subdomain>.<network.domain>, which the compose files turn into Traefik Host rules, on HTTPS),
the lab's TZ, and stacks.<name>.env last, so it can override anything. Homepage also gets
config/services.yaml, which links every stack's UI in the lab (https), grouped by VM; Traefik its static and
dynamic configuration (:mod:`homelab.deploy.stackfiles`). The lab model holds no secrets, so neither do
these: a stack's secrets are rendered only into its secrets/ folder (0600 files), from values passed in,
or masked when none are (a preview of files, `homelab stack render`).
Every stack folder also gets a ``.homelab-stack`` marker (lab and stack): homelab removes only folders
that carry one (see :mod:`homelab.deploy.removed`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath

import yaml

from homelab.deploy import stackfiles
from homelab.deploy.removed import MARKER, marker_text
from homelab.errors import InputError
from homelab.lab.models import Lab, Vm
from homelab.stacks import catalogue

# RFC 8375's name for home networks; used when the lab file has no network.domain.
DEFAULT_DOMAIN = "home.arpa"
FILE_MODE = 0o644
DIR_MODE = 0o755
_BARE_VALUE = re.compile(r"^[A-Za-z0-9_./:@%+,=-]*$")
HEADER = "Written by `homelab deploy` from the lab file; changes made here are overwritten."


@dataclass(frozen=True)
class WebUi:
    """A web UI a stack serves through Traefik (from its stack.yml)."""

    name: str
    host_var: str
    subdomain: str
    icon: str = ""
    description: str = ""


@dataclass(frozen=True)
class StackMeta:
    """What the deploy needs from a stack's stack.yml beyond the catalogue's description."""

    name: str
    path: Path
    requires: tuple[str, ...]
    version_var: str | None
    uis: tuple[WebUi, ...]


@dataclass(frozen=True)
class RenderedFile:
    """One file for a VM, ``path`` relative to the user's stacks folder (``traefik/.env``)."""

    path: str
    content: str
    mode: int = FILE_MODE
    secret: bool = False  # a secret: 0600, never in the inventory, the preview's diff or a log
    host_ids: bool = False  # @PUID@ and @PGID@ become the ids of the VM's user when written there


@dataclass(frozen=True)
class RenderedStack:
    """One stack's folder: the folders to make (relative, parents first) and the files in them."""

    name: str
    dirs: tuple[str, ...]
    files: tuple[RenderedFile, ...]
    private_dirs: tuple[str, ...] = ()  # folders only the owner may enter (0700): secrets/
    data_dirs: tuple[str, ...] = ()  # absolute folders outside the stacks folder, owned by the user (/data)


@dataclass(frozen=True)
class VmRender:
    """Everything one VM gets: its stacks folder and what goes in it."""

    vm: str
    user: str
    stacks: tuple[RenderedStack, ...]

    @property
    def private_dirs(self) -> tuple[str, ...]:
        return tuple(d for s in self.stacks for d in s.private_dirs)

    @property
    def data_dirs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d for s in self.stacks for d in s.data_dirs))

    @property
    def secret_files(self) -> tuple[RenderedFile, ...]:
        return tuple(f for f in self.files if f.secret)

    @property
    def plain_files(self) -> tuple[RenderedFile, ...]:
        return tuple(f for f in self.files if not f.secret)

    @property
    def root(self) -> str:
        """The stacks folder on the VM."""
        return f"/home/{self.user}/stacks"

    @property
    def dirs(self) -> tuple[str, ...]:
        return tuple(d for s in self.stacks for d in s.dirs)

    @property
    def files(self) -> tuple[RenderedFile, ...]:
        return tuple(f for s in self.stacks for f in s.files)


@dataclass(frozen=True)
class Link:
    """A stack's web UI in the lab: where it runs and its address."""

    vm: str
    stack: str
    name: str
    url: str
    icon: str = ""
    description: str = ""


@cache
def stack_meta(name: str) -> StackMeta:
    """A stack's deploy metadata (version variable, web UIs) from its stack.yml."""
    info = catalogue()[name]
    data = yaml.safe_load((info.path / "stack.yml").read_text(encoding="utf-8")) or {}
    uis = tuple(
        WebUi(
            name=str(ui["name"]),
            host_var=str(ui["host_var"]),
            subdomain=str(ui["subdomain"]),
            icon=str(ui.get("icon", "")),
            description=str(ui.get("description", "")),
        )
        for ui in data.get("ui", ())
    )
    version_var = data.get("version_var")
    return StackMeta(name, info.path, info.requires, str(version_var) if version_var else None, uis)


def domain(lab: Lab) -> str:
    """The domain stack UIs answer under."""
    return lab.network.domain or DEFAULT_DOMAIN


def ui_hosts(lab: Lab, name: str) -> list[tuple[WebUi, str]]:
    """Each web UI of a stack with its host name; stacks.<name>.subdomain renames the first."""
    settings = lab.stacks.get(name)
    found = []
    for index, ui in enumerate(stack_meta(name).uis):
        sub = settings.subdomain if index == 0 and settings and settings.subdomain else ui.subdomain
        found.append((ui, f"{sub}.{domain(lab)}"))
    return found


def links(lab: Lab) -> list[Link]:
    """Every stack UI in the lab, in lab order (VMs, then each VM's stacks)."""
    return [
        Link(vm.name, name, ui.name, f"https://{host}", ui.icon, ui.description)
        for vm in lab.vms
        for name in vm.stacks
        for ui, host in ui_hosts(lab, name)
    ]


def env_value(key: str, value: str, where: str) -> str:
    """``value`` as a .env value that compose (v1 and v2) reads back unchanged and never interpolates."""
    if _BARE_VALUE.match(value):
        return value
    if "'" in value or "\n" in value or "\r" in value:
        raise InputError(f"{where}.{key}: a value with a quote (') or a line break cannot go into a .env file")
    return f"'{value}'"


def render_env(lab: Lab, vm: Vm, name: str) -> str:
    """The stack's .env for ``vm``."""
    meta = stack_meta(name)
    settings = lab.stacks.get(name)
    values: dict[str, str] = {"COMPOSE_PROJECT_NAME": name, "TZ": lab.timezone}
    if meta.version_var and settings and settings.version:
        values[meta.version_var] = settings.version
    for ui, host in ui_hosts(lab, name):
        values[ui.host_var] = host
    if name == "media":
        values["COMPOSE_FILE"] = stackfiles.media_compose_files(lab, vm)
        values["DATA_ROOT"] = stackfiles.data_root(lab, vm)
        values["PUID"], values["PGID"] = "@PUID@", "@PGID@"  # the ids of the VM's user, put in on the VM
    if settings:
        values.update(settings.env)
    lines = [f"# {HEADER}", f"# lab {lab.name}, VM {vm.name}, stack {name}"]
    lines += [f"{key}={env_value(key, value, f'stacks.{name}.env')}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def render_homepage_services(lab: Lab) -> str:
    """Homepage's services.yaml: every stack UI in the lab, one group per VM."""
    groups: dict[str, list[dict[str, dict[str, str]]]] = {}
    for link in links(lab):
        entry = {"href": link.url, "description": link.description or link.stack}
        if link.icon:
            entry["icon"] = link.icon
        groups.setdefault(link.vm, []).append({link.name: entry})
    body = yaml.safe_dump([{vm: services} for vm, services in groups.items()], sort_keys=False, allow_unicode=True)
    return f"# {HEADER}\n# Every stack of lab {lab.name}, by VM.\n{body}"


# Folders a stack's containers write to, made owned by the user (else dockerd makes them root's)
CONFIG_DIRS = {
    "media": ("jellyfin", "sonarr", "radarr", "prowlarr", "bazarr", "jellyseerr", "qbittorrent"),
    "portainer": ("data",),
    "traefik": ("acme", "dynamic"),
    "homepage": ("config",),
}
Secrets = Mapping[str, Mapping[str, str]]


def render_stack(lab: Lab, vm: Vm, name: str, secrets: Secrets | None = None) -> RenderedStack:
    """One stack's folder for ``vm``; ``secrets`` (per stack, by name) None: secret files are masked."""
    meta = stack_meta(name)
    files = [
        RenderedFile(f"{name}/{path.name}", path.read_text(encoding="utf-8"))
        for path in sorted(meta.path.glob("compose*.yml"))
    ]
    files += [
        RenderedFile(f"{name}/.env", render_env(lab, vm, name), host_ids=name == "media"),
        RenderedFile(f"{name}/{MARKER}", marker_text(lab.name, name)),
    ]
    dirs = [name, *(f"{name}/{sub}" for sub in CONFIG_DIRS.get(name, ()))]
    if name == "homepage":
        files.append(RenderedFile(f"{name}/config/services.yaml", render_homepage_services(lab)))
        files.append(RenderedFile(f"{name}/config/docker.yaml", stackfiles.homepage_docker(lab)))
    if name == "traefik":
        files.append(RenderedFile(f"{name}/traefik.yml", stackfiles.traefik_static(lab, domain(lab))))
        files.append(RenderedFile(f"{name}/dynamic/tls.yml", stackfiles.traefik_dynamic(lab)))
        files.append(RenderedFile(f"{name}/traefik.env", stackfiles.traefik_env(lab)))
    values = None if secrets is None else secrets.get(name, {})
    hidden = stackfiles.secret_files(lab, name, values)
    for item in hidden:
        content = item.content if item.content is not None else stackfiles.MASKED.format(stack=name)
        files.append(RenderedFile(f"{name}/secrets/{item.name}", content, stackfiles.SECRET_MODE, secret=True))
    data = stackfiles.data_dirs(lab, vm) if name == "media" else ()
    private = (f"{name}/secrets",) if hidden else ()
    return RenderedStack(name, tuple(dirs), tuple(files), private, data)


def render_vm(lab: Lab, vm: Vm, secrets: Secrets | None = None) -> VmRender:
    """Everything ``vm`` gets, in the order its stacks are listed."""
    return VmRender(vm.name, lab.access.user, tuple(render_stack(lab, vm, name, secrets) for name in vm.stacks))


def render_lab(lab: Lab, secrets: Secrets | None = None) -> dict[str, VmRender]:
    """Every VM that lists stacks, by name, in lab order; ``secrets`` None: secret files masked."""
    return {vm.name: render_vm(lab, vm, secrets) for vm in lab.vms if vm.stacks}


def missing_requirements(lab: Lab, vm: Vm) -> list[tuple[str, str]]:
    """(stack, required stack) pairs for stacks whose requirement does not run on the same VM."""
    return [(name, req) for name in vm.stacks for req in stack_meta(name).requires if req not in vm.stacks]


def write_tree(render: VmRender, dest: Path) -> list[Path]:
    """Write a VM's rendered files under ``dest`` (as they will be under its stacks folder)."""
    written = []
    for folder in render.dirs:
        (dest / folder).mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    for folder in render.private_dirs:
        (dest / folder).mkdir(mode=0o700, parents=True, exist_ok=True)
    for file in render.files:
        path = dest / PurePosixPath(file.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(file.content, encoding="utf-8")
        path.chmod(file.mode)
        written.append(path)
    return written
