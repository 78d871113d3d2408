"""Planning is pure: (lab, facts, options) -> Plan, an ordered tuple of frozen actions that describe themselves."""

from __future__ import annotations

from homelab.adapters.proxmox.datadisks import DATA_KEY
from homelab.adapters.proxmox.labvms import UNFINISHED, current_and_leftovers
from homelab.adapters.proxmox.marks import parse_mark
from homelab.adapters.proxmox.placement import has_ciupgrade
from homelab.adapters.proxmox.versions import TemplateMissing, TemplateVersion, pick_version
from homelab.adapters.proxmox.vmconfig import desired_config
from homelab.lab.models import Lab, Vm
from homelab.lab.types import format_size
from homelab.provision.actions import (
    Action,
    AddDataDisk,
    Blocked,
    ConfigChange,
    CreateVM,
    GrowDisk,
    MoveDataDisk,
    Namesake,
    Orphan,
    Plan,
    PlanOptions,
    RemoveVM,
    ReplaceVM,
    StartVM,
    Unchanged,
    UpdateVM,
)
from homelab.provision.facts import Facts, LiveVm, kept_data

# Changing these only takes effect at the next boot (cloud-init regenerates its drive then).
NEEDS_REBOOT = {"cores", "memory", "ciuser", "sshkeys", "ipconfig0", "nameserver", "searchdomain", "hostpci0"}


def _diff(live: LiveVm, desired: dict[str, str]) -> tuple[ConfigChange, ...]:
    changes = []
    for key, want in desired.items():
        have = live.setting(key)
        if key == "tags":
            if set(live.tags) == set(want.split(";")):
                continue
        elif key == "description":
            if (live.meta or {}) == (parse_mark(want) or {}):
                continue
            have = "state " + str((live.meta or {}).get("state", "unmarked"))
            want = "state ready"
        elif have == want:
            continue
        changes.append(ConfigChange(key, have, want))
    return tuple(changes)


def resolve_version(lab: Lab, vm: Vm, facts: Facts) -> TemplateVersion | str:
    """The template version a VM should run, or why there is none (the one resolver's short reason)."""
    template = lab.template_for(vm)
    try:
        return pick_version(facts.templates.get(template.name, ()), template)
    except TemplateMissing as missing:
        return missing.reason


# Config locks homelab's own work leaves while it runs: a lab VM holding one is another run's work in progress.
WORK_IN_PROGRESS = ("clone", "create", "migrate")
IN_PROGRESS = (
    "another homelab run (perhaps from another machine) is working on it, or a task of an interrupted run is "
    "still finishing; run again when it is done"
)


def plan(lab: Lab, facts: Facts, options: PlanOptions | None = None) -> Plan:
    """Desired (the lab) against live (the facts) -> ordered actions."""
    options = options or PlanOptions()
    actions: list[Action] = []
    by_name: dict[str, list[LiveVm]] = {}
    for live in facts.managed:
        if not live.is_keeper:
            by_name.setdefault((live.meta or {}).get("vm") or live.name, []).append(live)
    kept = kept_data(facts)
    for vm in lab.vms:
        actions += _plan_vm(lab, vm, facts, by_name.pop(vm.name, []), options, kept.get(vm.name))
        actions += [Namesake(vm.name, other.vmid) for other in facts.unmanaged_namesakes if other.name == vm.name]
    for name, leftovers in sorted(by_name.items()):
        for live in leftovers:
            if options.prune:
                park = live.data_disk.key if live.data_disk else None
                actions.append(RemoveVM(name, live.vmid, live.node, "not in the lab file (--prune)", park_data=park))
            else:
                actions.append(Orphan(name, live.vmid, live.node))
    return Plan(tuple(actions))


