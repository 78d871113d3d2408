"""The lab as bpg/proxmox HCL (pure: lab + facts in, files and notes out).

One ``proxmox_virtual_environment_vm`` per lab VM, its homelab-owned settings from the same ``desired_config``
the VM planner compares with Proxmox, the hardware a clone inherits (disk slot, SCSI controller, NIC model and
MAC, serial console, cloud-init drive) from the VM as it runs (or from the template version for a VM not made
yet), and an ``import`` block for every VM that exists. Whatever the provider cannot say becomes a note, one
line each, printed and kept in DIR's README.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from homelab.adapters.proxmox.labvms import LiveVm, boot_disk, current_and_leftovers
from homelab.adapters.proxmox.versions import TemplateVersion, version_name
from homelab.adapters.proxmox.vmconfig import desired_config
from homelab.export import drives
from homelab.export.facts import ExportFacts
from homelab.export.hcl import Blank, Block, Expr, identifier
from homelab.lab.models import Lab, Vm
from homelab.lab.types import format_size

VM_RESOURCE = "proxmox_virtual_environment_vm"
GIB = 1024**3
# The keys of desired_config the export writes; a key added there and not here becomes a note, never a silence.
TRANSLATED = {
    "cores": "cpu.cores",
    "memory": "memory.dedicated",
    "tags": "tags",
    "ciuser": "initialization.user_account.username",
    "sshkeys": "initialization.user_account.keys",
    "ipconfig0": "initialization.ip_config.ipv4",
    "nameserver": "initialization.dns.servers",
    "searchdomain": "initialization.dns.domain",
    "onboot": "on_boot",
    "agent": "agent.enabled",
    "description": "description",
}


@dataclass(frozen=True)
class ExportedVm:
    """One lab VM as the export wrote it: its resource, the VM it imports (if any) and its clone source."""

    name: str
    resource: str  # proxmox_virtual_environment_vm.<name>
    node: str
    vmid: int | None  # the running VM the import block adopts; None: Terraform creates it
    clone_vmid: int
    clone_name: str
    address: str  # the lab's static IP, or dhcp


@dataclass(frozen=True)
class VmBlocks:
    """What the export writes for one lab VM."""

    vm: ExportedVm
    resource: Block
    import_block: Block | None
    notes: tuple[str, ...]


def _marked(vm: Vm, facts: ExportFacts, wanted: TemplateVersion | str) -> tuple[LiveVm | None, list[LiveVm]]:
    """The running VM the lab's ``vm`` is (as the VM planner picks it) and any left over from a replace."""
    lives = [live for live in facts.managed if ((live.meta or {}).get("vm") or live.name) == vm.name]
    if not lives:
        return None, []
    return current_and_leftovers(lives, wanted.version if isinstance(wanted, TemplateVersion) else None)


def _running_version(live: LiveVm, facts: ExportFacts) -> TemplateVersion | None:
    """The template version a VM was cloned from (its mark), if it is still on Proxmox."""
    meta = live.meta or {}
    return next(
        (v for v in facts.versions_of(str(meta.get("template") or "")) if v.version == meta.get("version")), None
    )


