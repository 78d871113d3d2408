"""Planning is pure: (lab, facts, options) -> Plan, an ordered tuple of frozen actions that describe themselves."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from homelab.adapters.proxmox.labvms import current_and_leftovers
from homelab.adapters.proxmox.marks import parse_mark
from homelab.adapters.proxmox.placement import has_ciupgrade
from homelab.adapters.proxmox.versions import TemplateMissing, TemplateVersion, pick_version
from homelab.adapters.proxmox.vmconfig import desired_config
from homelab.lab.models import Lab, Vm
from homelab.lab.types import format_size
from homelab.provision.facts import Facts, LiveVm

# Changing these only takes effect at the next boot (cloud-init regenerates its drive then).
NEEDS_REBOOT = {"cores", "memory", "ciuser", "sshkeys", "ipconfig0", "nameserver", "searchdomain"}


@dataclass(frozen=True)
class ConfigChange:
    """One config key that differs."""

    key: str
    old: str | None
    new: str

    def __str__(self) -> str:
        shown = {"sshkeys": lambda v: f"{len(v.splitlines())} key(s)" if v else "none"}.get(self.key, lambda v: v)
        old = shown(self.old) if self.old is not None else "unset"
        return f"{self.key}: {old} -> {shown(self.new)}"


@dataclass(frozen=True)
class Action:
    """Base of every planned step; ``vm`` is the lab VM name it belongs to."""

    vm: str
    kind: ClassVar[str] = "action"
    changes_something: ClassVar[bool] = True

    def describe(self) -> str:
        raise NotImplementedError

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["action"] = self.kind
        return data


@dataclass(frozen=True)
class CreateVM(Action):
    """Clone a new VM from the template version, configure it, grow its disk, start it, wait for its agent.

    On another node than the template's: cloned there directly (``target``) when the template is wholly on
    shared storage; otherwise (``migrate``) a full clone on the template's node, migrated offline to ``node``.
    """

    node: str
    template: TemplateVersion
    full: bool
    vmid: int | None
    config: dict[str, str] = field(hash=False)
    disk: int
    migrate: bool = False
    kind: ClassVar[str] = "create"

    def describe(self) -> str:
        how = ("full clone" if self.full else "linked clone") + f" of {self.template.name}"
        if self.migrate:
            how += f" on {self.template.node}, then migrate to {self.node}"
        where = f"vmid {self.vmid}" if self.vmid else "next free vmid"
        return f"create {self.vm} on {self.node} ({how}, {where}, disk {format_size(self.disk)})"


@dataclass(frozen=True)
class UpdateVM(Action):
    """Change config keys in place; reboot when a running VM needs it for them to take effect."""

    vmid: int
    node: str
    changes: tuple[ConfigChange, ...]
    reboot: bool
    kind: ClassVar[str] = "update"

    def describe(self) -> str:
        tail = " (reboot)" if self.reboot else ""
        return f"update {self.vm} ({self.vmid}): " + ", ".join(str(c) for c in self.changes) + tail


@dataclass(frozen=True)
class GrowDisk(Action):
    """Grow the boot disk (disks never shrink in place)."""

    vmid: int
    node: str
    disk_key: str
    old: int
    new: int
    kind: ClassVar[str] = "grow-disk"

    def describe(self) -> str:
        return f"grow {self.vm} ({self.vmid}) {self.disk_key}: {format_size(self.old)} -> {format_size(self.new)}"


@dataclass(frozen=True)
class ReplaceVM(Action):
    """Build a new VM beside the old one; remove the old one only once the new one is up."""

    old_vmid: int
    old_node: str
    reason: str
    create: CreateVM
    static_ip: bool
    kind: ClassVar[str] = "replace"

    def describe(self) -> str:
        return f"replace {self.vm} ({self.old_vmid}): {self.reason}; new VM from {self.create.template.name}"


@dataclass(frozen=True)
class StartVM(Action):
    """Start a stopped VM and wait for its agent."""

    vmid: int
    node: str
    kind: ClassVar[str] = "start"

    def describe(self) -> str:
        return f"start {self.vm} ({self.vmid})"


@dataclass(frozen=True)
class RemoveVM(Action):
    """Stop and delete a VM this lab manages."""

    vmid: int
    node: str
    reason: str
    kind: ClassVar[str] = "remove"

    def describe(self) -> str:
        return f"remove {self.vm} ({self.vmid}): {self.reason}"


@dataclass(frozen=True)
class Unchanged(Action):
    """Already as written."""

    vmid: int
    node: str
    kind: ClassVar[str] = "unchanged"
    changes_something: ClassVar[bool] = False

    def describe(self) -> str:
        return f"{self.vm} ({self.vmid}) is as written"


@dataclass(frozen=True)
class Orphan(Action):
    """Marked as this lab's but not in the file; `apply --prune` removes it."""

    vmid: int
    node: str
    kind: ClassVar[str] = "orphan"
    changes_something: ClassVar[bool] = False

    def describe(self) -> str:
        return f"{self.vm} ({self.vmid}) is marked as this lab's but not in the file (apply --prune removes it)"