def _plan_vm(
    lab: Lab, vm: Vm, facts: Facts, lives: list[LiveVm], options: PlanOptions, kept: tuple[int, str, str] | None
) -> list[Action]:
    busy = next((live for live in lives if live.lock in WORK_IN_PROGRESS), None)
    if busy is not None:
        # Two runs from two machines are not serialised by the local lock: seeing the other's work, stop.
        return [Blocked(vm.name, f"VM {busy.vmid} is locked ({busy.lock}): {IN_PROGRESS}")]
    version = resolve_version(lab, vm, facts)
    if isinstance(version, str):
        return [Blocked(vm.name, version)]
    node = vm.node or lab.proxmox.node
    full = vm.full if vm.full is not None else lab.settings.full_clone
    desired = desired_config(lab, vm, version, admin_key=facts.admin_key)
    data = lab.data_disk_for(vm)
    if vm.vmid is not None and vm.vmid in facts.used_vmids and all(live.vmid != vm.vmid for live in lives):
        return [Blocked(vm.name, f"vmid {vm.vmid} is taken by a VM this lab does not manage")]
    holders = [live for live in lives if live.data_disk]
    if len(holders) > 1:
        ids = " and ".join(str(h.vmid) for h in holders)
        return [Blocked(vm.name, f"VMs {ids} both hold a data disk for it; keep one (homelab deletes neither)")]
    adopt = (kept[0], kept[1]) if kept and not holders else None
    if adopt and kept and kept[2] != node:
        return [Blocked(vm.name, f"its kept data disk is on node {kept[2]}, and a disk cannot move between nodes")]
    # Local storage cannot be cloned to another node: clone on the template's node (full: a linked clone
    # cannot leave its base), then migrate.
    migrate = node != version.node and version.vmid not in facts.shared_templates
    full = full or migrate
    first_boot = dict(desired)
    if has_ciupgrade(facts.release):
        # Only at creation: cloud-init reads it on the first boot (changing it later would change the
        # instance and regenerate the host keys at the next boot for nothing).
        wanted = vm.ciupgrade if vm.ciupgrade is not None else lab.settings.ciupgrade
        first_boot["ciupgrade"] = "1" if wanted else "0"
    create = CreateVM(
        vm.name, node, version, full, vm.vmid, first_boot, vm.disk, None if adopt else data, adopt, migrate
    )
    if not lives:
        return [create]
    current, leftovers = current_and_leftovers(lives, version.version)
    holder = holders[0] if holders else None
    actions: list[Action] = []
    moves: list[Action] = []
    reason = _replace_reason(vm, current, version, node)
    if holder is not None and holder is not current:
        # an interrupted replacement left the disk on the old VM: it goes to the current one before anything
        if holder.node != current.node:
            return [Blocked(vm.name, f"its data disk is on VM {holder.vmid} on node {holder.node}, not {current.node}")]
        assert holder.data_disk is not None
        unwind = (holder.meta or {}).get("state") in UNFINISHED and bool(holder.config.get("parent"))
        moves.append(MoveDataDisk(vm.name, holder.vmid, holder.data_disk.key, current.vmid, current.node, unwind))
    elif adopt and not reason:
        moves.append(MoveDataDisk(vm.name, adopt[0], adopt[1], current.vmid, current.node))
    if reason:
        if not options.replace:
            return [Blocked(vm.name, f"needs replacing ({reason}) but --no-replace was given")]
        moving = current.data_disk is not None or holder is not None
        if moving and current.node != node:
            return [Blocked(vm.name, f"needs replacing ({reason}), but its data disk cannot move to another node")]
        fresh = None if moving or adopt else data
        replace_create = CreateVM(vm.name, node, version, full, None, first_boot, vm.disk, fresh, adopt, migrate)
        data_from = current.data_disk.key if current.data_disk else (DATA_KEY if holder is not None else None)
        static = vm.ip != "dhcp"
        snaps = data_from is not None and bool(current.config.get("parent"))
        first = data_from is not None and lab.settings.snapshot_before_changes
        actions.append(
            ReplaceVM(vm.name, current.vmid, current.node, reason, replace_create, static, data_from, snaps, first)
        )
    else:
        changes = _diff(current, desired)
        running = current.status == "running"
        if changes:
            reboot = running and any(c.key in NEEDS_REBOOT for c in changes)
            actions.append(UpdateVM(vm.name, current.vmid, current.node, changes, reboot))
        size = current.disk_size
        if current.disk_key and size is not None and vm.disk > size:
            actions.append(GrowDisk(vm.name, current.vmid, current.node, current.disk_key, size, vm.disk))
        have = current.data_disk or (holder.data_disk if holder is not None else None)
        if data and have is None and not adopt:
            actions.append(AddDataDisk(vm.name, current.vmid, current.node, data))
        elif data and have is not None and have.size is not None and data > have.size:
            key = current.data_disk.key if current.data_disk else DATA_KEY
            actions.append(GrowDisk(vm.name, current.vmid, current.node, key, have.size, data))
        if not running:
            actions.append(StartVM(vm.name, current.vmid, current.node))
        if not actions and not moves:
            actions.append(Unchanged(vm.name, current.vmid, current.node))
    removals: list[Action] = [RemoveVM(vm.name, live.vmid, live.node, _leftover(live, current)) for live in leftovers]
    if vm.ip != "dhcp":
        # Two VMs must never run with one static address: a leftover (perhaps a replacement's new VM, running,
        # from a run killed before it could go back) goes before anything of this VM starts.
        return moves + removals + actions
    return moves + actions + removals


def _leftover(live: LiveVm, current: LiveVm) -> str:
    if (live.meta or {}).get("state") in UNFINISHED:
        return f"the new VM of a replacement that did not finish; {current.vmid} last ran well"
    return "left over from an interrupted replace"


def _replace_reason(vm: Vm, live: LiveVm, version: TemplateVersion, node: str) -> str | None:
    meta = live.meta or {}
    if meta.get("template") and meta.get("template") != version.template:
        return f"template changed from {meta.get('template')} to {version.template}"
    if meta.get("version") and meta.get("version") != version.version:
        return f"template version {meta.get('version')} -> {version.version}"
    if live.node != node:
        return f"node changed from {live.node} to {node}"
    size = live.disk_size
    if size is not None and vm.disk < size:
        return f"disk {format_size(vm.disk)} is smaller than {format_size(size)} and disks cannot shrink"
    return None


__all__ = [
    "NEEDS_REBOOT",
    "Action",
    "AddDataDisk",
    "Blocked",
    "ConfigChange",
    "CreateVM",
    "GrowDisk",
    "MoveDataDisk",
    "Namesake",
    "Orphan",
    "Plan",
    "PlanOptions",
    "RemoveVM",
    "ReplaceVM",
    "StartVM",
    "Unchanged",
    "UpdateVM",
    "plan",
    "resolve_version",
]