def vm_blocks(lab: Lab, vm: Vm, facts: ExportFacts) -> VmBlocks | str:
    """The resource (and import block) of one lab VM, or why it cannot be exported."""
    picked = facts.version_for(lab, lab.template_for(vm))
    live, leftovers = _marked(vm, facts, picked)
    notes = [
        f"{vm.name}: VM {old.vmid} is left over from an interrupted replace; not exported: remove it by hand "
        "or finish the replace with `homelab apply` before Terraform takes over"
        for old in leftovers
    ]
    node = vm.node or lab.proxmox.node
    full = vm.full if vm.full is not None else lab.settings.full_clone
    # ``source``: the version the clone block names; ``mark``: the template and version the description names
    if live is None:
        if isinstance(picked, str):
            return f"{vm.name}: not exported: {picked}"
        source, mark, hardware = picked, picked, facts.template_configs.get(picked.vmid, {})
        notes += [
            f"{vm.name}: VM {other.vmid} is also named {vm.name} but is not marked as lab {lab.name}'s: not "
            "imported; Terraform makes a new VM beside it"
            for other in facts.namesakes
            if other.name == vm.name
        ]
        if vm.vmid is not None and vm.vmid in facts.used_vmids:
            notes.append(f"{vm.name}: vmid {vm.vmid} is taken by a VM this lab does not manage: terraform apply fails")
    else:
        hardware = live.config
        meta = live.meta or {}
        runs = version_name(str(meta.get("template")), str(meta.get("version")))
        mark = TemplateVersion(0, node, runs, str(meta.get("version")), str(meta.get("template")))
        running = _running_version(live, facts)
        if running is not None:
            source = running
        elif isinstance(picked, TemplateVersion):
            source = picked
            notes.append(
                f"{vm.name}: it runs {runs}, which is no longer on Proxmox; the clone block names {picked.name} "
                "(Terraform clones only when it makes the VM anew)"
            )
        else:
            return f"{vm.name}: not exported: it runs {runs}, which is no longer on Proxmox, and {picked}"
        if isinstance(picked, TemplateVersion) and picked.version != mark.version:
            notes.append(
                f"{vm.name}: it runs {runs}; `homelab apply` would replace it with {picked.name}, Terraform never "
                "replaces a VM for a new template version (clone is ignored once the VM exists): "
                f"`terraform apply -replace={VM_RESOURCE}.{identifier(vm.name)}` does"
            )
        if live.node != node:
            notes.append(f"{vm.name}: it runs on {live.node}, the lab says {node}: terraform plan replaces it")
        if meta.get("state") != "ready":
            notes.append(f"{vm.name}: homelab never finished making VM {live.vmid}: terraform plan updates it")
    config = desired_config(lab, vm, mark, admin_key=facts.admin_key)
    notes += [f"{vm.name}: {key} has no Terraform counterpart in the export" for key in config if key not in TRANSLATED]
    name = identifier(vm.name)
    resource = Block("resource", (VM_RESOURCE, name))
    resource.set("name", vm.name).set("node_name", node).set("vm_id", live.vmid if live else vm.vmid)
    resource.set("description", config["description"]).set("tags", config["tags"].split(";"))
    resource.set("on_boot", config["onboot"] == "1").set("scsi_hardware", hardware.get("scsihw"))
    clone = Block("clone").set("vm_id", source.vmid)
    if source.node != node:
        clone.set("node_name", source.node)
    clone.set("full", full).set("datastore_id", lab.proxmox.storage if full else None)
    disk, disk_notes = _disk(lab, vm, live, hardware, full)
    net, net_notes = _network(lab, vm, hardware, own_mac=live is not None)
    nested = [
        clone,
        Block("agent").set("enabled", config["agent"] == "1"),
        _cpu(config, hardware),
        _memory(config, hardware),
        *disk,
        *net,
        *_console(hardware),
        _initialization(lab, config, hardware),
        Block("lifecycle").set("ignore_changes", [Expr("clone")]),
    ]
    for block in nested:
        resource.add(Blank(), block)
    notes += disk_notes + net_notes
    import_block = None
    if live is not None:
        import_block = Block("import").set("to", Expr(f"{VM_RESOURCE}.{name}")).set("id", f"{live.node}/{live.vmid}")
    exported = ExportedVm(
        vm.name, f"{VM_RESOURCE}.{name}", node, live.vmid if live else None, source.vmid, source.name, vm.ip
    )
    return VmBlocks(exported, resource, import_block, tuple(notes))


def _cpu(config: dict[str, str], hardware: dict[str, Any]) -> Block:
    cpu = Block("cpu").set("cores", int(config["cores"]))
    if "sockets" in hardware:
        cpu.set("sockets", int(hardware["sockets"]))
    if "cpu" in hardware:
        cpu.set("type", drives.cpu_type(hardware["cpu"]))
    return cpu


def _memory(config: dict[str, str], hardware: dict[str, Any]) -> Block:
    memory = Block("memory").set("dedicated", int(config["memory"]))
    if "balloon" in hardware:
        memory.set("floating", int(hardware["balloon"]))
    return memory


