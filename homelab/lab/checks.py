"""Checks that span several keys of a validated lab: duplicates, addresses, references."""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Iterable
from urllib.parse import urlparse

from homelab.lab.models import Lab
from homelab.stacks import catalogue

Found = tuple[tuple[str | int, ...], str]


def _suggest(name: str, known: Iterable[str]) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; known: {', '.join(known)}" if known else ""


def cross_check(lab: Lab) -> list[Found]:
    """Every problem that needs more than one key to see, as (loc, message)."""
    found: list[Found] = []
    if lab.name == "template":
        found.append((("name",), "'template' is reserved (homelab-template marks template versions)"))
    found += _check_proxmox(lab)
    found += _check_templates(lab)
    found += _check_network(lab)
    found += _check_vms(lab)
    found += _check_stacks(lab)
    return found


def _check_proxmox(lab: Lab) -> list[Found]:
    px = lab.proxmox
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


def _check_templates(lab: Lab) -> list[Found]:
    found: list[Found] = []
    first: dict[str, int] = {}
    ranges: list[tuple[int, int, int]] = []
    for i, tpl in enumerate(lab.templates):
        if tpl.name in first:
            found.append(
                (("templates", i, "name"), f"duplicate template name {tpl.name!r} (also templates[{first[tpl.name]}])")
            )
        first.setdefault(tpl.name, i)
        lo, hi = tpl.vmid_range
        if lo > hi:
            found.append((("templates", i, "vmid_range"), f"first vmid {lo} is above last vmid {hi}"))
        for j, (olo, ohi, _) in enumerate(ranges):
            if lo <= ohi and olo <= hi:
                found.append((("templates", i, "vmid_range"), f"overlaps templates[{j}].vmid_range {olo}-{ohi}"))
        ranges.append((lo, hi, i))
        if tpl.builder == "cloud-image" and tpl.packer is not None:
            found.append((("templates", i, "packer"), "only for builder: packer (this template uses cloud-image)"))
        if tpl.builder == "packer":
            if tpl.image is not None:
                found.append((("templates", i, "image"), "only for builder: cloud-image (this template uses packer)"))
            src = tpl.packer
            if src is not None and src.source == "iso" and not src.iso_file:
                found.append((("templates", i, "packer", "iso_file"), "required when source is iso"))
            if src is not None and src.source == "clone" and not src.clone_vm:
                found.append((("templates", i, "packer", "clone_vm"), "required when source is clone"))
    return found


def _check_network(lab: Lab) -> list[Found]:
    net = ipaddress.IPv4Network(lab.network.subnet)
    if ipaddress.IPv4Address(lab.network.gateway) not in net:
        return [(("network", "gateway"), f"{lab.network.gateway} is outside network.subnet {net}")]
    return []


def _check_vms(lab: Lab) -> list[Found]:
    found: list[Found] = []
    net = ipaddress.IPv4Network(lab.network.subnet)
    names: dict[str, int] = {}
    vmids: dict[int, int] = {}
    ips: dict[str, int] = {}
    templates = {t.name for t in lab.templates}
    stacks = catalogue()
    for i, vm in enumerate(lab.vms):
        if vm.name in names:
            found.append((("vms", i, "name"), f"duplicate VM name {vm.name!r} (also vms[{names[vm.name]}])"))
        names.setdefault(vm.name, i)
        if vm.vmid is not None:
            if vm.vmid in vmids:
                found.append((("vms", i, "vmid"), f"duplicate vmid {vm.vmid} (also vms[{vmids[vm.vmid]}])"))
            vmids.setdefault(vm.vmid, i)
            for j, tpl in enumerate(lab.templates):
                if tpl.vmid_range[0] <= vm.vmid <= tpl.vmid_range[1]:
                    found.append((("vms", i, "vmid"), f"{vm.vmid} is inside templates[{j}].vmid_range"))
        if vm.ip != "dhcp":
            addr = ipaddress.IPv4Address(vm.ip)
            if addr not in net:
                found.append((("vms", i, "ip"), f"{vm.ip} is outside network.subnet {net}"))
            elif addr in (net.network_address, net.broadcast_address):
                found.append((("vms", i, "ip"), f"{vm.ip} is the network's own or broadcast address"))
            elif vm.ip == lab.network.gateway:
                found.append((("vms", i, "ip"), f"{vm.ip} is the gateway's address"))
            if vm.ip in ips:
                found.append((("vms", i, "ip"), f"{vm.ip} is already used by vms[{ips[vm.ip]}]"))
            ips.setdefault(vm.ip, i)
        if vm.template is not None and vm.template not in templates:
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


def _check_stacks(lab: Lab) -> list[Found]:
    known = catalogue()
    return [
        (("stacks", name), f"settings for an unknown stack{_suggest(name, known)}")
        for name in lab.stacks
        if name not in known
    ]
