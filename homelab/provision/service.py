"""The provisioning use cases the CLI calls: plan, apply, destroy, status."""

from __future__ import annotations

from dataclasses import dataclass

from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.connect import connect
from homelab.adapters.proxmox.vmconfig import desired_config
from homelab.lab.models import Lab
from homelab.provision.executor import ApplyResult, Reporter, apply_plan
from homelab.provision.facts import Facts, gather, kept_data
from homelab.provision.nodes import check_nodes
from homelab.provision.plan import (
    Action,
    GrowDisk,
    Plan,
    PlanOptions,
    RemoveVM,
    ReplaceVM,
    StartVM,
    Unchanged,
    UpdateVM,
    plan,
    resolve_version,
)
from homelab.state.hosts import Host, load_hosts, save_hosts


@dataclass
class Planned:
    """A plan with the facts it was made from and the connection to carry it out."""

    lab: Lab
    api: PveApi
    facts: Facts
    plan: Plan

    def lab_vmids(self) -> list[int]:
        """The vmids of the lab's VMs as they are now (the ones the lab file names)."""
        names = {vm.name for vm in self.lab.vms}
        return sorted(
            v.vmid for v in self.facts.managed if not v.is_keeper and ((v.meta or {}).get("vm") or v.name) in names
        )


def make_plan(
    lab: Lab,
    options: PlanOptions | None = None,
    api: PveApi | None = None,
    facts: Facts | None = None,
    gpus: bool = True,
) -> Planned:
    """Gather live facts (read-only; or take facts just gathered) and plan; ``gpus`` False: a VM's missing GPU
    mapping does not stop it (status and backup only read)."""
    api = api or connect(lab)
    if facts is None:
        facts = gather(api, lab, check=lambda: check_nodes(api, lab, gpus))
    return Planned(lab, api, facts, plan(lab, facts, options))


def carry_out(planned: Planned, reporter: Reporter | None = None, concurrency: int | None = None) -> ApplyResult:
    """Apply a plan, then record the VMs' addresses for the later stages."""
    known = {h.name: h for h in load_hosts(planned.lab)}
    result = apply_plan(planned.api, planned.lab, planned.plan, planned.facts.used_vmids, reporter, concurrency, known)
    _record_hosts(planned.lab, planned.plan, result, dict(known))
    return result


def record_running(planned: Planned, reporter: Reporter | None = None, concurrency: int | None = None) -> ApplyResult:
    """Change nothing: learn each running lab VM's address and host key through its guest agent and record them,
    as apply does after its changes. For a lab whose VMs another tool changes (``engine: terraform``): that tool
    may have re-created or rebooted a VM, so nothing recorded before is trusted; the agent is asked again."""
    running = {live.vmid for live in planned.facts.managed if live.status == "running"}
    reads: list[Action] = []
    for vm, actions in planned.plan.by_vm().items():
        current = _current_vm(actions)
        if current is not None and current[0] in running:
            reads.append(Unchanged(vm, *current))
    known = {h.name: h for h in load_hosts(planned.lab)}
    learned = Plan(tuple(reads))
    result = apply_plan(planned.api, planned.lab, learned, planned.facts.used_vmids, reporter, concurrency, {})
    _record_hosts(planned.lab, learned, result, dict(known))
    return result


def _current_vm(actions: list[Action]) -> tuple[int, str] | None:
    """(vmid, node) of the VM that exists now for one lab VM's actions, if one does."""
    for action in actions:
        if isinstance(action, ReplaceVM):
            return action.old_vmid, action.old_node
        if isinstance(action, (Unchanged, UpdateVM, GrowDisk, StartVM)):
            return action.vmid, action.node
    return None