def _disk(lab: Lab, vm: Vm, live: LiveVm | None, hardware: dict[str, Any], full: bool) -> tuple[list[Block], list[str]]:
    """The boot disk: the slot and storage it has (or a clone of the template would have), the lab's size."""
    notes = []
    slot = boot_disk(hardware)
    if slot is None:
        return [], [f"{vm.name}: no boot disk found on Proxmox; the disk block is left out"]
    _, pairs = drives.options(hardware[slot])
    storage = lab.proxmox.storage if (full and live is None) else drives.volume_storage(hardware[slot])
    size = vm.disk
    have = live.disk_size if live is not None else None
    if have is not None and have > size:
        notes.append(
            f"{vm.name}: its disk is {format_size(have)} on Proxmox, the lab says {format_size(size)}: disks never "
            f"shrink; written as {format_size(have)}"
        )
        size = have
    gib = math.ceil(size / GIB)
    if gib * GIB != size:
        notes.append(f"{vm.name}: disk {format_size(size)}: the provider takes whole GiB; written as {gib}G")
    disk = Block("disk").set("datastore_id", storage).set("interface", slot).set("size", gib)
    # what the drive sets beyond PVE's defaults: the provider's defaults are those, so a key left out is a change
    for key in ("discard", "aio", "cache", "serial"):
        disk.set(key, pairs.get(key) or None)
    for key in ("iothread", "ssd", "backup", "replicate"):
        disk.set(key, drives.flag(pairs, key))
    return [disk], notes


def _network(lab: Lab, vm: Vm, hardware: dict[str, Any], own_mac: bool) -> tuple[list[Block], list[str]]:
    """net0 on the lab's bridge, with the model the VM (or its template) has, and the MAC address the VM has:
    a template's is not its clones' (PVE gives each clone a new one)."""
    if "net0" not in hardware:
        return [Block("network_device").set("bridge", lab.proxmox.bridge)], []
    net = drives.network(hardware["net0"])
    notes = []
    if net.get("bridge") and net["bridge"] != lab.proxmox.bridge:
        notes.append(
            f"{vm.name}: net0 is on {net['bridge']} on Proxmox, the lab's bridge is {lab.proxmox.bridge}: "
            "terraform plan moves it"
        )
    device = Block("network_device").set("bridge", lab.proxmox.bridge).set("model", net.get("model") or None)
    if own_mac:
        device.set("mac_address", net.get("mac"))
    device.set("firewall", drives.flag(net, "firewall"))
    return [device], notes


def _console(hardware: dict[str, Any]) -> list[Block]:
    """The OS type, serial ports and display the VM has (a clone inherits them; the provider's defaults differ)."""
    blocks = []
    if "ostype" in hardware:
        blocks.append(Block("operating_system").set("type", str(hardware["ostype"])))
    blocks += [
        Block("serial_device").set("device", str(hardware[f"serial{n}"])) for n in range(4) if f"serial{n}" in hardware
    ]
    if "vga" in hardware:
        head, pairs = drives.options(hardware["vga"])
        vga = Block("vga").set("type", head or None)
        if "memory" in pairs:
            vga.set("memory", int(pairs["memory"]))
        blocks.append(vga)
    return blocks


def _initialization(lab: Lab, config: dict[str, str], hardware: dict[str, Any]) -> Block:
    """cloud-init, with exactly the values homelab sets."""
    init = Block("initialization")
    drive = drives.cloudinit_drive(hardware)
    if drive is not None:
        init.set("datastore_id", drive[1]).set("interface", drive[0])
    else:
        init.set("datastore_id", lab.proxmox.storage)
    if "nameserver" in config or "searchdomain" in config:
        dns = Block("dns").set("domain", config.get("searchdomain"))
        dns.set("servers", config["nameserver"].split(" ") if "nameserver" in config else None)
        init.add(dns)
    ip = dict(item.split("=", 1) for item in config["ipconfig0"].split(","))
    init.add(Block("ip_config").add(Block("ipv4").set("address", ip["ip"]).set("gateway", ip.get("gw"))))
    account = Block("user_account").set("username", config["ciuser"])
    account.set("keys", config["sshkeys"].splitlines() if "sshkeys" in config else None)
    init.add(account)
    return init
