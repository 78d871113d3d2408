"""`homelab init`: questions as data, one prompt call site, answers from a terminal, a file or defaults.

The wizard reads the cluster (nodes, storages, bridges) to offer real choices, then writes a lab file that
is validated before it is written. The API token's secret is asked for but never written to the lab file.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from homelab.errors import InputError

Choices = Callable[["Context"], list[str]]


@dataclass(frozen=True)
class Question:
    """One question. ``key`` names it in answers files; ``default`` may depend on earlier answers."""

    key: str
    message: str
    kind: str = "text"  # text, select, checkbox, password
    default: Callable[[Context], Any] | Any = None
    choices: Choices | None = None
    required: bool = True
    when: Callable[[Context], bool] = lambda ctx: True


@dataclass
class Context:
    """Answers so far, and what the cluster offers."""

    answers: dict[str, Any] = field(default_factory=dict)
    live: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.answers.get(key)


def _bridge_net(ctx: Context) -> ipaddress.IPv4Interface | None:
    for bridge in ctx.live.get("bridges", []):
        if bridge["iface"] == ctx["proxmox.bridge"] and bridge.get("cidr"):
            try:
                return ipaddress.IPv4Interface(bridge["cidr"])
            except ValueError:
                return None
    return None


def _default_subnet(ctx: Context) -> str:
    net = _bridge_net(ctx)
    return str(net.network) if net else "192.168.1.0/24"


def _default_gateway(ctx: Context) -> str:
    for bridge in ctx.live.get("bridges", []):
        if bridge["iface"] == ctx["proxmox.bridge"] and bridge.get("gateway"):
            return str(bridge["gateway"])
    return str(next(ipaddress.IPv4Network(ctx["network.subnet"]).hosts()))


def _default_ip(ctx: Context) -> str:
    hosts = list(ipaddress.IPv4Network(ctx["network.subnet"]).hosts())
    return str(hosts[19]) if len(hosts) > 20 else "dhcp"


def _default_build_ip(ctx: Context) -> str:
    from homelab.lab.checks import suggest_build_ip

    names = [n for n in str(ctx["vms"]).split(",") if n.strip()]
    first = str(ctx["vm.ip"])
    taken = [] if first == "dhcp" else [str(ipaddress.IPv4Address(first) + i) for i in range(len(names))]
    return suggest_build_ip(ctx["network.subnet"], ctx["network.gateway"], taken)


def _default_ssh_key(ctx: Context) -> str:
    for name in ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"):
        path = Path.home() / ".ssh" / name
        if path.is_file():
            return path.read_text(encoding="utf-8").strip()
    return ""


# What the first VM runs unless the user picks otherwise: the proxy, the dashboard, Portainer and the media
# stack. The rest of the catalog is offered after them, unticked (a VM does not get every stack by default).
STARTER_STACKS = ("homepage", "media", "portainer", "traefik")


def _stacks(ctx: Context) -> list[str]:
    """Every stack of the catalog, the starter ones first."""
    from homelab.stacks import catalogue

    known = sorted(catalogue())
    return [s for s in STARTER_STACKS if s in known] + [s for s in known if s not in STARTER_STACKS]


def _starter_stacks(ctx: Context) -> list[str]:
    return [s for s in _stacks(ctx) if s in STARTER_STACKS]


CONNECTION = [
    Question("proxmox.url", "Proxmox API address", default="https://pve.home.arpa:8006"),
    Question("proxmox.token_id", "API token id (user@realm!name)", default="homelab@pve!homelab"),
    Question(
        "proxmox.ca_bundle",
        "CA bundle that signed the Proxmox certificate (empty: system CAs)",
        default="",
        required=False,
    ),
]
LAB = [
    Question("name", "Lab name (VMs get the tag homelab-<name>)", default="homelab"),
    Question("proxmox.node", "Node for the VMs", kind="select", choices=lambda ctx: ctx.live["nodes"]),
    Question("proxmox.storage", "Storage for VM disks", kind="select", choices=lambda ctx: ctx.live["storages"]),
    Question(
        "proxmox.bridge", "Network bridge", kind="select", choices=lambda ctx: [b["iface"] for b in ctx.live["bridges"]]
    ),
    Question("network.subnet", "VM subnet (CIDR)", default=_default_subnet),
    Question("network.gateway", "Gateway", default=_default_gateway),
    Question("network.dns", "DNS servers (comma separated)", default=lambda ctx: ctx["network.gateway"]),
    Question("network.domain", "Search domain", default="home.arpa"),
    Question(
        "template.builder",
        "How to bake the VM template",
        kind="select",
        choices=lambda ctx: ["cloud-image", "packer"],
        default="cloud-image",
    ),
    Question(
        "template.packer_source",
        "Packer starts from",
        kind="select",
        choices=lambda ctx: ["clone", "iso"],
        default="clone",
        when=lambda ctx: ctx["template.builder"] == "packer",
    ),
    Question(
        "template.clone_vm",
        "Name of the template VM Packer clones (e.g. a cloud-image template)",
        when=lambda ctx: ctx["template.builder"] == "packer" and ctx["template.packer_source"] == "clone",
    ),
    Question(
        "template.iso_file",
        "Installer ISO already on a storage (e.g. local:iso/debian-12.iso)",
        when=lambda ctx: ctx["template.builder"] == "packer" and ctx["template.packer_source"] == "iso",
    ),
    Question(
        "template.os",
        "Guest OS",
        kind="select",
        choices=lambda ctx: ["debian-12", "debian-13", "ubuntu-24.04"],
        default="debian-12",
    ),
    Question("access.ssh_key", "Your public SSH key for the VMs", default=_default_ssh_key, required=False),
    Question("vms", "VM names (comma separated)", default="docker-01"),
    Question("vm.ip", "First VM's IP address (or dhcp; the others follow)", default=_default_ip),
    Question(
        "network.build_ip",
        "A free address for the template build VM (homelab installs the guest agent through it)",
        default=_default_build_ip,
        when=lambda ctx: ctx["template.builder"] == "cloud-image",
    ),
    Question(
        "vm.stacks",
        "Service stacks for the first VM",
        kind="checkbox",
        choices=_stacks,
        default=_starter_stacks,
    ),
    Question("repo.url", "Private config repo SSH URL (empty: none yet)", default="", required=False),
]


class Asker:
    """The one place questions are asked: from answers, defaults, or a terminal."""

    def __init__(
        self,
        answers: dict[str, Any] | None,
        use_defaults: bool,
        interactive: bool | None = None,
        terminal: Callable[[Question], dict[str, Any]] | None = None,
    ):
        # terminal(question) -> prompt_toolkit input/output for that prompt (tests drive the real prompts).
        self.terminal = terminal or (lambda q: {})
        self.given = answers or {}
        self.use_defaults = use_defaults
        self.interactive = sys.stdin.isatty() if interactive is None else interactive

    def ask(self, q: Question, ctx: Context) -> Any:
        choices = q.choices(ctx) if q.choices else None
        default = q.default(ctx) if callable(q.default) else q.default
        if q.key in self.given:
            value = self.given[q.key]
        elif self.use_defaults and (default not in (None, "") or not q.required):
            value = default
        elif self.interactive:
            value = self._prompt(q, default, choices)
        elif default not in (None, "") and choices is None:
            raise InputError(f"init: no answer for {q.key!r} and not on a terminal: pass --answers FILE or --defaults")
        else:
            raise InputError(f"init: no answer for {q.key!r} and not on a terminal: pass --answers FILE")
        return self._check(q, value, choices)

    @staticmethod
    def _check(q: Question, value: Any, choices: list[str] | None) -> Any:
        if q.kind == "checkbox":
            values = value if isinstance(value, list) else [v.strip() for v in str(value).split(",") if v.strip()]
            bad = [v for v in values if choices is not None and v not in choices]
            if bad:
                raise InputError(f"init: {q.key}: {', '.join(bad)} not offered; choose from {', '.join(choices or [])}")
            return values
        if choices is not None and value not in choices:
            offered = ", ".join(choices) or "nothing (the cluster offers none)"
            raise InputError(f"init: {q.key}: {value!r} is not offered here; choose from {offered}")
        if q.required and (value is None or str(value).strip() == ""):
            raise InputError(f"init: {q.key}: an answer is required")
        return value

    def _prompt(self, q: Question, default: Any, choices: list[str] | None) -> Any:
        import questionary

        io = self.terminal(q)
        if q.kind == "select":
            return questionary.select(q.message, choices=choices or [], default=default, **io).unsafe_ask()
        if q.kind == "checkbox":
            picked = default or []
            items = [questionary.Choice(c, checked=c in picked) for c in choices or []]
            return questionary.checkbox(q.message, choices=items, **io).unsafe_ask()
        if q.kind == "password":
            return questionary.password(q.message, **io).unsafe_ask()
        return questionary.text(q.message, default=str(default or ""), **io).unsafe_ask()


def discover(api: Any) -> dict[str, Any]:
    """Read-only: online nodes, storages that take VM disks, bridges (on the first node, then per node)."""
    nodes = sorted(n["node"] for n in api.get("/nodes") if n.get("status", "online") == "online")
    if not nodes:
        raise InputError("init: the cluster reports no online node")
    return {"nodes": nodes, "storages": [], "bridges": []}


def discover_node(api: Any, node: str) -> dict[str, Any]:
    """Storages with 'images' content and bridges of one node."""
    storages = sorted(s["storage"] for s in api.get(f"/nodes/{node}/storage", content="images") if s.get("active", 1))
    bridges = [b for b in api.get(f"/nodes/{node}/network") if b.get("type") in ("bridge", "OVSBridge")]
    return {"storages": storages, "bridges": sorted(bridges, key=lambda b: b["iface"])}


def build_lab(ctx: Context) -> dict[str, Any]:
    """The lab file's data from the answers."""
    a = ctx.answers
    names = [n.strip() for n in str(a["vms"]).split(",") if n.strip()]
    first_ip = str(a["vm.ip"])
    vms = []
    for i, name in enumerate(names):
        vm: dict[str, Any] = {"name": name, "cores": 2, "memory": 4096, "disk": "32G"}
        if first_ip == "dhcp":
            vm["ip"] = "dhcp"
        else:
            vm["ip"] = str(ipaddress.IPv4Address(first_ip) + i)
        if i == 0 and a.get("vm.stacks"):
            vm["stacks"] = list(a["vm.stacks"])
        vms.append(vm)
    proxmox: dict[str, Any] = {
        "url": a["proxmox.url"],
        "node": a["proxmox.node"],
        "storage": a["proxmox.storage"],
        "bridge": a["proxmox.bridge"],
        "token_id": a["proxmox.token_id"],
        "verify_tls": True,
    }
    if a.get("proxmox.ca_bundle"):
        proxmox["ca_bundle"] = a["proxmox.ca_bundle"]
    data: dict[str, Any] = {
        "name": a["name"],
        "proxmox": proxmox,
        "network": {
            "subnet": a["network.subnet"],
            "gateway": a["network.gateway"],
            "dns": [d.strip() for d in str(a["network.dns"]).split(",") if d.strip()],
            "domain": a["network.domain"],
            **({"build_ip": a["network.build_ip"]} if a.get("network.build_ip") else {}),
        },
        "templates": [_template(a)],
        "access": {"user": "homelab", "ssh_keys": [a["access.ssh_key"]] if a.get("access.ssh_key") else []},
        "vms": vms,
    }
    if a.get("repo.url"):
        data["repo"] = {"url": a["repo.url"], "branch": "main"}
    return data