def _record_hosts(lab: Lab, plan: Plan, result: ApplyResult, known: dict[str, Host]) -> None:
    removed = {vm for vm, actions in plan.by_vm().items() if all(isinstance(a, RemoveVM) for a in actions)}
    for outcome in result.outcomes:
        if outcome.ok and outcome.address:
            old = known.get(outcome.vm)
            known[outcome.vm] = Host(
                name=outcome.vm,
                address=outcome.address,
                user=lab.access.user,
                host_key=outcome.host_key,
                key_file=old.key_file if old else None,
                vmid=outcome.vmid,
            )
        elif not outcome.ok or outcome.vm in removed:
            # what we knew may be stale: the VM may be half-replaced, or is gone
            known.pop(outcome.vm, None)
    names = [vm.name for vm in lab.vms]
    save_hosts(lab, [known[n] for n in names if n in known])


def plan_destroy(lab: Lab, facts: Facts, purge_data: bool = False) -> Plan:
    """Remove every VM marked as this lab's; unmarked VMs, even with a matching name, are never touched.

    Data disks are parked on the lab's keeper (which stays) unless ``purge_data``; then they go with their VMs,
    and so does the keeper with the disks it kept."""
    actions = []
    for vm in facts.managed:
        name = (vm.meta or {}).get("vm") or vm.name
        if vm.is_keeper:
            if purge_data:
                actions.append(RemoveVM(name, vm.vmid, vm.node, "kept data disks", purge_data=True))
            continue
        park = vm.data_disk.key if vm.data_disk and not purge_data else None
        actions.append(RemoveVM(name, vm.vmid, vm.node, "destroy", park_data=park, purge_data=purge_data))
    return Plan(tuple(actions))


def make_destroy_plan(lab: Lab, api: PveApi | None = None, purge_data: bool = False) -> Planned:
    """Facts, then the destroy plan."""
    api = api or connect(lab)
    facts = gather(api, lab)
    return Planned(lab, api, facts, plan_destroy(lab, facts, purge_data))


@dataclass(frozen=True)
class VmStatus:
    """One row of `homelab status`."""

    name: str
    vmid: int | None
    node: str | None
    state: str
    address: str | None
    version: str | None
    matches: bool
    note: str


def status(lab: Lab, api: PveApi | None = None) -> list[VmStatus]:
    """Each lab VM: state on Proxmox, address, template version, whether it matches the file."""
    planned = make_plan(lab, PlanOptions(), api, gpus=False)
    hosts = {h.name: h for h in load_hosts(lab)}
    groups = planned.plan.by_vm()
    rows = []
    live_by_name = {(v.meta or {}).get("vm") or v.name: v for v in planned.facts.managed}
    for vm in lab.vms:
        live = live_by_name.get(vm.name)
        actions = groups.get(vm.name, [])
        pending = [a.describe() for a in actions if a.changes_something]
        version = resolve_version(lab, vm, planned.facts)
        # The address recorded by the last apply, only for the VM it was learned from: never for a VM that is
        # gone, nor for one re-created since (another vmid).
        host = hosts.get(vm.name)
        rows.append(
            VmStatus(
                name=vm.name,
                vmid=live.vmid if live else None,
                node=live.node if live else None,
                state=live.status if live else "absent",
                address=host.address if host and live and host.is_for(live.vmid) else None,
                version=str((live.meta or {}).get("version")) if live and live.meta else None,
                matches=not pending and not any(a.kind == "blocked" for a in actions),
                note="; ".join(pending) if pending else ("" if not isinstance(version, str) else version),
            )
        )
    for action in planned.plan.actions:
        if action.kind == "orphan":
            rows.append(
                VmStatus(
                    action.vm,
                    getattr(action, "vmid", None),
                    getattr(action, "node", None),
                    "orphan",
                    None,
                    None,
                    False,
                    action.describe(),
                )
            )
    in_file = {vm.name for vm in lab.vms}
    for name, (keeper, key, node) in sorted(kept_data(planned.facts).items()):
        where = "apply gives it back" if name in in_file else "not in the lab file"
        note = f"data disk of a destroyed VM, kept on VM {keeper} ({key}); {where}; destroy --purge-data deletes it"
        rows.append(VmStatus(name, keeper, node, "data kept", None, None, name in in_file, note))
    return rows


__all__ = ["Planned", "carry_out", "desired_config", "make_destroy_plan", "make_plan", "record_running", "status"]