@dataclass(frozen=True)
class Namesake(Action):
    """A VM with a lab VM's name that this lab does not manage: reported, never touched."""

    vmid: int
    kind: ClassVar[str] = "namesake"
    changes_something: ClassVar[bool] = False

    def describe(self) -> str:
        return f"VM {self.vmid} is also named {self.vm} but is not marked as this lab's: left alone"


@dataclass(frozen=True)
class Blocked(Action):
    """Something the plan cannot do; apply refuses to start while any is present."""

    reason: str
    kind: ClassVar[str] = "blocked"
    changes_something: ClassVar[bool] = False

    def describe(self) -> str:
        return f"cannot apply {self.vm}: {self.reason}"


@dataclass(frozen=True)
class Plan:
    """The ordered actions; no-ops are explicit."""

    actions: tuple[Action, ...]

    @property
    def changes(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.changes_something)

    @property
    def blocked(self) -> tuple[Blocked, ...]:
        return tuple(a for a in self.actions if isinstance(a, Blocked))

    def by_vm(self) -> dict[str, list[Action]]:
        """Actions grouped per VM, in order: each group is one chain the executor runs."""
        groups: dict[str, list[Action]] = {}
        for action in self.actions:
            groups.setdefault(action.vm, []).append(action)
        return groups

    def as_dict(self) -> dict[str, Any]:
        return {
            "changes": len(self.changes),
            "actions": [dict(a.as_dict(), description=a.describe()) for a in self.actions],
        }


@dataclass(frozen=True)
class PlanOptions:
    """What the user allowed."""

    prune: bool = False
    replace: bool = True


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


def plan(lab: Lab, facts: Facts, options: PlanOptions | None = None) -> Plan:
    """Desired (the lab) against live (the facts) -> ordered actions."""
    options = options or PlanOptions()
    actions: list[Action] = []
    by_name: dict[str, list[LiveVm]] = {}
    for live in facts.managed:
        by_name.setdefault((live.meta or {}).get("vm") or live.name, []).append(live)
    for vm in lab.vms:
        actions += _plan_vm(lab, vm, facts, by_name.pop(vm.name, []), options)
        actions += [Namesake(vm.name, other.vmid) for other in facts.unmanaged_namesakes if other.name == vm.name]
    for name, leftovers in sorted(by_name.items()):
        for live in leftovers:
            if options.prune:
                actions.append(RemoveVM(name, live.vmid, live.node, "not in the lab file (--prune)"))
            else:
                actions.append(Orphan(name, live.vmid, live.node))
    return Plan(tuple(actions))


def _plan_vm(lab: Lab, vm: Vm, facts: Facts, lives: list[LiveVm], options: PlanOptions) -> list[Action]:
    version = resolve_version(lab, vm, facts)
    if isinstance(version, str):
        return [Blocked(vm.name, version)]
    node = vm.node or lab.proxmox.node
    full = vm.full if vm.full is not None else lab.settings.full_clone
    desired = desired_config(lab, vm, version, admin_key=facts.admin_key)
    if vm.vmid is not None and vm.vmid in facts.used_vmids and all(live.vmid != vm.vmid for live in lives):
        return [Blocked(vm.name, f"vmid {vm.vmid} is taken by a VM this lab does not manage")]
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
    create = CreateVM(vm.name, node, version, full, vm.vmid, first_boot, vm.disk, migrate)
    if not lives:
        return [create]
    current, leftovers = current_and_leftovers(lives, version.version)
    actions: list[Action] = []
    reason = _replace_reason(vm, current, version, node)
    if reason:
        if not options.replace:
            return [Blocked(vm.name, f"needs replacing ({reason}) but --no-replace was given")]
        replace_create = CreateVM(vm.name, node, version, full, None, first_boot, vm.disk, migrate)
        actions.append(
            ReplaceVM(vm.name, current.vmid, current.node, reason, replace_create, static_ip=vm.ip != "dhcp")
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
        if not running:
            actions.append(StartVM(vm.name, current.vmid, current.node))
        if not actions:
            actions.append(Unchanged(vm.name, current.vmid, current.node))
    removals: list[Action] = [
        RemoveVM(vm.name, live.vmid, live.node, "left over from an interrupted replace") for live in leftovers
    ]
    if vm.ip != "dhcp" and any(isinstance(a, StartVM) for a in actions):
        # Two VMs must never run with one static address: the leftover goes before the new one starts.
        return removals + actions
    return actions + removals


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