def _template(a: dict[str, Any]) -> dict[str, Any]:
    template: dict[str, Any] = {
        "name": f"{a['template.os'].split('-')[0]}-docker",
        "builder": a["template.builder"],
        "os": a["template.os"],
    }
    if a["template.builder"] == "packer":
        source = a.get("template.packer_source") or "clone"
        template["packer"] = {"source": source}
        if source == "clone":
            template["packer"]["clone_vm"] = a.get("template.clone_vm")
        else:
            template["packer"]["iso_file"] = a.get("template.iso_file")
    return template


HEADER = """# Written by `homelab init`. Check it with `homelab validate`, preview with `homelab plan`.
# The API token's secret is not here: set HOMELAB_PROXMOX_TOKEN or use ~/.config/homelab/secrets.yml.
"""


def render(data: dict[str, Any]) -> str:
    """The lab file's text."""
    return HEADER + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def token_secret(asker: Asker) -> str:
    """The API token's secret: from the environment, else asked (hidden). Never written to the lab file."""
    secret = os.environ.get("HOMELAB_PROXMOX_TOKEN")
    if secret:
        return secret
    if asker.interactive:
        value = asker._prompt(Question("secret", "API token secret (not saved in lab.yml)", "password"), None, None)
        if value:
            return str(value)
    raise InputError("init: set HOMELAB_PROXMOX_TOKEN to the API token's secret so init can read the cluster")


