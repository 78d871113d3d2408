"""Checks that span several keys of a lab: duplicates, addresses, references.

They look at LabParts: the whole of a valid lab, or, when the file does not validate, each part that does on
its own, so one run of `validate` reports the model's errors and these together.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from homelab.lab.models import Docker, Https, Lab, Network, Proxmox, StackSettings, Template, Vm
from homelab.stackimages import pinned_images, too_old_for_engine_29
from homelab.stacks import DNS_PROVIDER_SECRETS, catalogue, is_secret_name

Found = tuple[tuple[str | int, ...], str]


@dataclass(frozen=True)
class LabParts:
    """The parts of a lab the checks look at; a part that is missing or not valid is None or left out.

    templates and vms are (index in the file, item) for the items that are valid; all_templates says
    whether every template is, so that a VM's template name can be looked up.
    """

    name: str | None = None
    proxmox: Proxmox | None = None
    network: Network | None = None
    templates: tuple[tuple[int, Template], ...] = ()
    all_templates: bool = False
    vms: tuple[tuple[int, Vm], ...] = ()
    stacks: tuple[str, ...] = ()
    stack_settings: tuple[tuple[str, StackSettings], ...] = ()
    https: Https | None = None
    docker: Docker | None = None
    folder: Path | None = None  # the lab file's folder: its own stacks are in <folder>/stacks/
    auth: str = "none"  # settings.auth

    @classmethod
    def of(cls, lab: Lab) -> LabParts:
        """All the parts of a valid lab."""
        return cls(
            name=lab.name,
            proxmox=lab.proxmox,
            network=lab.network,
            templates=tuple(enumerate(lab.templates)),
            all_templates=True,
            vms=tuple(enumerate(lab.vms)),
            stacks=tuple(lab.stacks),
            stack_settings=tuple(lab.stacks.items()),
            https=lab.https,
            docker=lab.docker,
            folder=lab.folder,
            auth=lab.settings.auth,
        )


def _suggest(name: str, known: Iterable[str]) -> str:
    known = sorted(known)
    import difflib  # only when a name is wrong: validate of a good file never needs it

    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; known: {', '.join(known)}" if known else ""


def cross_check(lab: Lab) -> list[Found]:
    """Every problem of a valid lab that needs more than one key to see, as (loc, message)."""
    return check_parts(LabParts.of(lab))


def check_parts(parts: LabParts) -> list[Found]:
    """Every problem that needs more than one key to see and whose keys are all in ``parts``."""
    found: list[Found] = []
    if parts.name == "template":
        found.append((("name",), "'template' is reserved (homelab-template marks template versions)"))
    if parts.proxmox is not None:
        found += _check_proxmox(parts.proxmox)
    found += _check_templates(parts.templates)
    if parts.network is not None:
        found += _check_network(parts.network)
        found += _check_build_ip(parts)
    found += _check_vms(parts)
    found += _check_stacks(parts.stacks, parts.folder)
    current_docker = parts.docker is None or parts.docker.source == "docker"
    found += _check_stack_settings(parts.stack_settings, current_docker, parts.folder)
    found += _check_auth(parts)
    found += _check_setup_done(parts)
    found += _check_required_settings(parts)
    found += _check_ports(parts)
    if parts.https is not None:
        found += _check_https(parts.https, parts.network)
    return found


def _check_proxmox(px: Proxmox) -> list[Found]:
    try:
        port = urlparse(px.url).port or 8006
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        return [(("proxmox", "url"), f"{px.url!r}: the port must be 1 to 65535")]
    if px.token_id and px.user:
        return [(("proxmox", "user"), "set token_id or user, not both (token_id is preferred)")]
    if not px.token_id and not px.user:
        return [(("proxmox",), "set token_id (an API token, preferred) or user (password login)")]
    return []


def _check_templates(templates: tuple[tuple[int, Template], ...]) -> list[Found]:
    found: list[Found] = []
    first: dict[str, int] = {}
    ranges: list[tuple[int, int, int]] = []
    for i, tpl in templates:
        if tpl.name in first:
            found.append(
                (("templates", i, "name"), f"duplicate template name {tpl.name!r} (also templates[{first[tpl.name]}])")
            )
        first.setdefault(tpl.name, i)
        lo, hi = tpl.vmid_range
        if lo > hi:
            found.append((("templates", i, "vmid_range"), f"first vmid {lo} is above last vmid {hi}"))
        for olo, ohi, j in ranges:
            if lo <= ohi and olo <= hi:
                found.append((("templates", i, "vmid_range"), f"overlaps templates[{j}].vmid_range {olo}-{ohi}"))
        ranges.append((lo, hi, i))
        if tpl.builder == "cloud-image" and tpl.packer is not None:
            found.append((("templates", i, "packer"), "only for builder: packer (this template uses cloud-image)"))
        if tpl.builder == "packer":
            if tpl.image is not None:
                found.append((("templates", i, "image"), "only for builder: cloud-image (this template uses packer)"))
            src = tpl.packer
            if src is None:
                found.append(
                    (
                        ("templates", i, "packer"),
                        "required key is missing for builder: packer (clone_vm: the VM template to clone; "
                        "or source: iso with iso_file, e.g. local:iso/debian-12.iso)",
                    )
                )
            if src is not None and src.source == "iso" and not src.iso_file:
                found.append((("templates", i, "packer", "iso_file"), "required when source is iso"))
            if src is not None and src.source == "clone" and not src.clone_vm:
                found.append((("templates", i, "packer", "clone_vm"), "required when source is clone"))
    return found


def _check_network(network: Network) -> list[Found]:
    net = ipaddress.IPv4Network(network.subnet)
    if ipaddress.IPv4Address(network.gateway) not in net:
        return [(("network", "gateway"), f"{network.gateway} is outside network.subnet {net}")]
    return []


def _check_build_ip(parts: LabParts) -> list[Found]:
    network = parts.network
    assert network is not None
    if network.build_ip is None:
        bakes = [i for i, t in parts.templates if t.builder == "cloud-image"]
        if not bakes:
            return []
        return [
            (
                ("network", "build_ip"),
                f"required key is missing: templates[{bakes[0]}] uses builder: cloud-image, whose build VM needs "
                "a free static address in network.subnet while homelab installs its guest agent "
                "(e.g. build_ip: " + _free_looking(network) + ")",
            )
        ]
    found: list[Found] = [(("network", "build_ip"), p) for p in _address_problems(network.build_ip, network)]
    for i, vm in parts.vms:
        if vm.ip == network.build_ip:
            found.append((("network", "build_ip"), f"{vm.ip} is also vms[{i}].ip; the build VM needs its own"))
    return found


def _free_looking(network: Network) -> str:
    """An address near the top of the subnet, which DHCP pools and first VMs rarely take."""
    return suggest_build_ip(network.subnet, network.gateway)


def suggest_build_ip(subnet: str, gateway: str, taken: Iterable[str] = ()) -> str:
    """A free-looking address for network.build_ip: a few below the top of the subnet (DHCP pools and the first
    VMs usually sit low), not the gateway nor one ``taken``."""
    net = ipaddress.IPv4Network(subnet)
    avoid = {gateway, *taken}
    start = 6 if net.num_addresses > 16 else 1
    for below in range(start, min(net.num_addresses - 1, start + 256)):
        candidate = str(net.broadcast_address - below)
        if candidate not in avoid and net.broadcast_address - below > net.network_address:
            return candidate
    return str(net.network_address + 1)


def _check_vms(parts: LabParts) -> list[Found]:
    found: list[Found] = []
    names: dict[str, int] = {}
    vmids: dict[int, int] = {}
    ips: dict[str, int] = {}
    templates = {t.name for _, t in parts.templates}
    stacks = catalogue(parts.folder)
    for i, vm in parts.vms:
        if vm.name in names:
            found.append((("vms", i, "name"), f"duplicate VM name {vm.name!r} (also vms[{names[vm.name]}])"))
        names.setdefault(vm.name, i)
        if vm.vmid is not None:
            if vm.vmid in vmids:
                found.append((("vms", i, "vmid"), f"duplicate vmid {vm.vmid} (also vms[{vmids[vm.vmid]}])"))
            vmids.setdefault(vm.vmid, i)
            for j, tpl in parts.templates:
                if tpl.vmid_range[0] <= vm.vmid <= tpl.vmid_range[1]:
                    found.append((("vms", i, "vmid"), f"{vm.vmid} is inside templates[{j}].vmid_range"))
        if vm.ip != "dhcp":
            if parts.network is not None:
                found += [(("vms", i, "ip"), problem) for problem in _address_problems(vm.ip, parts.network)]
            if vm.ip in ips:
                found.append((("vms", i, "ip"), f"{vm.ip} is already used by vms[{ips[vm.ip]}]"))
            ips.setdefault(vm.ip, i)
        if vm.template is not None and parts.all_templates and vm.template not in templates:
            found.append(
                (("vms", i, "template"), f"unknown template {vm.template!r}{_suggest(vm.template, templates)}")
            )
        for k, vm_tag in enumerate(vm.tags):
            if vm_tag.startswith("homelab-"):
                found.append((("vms", i, "tags", k), f"{vm_tag!r}: tags starting with homelab- are homelab's marks"))
        seen: set[str] = set()
        for k, stack in enumerate(vm.stacks):
            if stack not in stacks:
                found.append((("vms", i, "stacks", k), f"unknown stack {stack!r}{_suggest(stack, stacks)}"))
            elif stack in seen:
                found.append((("vms", i, "stacks", k), f"stack {stack!r} is listed twice"))
            seen.add(stack)
    return found


def _address_problems(ip: str, network: Network) -> list[str]:
    addr = ipaddress.IPv4Address(ip)
    net = ipaddress.IPv4Network(network.subnet)
    if addr not in net:
        return [f"{ip} is outside network.subnet {net}"]
    if addr in (net.network_address, net.broadcast_address):
        return [f"{ip} is the network's own or broadcast address"]
    if ip == network.gateway:
        return [f"{ip} is the gateway's address"]
    return []


def _check_stacks(names: tuple[str, ...], folder: Path | None) -> list[Found]:
    known = catalogue(folder)
    return [
        (("stacks", name), f"settings for an unknown stack{_suggest(name, known)}")
        for name in names
        if name not in known
    ]


def _check_stack_settings(
    settings: tuple[tuple[str, StackSettings], ...], current_docker: bool, folder: Path | None = None
) -> list[Found]:
    """No secret in stacks.<name>.env (or its extend environment); with Docker's current Engine (docker.source:
    docker), no image pin known not to work with it."""
    found: list[Found] = []
    known = catalogue(folder)
    for name, stack in settings:
        if name not in known:
            continue
        extended = stack.extend.services.items() if stack.extend else ()
        services = known[name].services if extended else ()
        for service, ext in extended:
            if service not in services:
                found.append(
                    (
                        ("stacks", name, "extend", "services", service),
                        f"stack {name} has no service {service!r}{_suggest(service, services)}",
                    )
                )
            for key in ext.environment:
                if is_secret_name(name, key, known):
                    loc = ("stacks", name, "extend", "services", service, "environment", key)
                    found.append((loc, "a secret does not belong in the lab file: declare it in a user stack"))
        for key in stack.env:
            if is_secret_name(name, key, known):
                found.append(
                    (
                        ("stacks", name, "env", key),
                        f"a secret does not belong in the lab file: set HOMELAB_{name.upper().replace('-', '_')}_{key} "
                        f"or put it in the secrets file under '<lab>: {{stacks: {{{name}: {{{key}: ...}}}}}}' "
                        "(`homelab secrets path` shows where)",
                    )
                )
        pins = {var: image for image, var, _ in pinned_images(name, known)} if current_docker else {}
        version_var = known[name].version_var
        if stack.version and version_var in pins:
            problem = too_old_for_engine_29(pins[version_var], stack.version)
            if problem:
                found.append((("stacks", name, "version"), problem))
        for key, value in stack.env.items():
            problem = too_old_for_engine_29(pins[key], value) if key in pins else None
            if problem:
                found.append((("stacks", name, "env", key), problem))
    return found


def _check_required_settings(parts: LabParts) -> list[Found]:
    """A stack a VM runs gets every setting its stack.yml requires (they have no default)."""
    known = catalogue(parts.folder)
    settings = dict(parts.stack_settings)
    found: list[Found] = []
    for i, vm in parts.vms:
        for k, stack in enumerate(vm.stacks):
            if stack not in known:
                continue
            env = settings[stack].env if stack in settings else {}
            for setting in known[stack].required_settings:
                if not env.get(setting.name):
                    what = setting.description or "no default"
                    key = f"stacks.{stack}.env.{setting.name}"
                    found.append((("vms", i, "stacks", k), f"stack {stack} needs {key} ({what})"))
    return found


def _host_port(spec: str) -> str:
    """ "53:53/udp" -> "53/udp", "127.0.0.1:80:80" -> "127.0.0.1:80/tcp": the host side a port takes."""
    ports, _, proto = spec.partition("/")
    host = ports.rsplit(":", 1)[0] if ":" in ports else ports
    return f"{host}/{proto or 'tcp'}"


def _check_ports(parts: LabParts) -> list[Found]:
    """Two stacks on one VM cannot publish the same host port (stack.yml ports)."""
    known = catalogue(parts.folder)
    found: list[Found] = []
    for i, vm in parts.vms:
        taken: dict[str, str] = {}
        for k, stack in enumerate(vm.stacks):
            for spec in known[stack].ports if stack in known else ():
                port = _host_port(spec)
                if taken.setdefault(port, stack) != stack:
                    found.append((("vms", i, "stacks", k), f"{stack} and {taken[port]} both publish port {port}"))
    return found


def _check_auth(parts: LabParts) -> list[Found]:
    """Forward-auth through Authelia needs the authelia stack on the same VM as the stack it protects."""
    wanted = dict(parts.stack_settings)
    found: list[Found] = []
    for i, vm in parts.vms:
        for k, stack in enumerate(vm.stacks):
            settings = wanted.get(stack)
            auth = settings.auth if settings is not None and settings.auth else parts.auth
            if auth == "authelia" and stack != "authelia" and "authelia" not in vm.stacks:
                where = f"stacks.{stack}.auth" if settings is not None and settings.auth else "settings.auth"
                found.append(
                    (("vms", i, "stacks", k), f"{where} is authelia: add the authelia stack to {vm.name} as well")
                )
    return found


def _check_setup_done(parts: LabParts) -> list[Found]:
    """stacks.<name>.setup_done names web UIs whose setup is guarded, and none that trusts the guard's login."""
    known = catalogue(parts.folder)
    found: list[Found] = []
    for stack, settings in parts.stack_settings:
        uis = {ui.name: ui for ui in known[stack].uis} if stack in known else {}
        for j, name in enumerate(settings.setup_done):
            ui = uis.get(name)
            where = ("stacks", stack, "setup_done", j)
            if ui is None or ui.first_visit is None or not ui.first_visit.guard:
                guarded = [u.name for u in uis.values() if u.first_visit and u.first_visit.guard]
                found.append((where, f"{name!r} is no web UI of {stack} with a guarded setup ({guarded or 'none'})"))
            elif ui.first_visit.seed is not None:
                found.append((where, f"{name} trusts the login in front of it (homelab set it up so): it stays"))
    return found


def _check_https(https: Https, network: Network | None) -> list[Found]:
    if https.ca == "acme" and https.acme is None:
        return [(("https", "acme"), "required when ca is acme: {email: ..., challenge: dns, dns_provider: cloudflare}")]
    if https.ca == "acme" and network is not None and not network.domain:
        return [(("network", "domain"), "required when https.ca is acme: a domain you own, e.g. lab.example.com")]
    if (
        https.ca == "acme"
        and network is not None
        and network.domain
        and network.domain.rsplit(".", 1)[-1] in LOCAL_DOMAINS
    ):
        return [(("https", "ca"), f"{network.domain} is not a public domain: no public CA signs it; use ca: local")]
    acme = https.acme
    if acme is not None and acme.challenge == "dns" and acme.dns_provider not in DNS_PROVIDER_SECRETS:
        known = ", ".join(sorted(DNS_PROVIDER_SECRETS))
        return [(("https", "acme", "dns_provider"), f"unknown DNS provider {acme.dns_provider!r}; known: {known}")]
    return []


# Special-use names no public CA issues certificates for (RFC 6761, 6762, 8375, ICANN's .internal)
LOCAL_DOMAINS = ("arpa", "local", "internal", "lan", "home", "test", "localhost", "invalid", "example")
