"""What each VM's stacks folder should hold, rendered from the lab file: pure, no I/O but the packaged stacks.

For every stack a VM lists, /home/<user>/stacks/<name>/ gets the stack's compose files as shipped and a
``.env`` that compose reads beside it: the image version (stacks.<name>.version), one ``<UI>_HOST``
per web UI (<subdomain>.<network.domain>, which the compose files turn into Traefik Host rules, on HTTPS),
the lab's TZ, STATE_DIR (``/home/<user>/data/stacks/<name>``: the stack's state, on the data disk when the
VM has one, never deleted with the stack), PUID/PGID for stacks that ask (host_ids), COMPOSE_FILE when the
stack has variants or homelab adds an overlay (:mod:`homelab.deploy.overlay`), and stacks.<name>.env last,
so it can override anything. Homepage also gets
config/services.yaml, which links every stack's UI in the lab (https), grouped by VM; Traefik its static and
dynamic configuration (:mod:`homelab.deploy.stackfiles`). The lab model holds no secrets, so neither do
these: a stack's secrets are rendered only into its secrets/ folder (0600 files), from values passed in,
or masked when none are (a preview of files, `homelab stack render`).
Every stack folder also gets a ``.homelab-stack`` marker (lab and stack): homelab removes only folders
that carry one (see :mod:`homelab.deploy.removed`).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

from homelab.deploy import firstvisit, overlay, stackfiles
from homelab.deploy.removed import MARKER, marker_text
from homelab.deploy.seeds import seed_content
from homelab.errors import InputError, SecretError
from homelab.lab.models import Lab, Vm
from homelab.stacks import StackInfo, WebUi, for_lab

# RFC 8375's name for home networks; used when the lab file has no network.domain.
DEFAULT_DOMAIN = "home.arpa"
FILE_MODE = 0o644
DIR_MODE = 0o755
_BARE_VALUE = re.compile(r"^[A-Za-z0-9_./:@%+,=-]*$")
HEADER = "Written by `homelab deploy` from the lab file; changes made here are overwritten."


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
    state_dirs: tuple[str, ...] = ()  # STATE_DIR and its subfolders (absolute), made when missing, owned by the user
    state_moves: tuple[tuple[str, str], ...] = ()  # (old folder in the stack folder, new one under STATE_DIR)
    seeds: tuple[RenderedFile, ...] = ()  # absolute files in STATE_DIR written only when missing (secret, 0600)


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
    def state_dirs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d for s in self.stacks for d in s.state_dirs))

    @property
    def state_moves(self) -> tuple[dict[str, str], ...]:
        return tuple({"stack": s.name, "src": a, "dest": b} for s in self.stacks for a, b in s.state_moves)

    @property
    def seeds(self) -> tuple[RenderedFile, ...]:
        return tuple(f for s in self.stacks for f in s.seeds)

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
    widget: Mapping[str, object] | None = None


def stack_meta(lab: Lab, name: str) -> StackInfo:
    """A stack as the lab sees it (built-in or the lab's own), from its stack.yml."""
    return for_lab(lab)[name]


def state_dir(lab: Lab, name: str) -> str:
    """STATE_DIR of stack ``name`` on a VM: under /home/<user>/data (the data disk's mount point, if any)."""
    return f"/home/{lab.access.user}/data/stacks/{name}"


def domain(lab: Lab) -> str:
    """The domain stack UIs answer under."""
    return lab.network.domain or DEFAULT_DOMAIN


def ui_hosts(lab: Lab, name: str) -> list[tuple[WebUi, str]]:
    """Each web UI of a stack with its host name; stacks.<name>.subdomain renames the first."""
    settings = lab.stacks.get(name)
    found = []
    for index, ui in enumerate(stack_meta(lab, name).uis):
        sub = settings.subdomain if index == 0 and settings and settings.subdomain else ui.subdomain
        found.append((ui, f"{sub}.{domain(lab)}"))
    return found


def links(lab: Lab) -> list[Link]:
    """Every stack UI in the lab, in lab order (VMs, then each VM's stacks)."""
    return [
        Link(vm.name, name, ui.name, f"https://{host}", ui.icon, ui.description, ui.widget or None)
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


def compose_files(lab: Lab, vm: Vm, name: str) -> list[str]:
    """The stack's compose files compose reads, in order (its variants chosen for the VM; not the overlay)."""
    if name == "media" and stack_meta(lab, name).origin != "user":
        return stackfiles.media_compose_files(lab, vm).split(":")
    return ["compose.yml"]


# what the socket proxy opens whatever runs beside it (Traefik's and Homepage's needs)
SOCKET_PROXY_ALWAYS = frozenset({"containers", "events", "version", "ping", "all"})


def socket_proxy_sections(lab: Lab, vm: Vm) -> dict[str, str]:
    """SOCKET_PROXY_<SECTION>=1 for the read-only Docker API sections the VM's other stacks need (stack.yml
    docker_api), beyond what the proxy always opens; compose reads them with a default of 0 (closed)."""
    wanted = {s for name in vm.stacks for s in stack_meta(lab, name).docker_api} - SOCKET_PROXY_ALWAYS
    return {f"SOCKET_PROXY_{section.upper()}": "1" for section in sorted(wanted)}


def data_mounts(lab: Lab, name: str) -> tuple[str, ...]:
    """The folders below DATA_ROOT (the media /data tree) the stack's compose files mount."""
    return stackfiles.data_root_mounts(text for _, text in stack_meta(lab, name).compose_texts)


def render_env(lab: Lab, vm: Vm, name: str, with_overlay: bool = False) -> str:
    """The stack's .env for ``vm``; ``with_overlay``: COMPOSE_FILE lists compose.homelab.yml last."""
    meta = stack_meta(lab, name)
    settings = lab.stacks.get(name)
    values: dict[str, str] = {"COMPOSE_PROJECT_NAME": name, "TZ": lab.timezone, "STATE_DIR": state_dir(lab, name)}
    if meta.version_var and settings and settings.version:
        values[meta.version_var] = settings.version
    for ui, host in ui_hosts(lab, name):
        values[ui.host_var] = host
    files = compose_files(lab, vm, name)
    if with_overlay or files != ["compose.yml"]:
        values["COMPOSE_FILE"] = ":".join(files + ([overlay.OVERLAY] if with_overlay else []))
    if (name == "media" and meta.origin != "user") or data_mounts(lab, name):
        # the one /data tree: the media stack's, and the music, books, audiobooks other stacks read from it
        values["DATA_ROOT"] = stackfiles.data_root(lab, vm)
    if name == "traefik" and meta.origin != "user":
        values.update(socket_proxy_sections(lab, vm))
    if meta.host_ids:
        values["PUID"], values["PGID"] = "@PUID@", "@PGID@"  # the ids of the VM's user, put in on the VM
        if vm.gpu:
            values["RENDER_GID"] = "@RENDER_GID@"  # the VM's render group (owns /dev/dri/renderD*), put in there
    if settings:
        values.update(settings.env)
    lines = [f"# {HEADER}", f"# lab {lab.name}, VM {vm.name}, stack {name}"]
    lines += [f"{key}={env_value(key, value, f'stacks.{name}.env')}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def render_homepage_services(lab: Lab) -> str:
    """Homepage's services.yaml: every stack UI in the lab, one group per VM."""
    groups: dict[str, list[dict[str, dict[str, object]]]] = {}
    for link in links(lab):
        entry: dict[str, object] = {"href": link.url, "description": link.description or link.stack}
        if link.icon:
            entry["icon"] = link.icon
        if link.widget:
            entry["widget"] = {"url": link.url, **link.widget}
        groups.setdefault(link.vm, []).append({link.name: entry})
    body = yaml.safe_dump([{vm: services} for vm, services in groups.items()], sort_keys=False, allow_unicode=True)
    return f"# {HEADER}\n# Every stack of lab {lab.name}, by VM.\n{body}"


# Folders of generated files inside a stack folder (its state is under STATE_DIR)
GENERATED_DIRS = {"traefik": ("dynamic",), "homepage": ("config",)}
Secrets = Mapping[str, Mapping[str, str]]


# Files a stack folder ships that are not copied to the VM
NOT_SHIPPED = ("stack.yml", overlay.OVERLAY)


def shipped_files(info: StackInfo) -> list[tuple[str, str]]:
    """(path relative to the stack folder, text) of every file the stack ships to the VM: its compose files and
    any configuration beside them (prometheus.yml, grafana/provisioning/...), not stack.yml, hidden files or
    secrets/."""
    found = []
    compose = dict(info.compose_texts)  # read once per stack (the .env and the /data tree read them too)
    for path in sorted(info.path.rglob("*")):
        rel = path.relative_to(info.path).as_posix()
        if not path.is_file() or rel in NOT_SHIPPED or rel.startswith(("secrets/", "state/")):
            continue
        if any(part.startswith(".") for part in PurePosixPath(rel).parts):
            continue
        if rel in compose:
            found.append((rel, compose[rel]))
            continue
        try:
            found.append((rel, path.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            raise InputError(f"{path}: a stack ships text files only (configuration, not binaries)") from None
    return found


Generator = Callable[[Lab, Vm, "Mapping[str, str] | None"], "list[tuple[str, str, bool]]"]


def stack_generator(name: str) -> Generator | None:
    """The ``files(lab, vm, values)`` of ``homelab.deploy.stack_<name>`` when a built-in stack has such a module:
    files it generates from the lab (path in the stack folder, content, is a secret; values None: masked)."""
    module_name = f"homelab.deploy.stack_{name.replace('-', '_')}"
    if importlib.util.find_spec(module_name) is None:
        return None
    files: Generator | None = getattr(importlib.import_module(module_name), "files", None)
    return files


def render_stack(lab: Lab, vm: Vm, name: str, secrets: Secrets | None = None) -> RenderedStack:
    """One stack's folder for ``vm``; ``secrets`` (per stack, by name) None: secret files are masked."""
    meta = stack_meta(lab, name)
    files = [RenderedFile(f"{name}/{rel}", text) for rel, text in shipped_files(meta)]
    chosen = {f"{name}/{file}" for file in compose_files(lab, vm, name)}
    extra = overlay.overlay(lab, name, [f.content for f in files if f.path in chosen])
    if extra is not None:
        files.append(RenderedFile(f"{name}/{overlay.OVERLAY}", extra))
    uses_env = overlay.uses_secrets_env(f.content for f in files)
    files += [
        RenderedFile(f"{name}/.env", render_env(lab, vm, name, extra is not None), host_ids=meta.host_ids),
        RenderedFile(f"{name}/{MARKER}", marker_text(lab.name, name)),
    ]
    builtin = meta.origin != "user"
    dirs = [name, *(f"{name}/{sub}" for sub in (GENERATED_DIRS.get(name, ()) if builtin else ()))]
    if name == "homepage" and builtin:
        files.append(RenderedFile(f"{name}/config/services.yaml", render_homepage_services(lab)))
        files.append(RenderedFile(f"{name}/config/docker.yaml", stackfiles.homepage_docker(lab)))
    if name == "traefik" and builtin:
        files.append(RenderedFile(f"{name}/traefik.yml", stackfiles.traefik_static(lab, domain(lab))))
        files.append(RenderedFile(f"{name}/dynamic/tls.yml", stackfiles.traefik_dynamic(lab)))
        files.append(RenderedFile(f"{name}/traefik.env", stackfiles.traefik_env(lab)))
    values = None if secrets is None else secrets.get(name, {})
    generated = stack_generator(name) if builtin else None
    for rel, content, secret in generated(lab, vm, values) if generated else ():
        mode = stackfiles.SECRET_MODE if secret else FILE_MODE
        files.append(RenderedFile(f"{name}/{rel}", content, mode, secret=secret))
    hidden = stackfiles.secret_files(lab, name, values)
    for item in hidden:
        content = item.content if item.content is not None else stackfiles.MASKED.format(stack=name)
        files.append(RenderedFile(f"{name}/secrets/{item.name}", content, stackfiles.SECRET_MODE, secret=True))
    if uses_env:
        content = overlay.secrets_env(meta, values, env_value) or stackfiles.MASKED.format(stack=name)
        path = f"{name}/secrets/{overlay.SECRETS_ENV}"
        files.append(RenderedFile(path, content, stackfiles.SECRET_MODE, secret=True))
    if name == "media" and builtin:
        data = stackfiles.data_dirs(lab, vm)
    elif mounts := data_mounts(lab, name):
        data = stackfiles.shared_data_dirs(lab, vm, mounts)
    else:
        data = ()
    private = (f"{name}/secrets",) if hidden or uses_env or any(f.secret for f in files) else ()
    for file in files:  # the folders of shipped and generated files (grafana/provisioning/...), parents first
        parts = PurePosixPath(file.path).parts[:-1]
        for depth in range(2, len(parts) + 1):
            folder = "/".join(parts[:depth])
            if folder not in dirs and folder not in private:
                dirs.append(folder)
    root = state_dir(lab, name)
    parents = (root.rsplit("/", 2)[0], root.rsplit("/", 1)[0], root)  # .../data, .../data/stacks, STATE_DIR
    state = (*parents, *(f"{root}/{sub}" for sub in meta.state))
    moves = tuple((f"{name}/{sub}", f"{root}/{sub}") for sub in meta.state)
    return RenderedStack(name, tuple(dirs), tuple(files), private, data, state, moves, seeds(lab, meta, values))


def seeds(lab: Lab, meta: StackInfo, values: Mapping[str, str] | None) -> tuple[RenderedFile, ...]:
    """The files the stack's apps get before their first start (stack.yml ui[].first_visit.seed), in STATE_DIR;
    ``values`` None: masked."""
    found = []
    guarded = overlay.guard_middleware(lab, meta.name) is not None
    for ui, seed in firstvisit.seeded_uis(meta):
        whole = ui.first_visit is not None and "/" in ui.first_visit.guard
        if values is None:
            content = stackfiles.MASKED.format(stack=meta.name)
        else:
            missing = [n for n in seed.secrets.values() if not values.get(n)]
            if missing:
                raise SecretError(f"stack {meta.name}: the secret {missing[0]} has no value")
            content = seed_content(seed, values, guarded and whole)
        path = f"{state_dir(lab, meta.name)}/{seed.file}"
        found.append(RenderedFile(path, content, stackfiles.SECRET_MODE, secret=True))
    return tuple(found)


def render_vm(lab: Lab, vm: Vm, secrets: Secrets | None = None) -> VmRender:
    """Everything ``vm`` gets, in the order its stacks are listed."""
    return VmRender(vm.name, lab.access.user, tuple(render_stack(lab, vm, name, secrets) for name in vm.stacks))


def render_lab(lab: Lab, secrets: Secrets | None = None) -> dict[str, VmRender]:
    """Every VM that lists stacks, by name, in lab order; ``secrets`` None: secret files masked."""
    return {vm.name: render_vm(lab, vm, secrets) for vm in lab.vms if vm.stacks}


def missing_requirements(lab: Lab, vm: Vm) -> list[tuple[str, str]]:
    """(stack, required stack) pairs for stacks whose requirement does not run on the same VM."""
    return [(name, req) for name in vm.stacks for req in stack_meta(lab, name).requires if req not in vm.stacks]


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