@dataclass(frozen=True)
class InitResult:
    """What init wrote."""

    path: Path
    lab_name: str
    vms: int
    problems: list[str] = field(default_factory=list)  # what `homelab doctor` finds with the lab written


def run_init(
    path: Path,
    answers: dict[str, Any] | None = None,
    use_defaults: bool = False,
    force: bool = False,
    interactive: bool | None = None,
    terminal: Callable[[Question], dict[str, Any]] | None = None,
) -> InitResult:
    """Ask, read the cluster, write a validated lab file atomically. Never overwrites without ``force``."""
    from homelab.adapters.proxmox.api import PveApi
    from homelab.adapters.proxmox.client import ProxmoxerTransport
    from homelab.errors import ProxmoxError
    from homelab.lab.loader import parse_lab
    from homelab.preflight.service import doctor
    from homelab.state.files import write_atomic
    from homelab.state.secrets import ProxmoxAuth

    if path.exists() and not force:
        raise InputError(f"{path}: already exists; pass --force to replace it (or --lab for another file)")
    asker = Asker(answers, use_defaults, interactive, terminal)
    ctx = Context()
    for q in CONNECTION:
        ctx.answers[q.key] = asker.ask(q, ctx)
    _check_connection(ctx, path)
    auth = ProxmoxAuth(token_id=ctx["proxmox.token_id"], token_secret=token_secret(asker))
    api = PveApi(ProxmoxerTransport.connect(ctx["proxmox.url"], auth, True, ctx["proxmox.ca_bundle"] or None))
    try:
        ctx.live.update(discover(api))
        for q in LAB:
            if q.key == "proxmox.storage":
                ctx.live.update(discover_node(api, ctx["proxmox.node"]))
                if not ctx.live["storages"]:  # PVE lists only what the token may use
                    raise _no_access(api, ctx, "init: the token sees no storage for VM disks")
            if q.when(ctx):
                ctx.answers[q.key] = asker.ask(q, ctx)
    except ProxmoxError as exc:
        if exc.status != 403:
            raise
        raise _no_access(api, ctx, f"init: the token may not read the cluster: {exc}") from None
    text = render(build_lab(ctx))
    lab = parse_lab(text, str(path))  # an answer that makes an invalid lab fails here, before anything is written
    write_atomic(path, text)
    return InitResult(path, lab.name, len(lab.vms), [str(f) for f in doctor(api, lab).findings])


def _no_access(api: Any, ctx: Context, reason: str) -> InputError:
    from homelab.preflight.service import no_access

    places = {"node": ctx["proxmox.node"] or "NODE", "storage": ctx["proxmox.storage"] or "local-lvm"}
    places.update(bridge=ctx["proxmox.bridge"] or "vmbr0", import_storage="local")
    return no_access(api, reason, places, ctx["proxmox.token_id"])


def _check_connection(ctx: Context, path: Path) -> None:
    """The connection answers as the lab file will hold them, checked before anything connects."""
    from homelab.lab.loader import parse_lab

    probe = {
        "name": "probe",
        "proxmox": {"url": ctx["proxmox.url"], "node": "probe", "token_id": ctx["proxmox.token_id"]},
        "network": {"subnet": "10.0.0.0/24", "gateway": "10.0.0.1", "build_ip": "10.0.0.250"},
        "templates": [{"name": "probe"}],
    }
    from homelab.errors import LabFileError

    try:
        parse_lab(yaml.safe_dump(probe), "answers")
    except LabFileError as exc:
        raise InputError("init: " + "; ".join(f"{p.path}: {p.message}" for p in exc.problems)) from None
