"""The plan's vocabulary: frozen actions that describe themselves, and the Plan that orders them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from homelab.adapters.proxmox.versions import TemplateVersion
from homelab.lab.types import format_size


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
    # a new data disk of this size (None: none, or the one adopted)
    data_disk: int | None = None
    # the data disk kept for this VM when it was destroyed: (keeper vmid, keeper's unusedN key)
    adopt: tuple[int, str] | None = None
    migrate: bool = False
    kind: ClassVar[str] = "create"

    def describe(self) -> str:
        how = ("full clone" if self.full else "linked clone") + f" of {self.template.name}"
        if self.migrate:
            how += f" on {self.template.node}, then migrate to {self.node}"
        where = f"vmid {self.vmid}" if self.vmid else "next free vmid"
        data = ""
        if self.adopt:
            data = f", its kept data disk back from VM {self.adopt[0]}"
        elif self.data_disk:
            data = f", new data disk {format_size(self.data_disk)}"
        return f"create {self.vm} on {self.node} ({how}, {where}, disk {format_size(self.disk)}{data})"


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
    # the old VM's data disk key: the disk moves to the new VM (None: the old VM has none)
    data_from: str | None = None
    # the old VM has snapshots: they block moving its data disk and go with it
    drops_snapshots: bool = False
    # snapshot the new VM (with the moved data disk) before its first start (settings.snapshot_before_changes)
    snapshot_first: bool = False
    kind: ClassVar[str] = "replace"

    def describe(self) -> str:
        text = f"replace {self.vm} ({self.old_vmid}): {self.reason}; new VM from {self.create.template.name}"
        if self.data_from:
            text += f"; the data disk moves from {self.old_vmid} to the new VM (kept, not copied)"
        if self.drops_snapshots:
            text += f"; the snapshots of {self.old_vmid} go with it"
        if self.snapshot_first:
            text += "; the new VM is snapshotted with the data disk before its first start (`homelab rollback`)"
        return text


@dataclass(frozen=True)
class AddDataDisk(Action):
    """Give a VM that has none a new, empty data disk."""

    vmid: int
    node: str
    size: int
    kind: ClassVar[str] = "add-data-disk"

    def describe(self) -> str:
        return f"add a {format_size(self.size)} data disk to {self.vm} ({self.vmid})"


@dataclass(frozen=True)
class MoveDataDisk(Action):
    """Move a data disk to the VM that should hold it (from an interrupted replacement's old VM, or the keeper)."""

    from_vmid: int
    from_key: str
    to_vmid: int
    node: str
    # from an unfinished replacement's new VM with the snapshot of its first start: rolled back to it first (the
    # data as the old VM left it) and its snapshots dropped (PVE moves no disk a snapshot uses)
    unwind: bool = False
    kind: ClassVar[str] = "move-data-disk"

    def describe(self) -> str:
        text = f"move {self.vm}'s data disk from VM {self.from_vmid} to {self.to_vmid} (kept, not copied)"
        if self.unwind:
            text += (
                f"; VM {self.from_vmid} is rolled back to its first snapshot first: the data as {self.to_vmid} left it"
            )
        return text


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
    # destroy: park the VM's data disk on the lab's keeper first (None: the VM has none, or it is purged)
    park_data: str | None = None
    # delete the data disk with the VM (destroy --purge-data)
    purge_data: bool = False
    kind: ClassVar[str] = "remove"

    def describe(self) -> str:
        text = f"remove {self.vm} ({self.vmid}): {self.reason}"
        if self.park_data:
            text += "; its data disk is kept"
        elif self.purge_data:
            text += "; ITS DATA DISK IS DELETED (--purge-data)"
        return text


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
