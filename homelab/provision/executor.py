"""Carry out a Plan against Proxmox: one chain of actions per VM, all chains at once, disk work paced per node."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from typing import Any

from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.labvms import boot_disk
from homelab.adapters.proxmox.marks import describe_vm, marks_as, parse_mark
from homelab.adapters.proxmox.placement import migrate_offline
from homelab.adapters.proxmox.vmconfig import encode_config
from homelab.adapters.proxmox.vms import delete_vm, shutdown_vm, start_vm, stop_vm
from homelab.errors import HomelabError, Interrupted, OperationError, OperationTimeout, ProxmoxError
from homelab.interrupts import deferring_interrupts
from homelab.lab.models import Lab
from homelab.lab.types import drive_size, format_size
from homelab.provision.datadisk import DataDisks
from homelab.provision.guestagent import GuestAgent
from homelab.provision.handover import came_up, go_back, keep_mac, replacing, unwind
from homelab.provision.outcomes import (
    ApplyResult,
    Reporter,
    SilentReporter,
    VmidAllocator,
    VmOutcome,
    vmid_taken,
)
from homelab.provision.pacing import NodePacer
from homelab.provision.plan import (
    Action,
    AddDataDisk,
    CreateVM,
    GrowDisk,
    MoveDataDisk,
    Plan,
    RemoveVM,
    ReplaceVM,
    StartVM,
    Unchanged,
    UpdateVM,
)
from homelab.state.hosts import Host

MAX_THREADS = 64
# Seconds between polls of a task that holds a node's slot, at most: a slot freed late delays the next clone,
# and these polls are bounded by the node's limit (the waits that hold no slot back off further, to 2-3 s).
SLOT_POLL = 0.25


class Executor:
    """Runs plan chains against one Proxmox."""

    def __init__(
        self,
        api: PveApi,
        lab: Lab,
        allocator: VmidAllocator,
        reporter: Reporter,
        cancel: threading.Event,
        known: dict[str, Host] | None = None,
        *,
        concurrency: int,
    ):
        self.known = known or {}
        self.pace = NodePacer(api, concurrency, cancel, reporter.step)
        self.api = api
        self.lab = lab
        self.alloc = allocator
        self.report = reporter
        self.cancel = cancel
        self.timeouts = lab.settings.timeouts
        self.agent = GuestAgent(api, lab, cancel, reporter.step)
        self.disks = DataDisks(api, lab, reporter.step, allocator.take)

    # ---------------------------------------------------------------- chains

    def run_chain(self, vm: str, actions: list[Action]) -> VmOutcome:
        outcome = VmOutcome(vm)
        try:
            for action in actions:
                self._check_cancel()
                self._run(action, outcome)
                outcome.done.append(action.describe())
            if outcome.vmid is not None and not all(isinstance(a, RemoveVM) for a in actions):
                self._learn_host(vm, actions, outcome)
            self.report.finished(vm, True, self._summary(outcome))
        except HomelabError as exc:
            outcome.ok = False
            outcome.error = str(exc)
            self.report.finished(vm, False, str(exc))
        return outcome

    def _learn_host(self, vm: str, actions: list[Action], outcome: VmOutcome) -> None:
        """The VM's address and SSH host key, for the later stages (which pin that key)."""
        if outcome.learned:
            return
        booted = any(isinstance(a, (CreateVM, ReplaceVM, StartVM)) or getattr(a, "reboot", False) for a in actions)
        assert outcome.vmid is not None
        template = next((a.template for a in actions if isinstance(a, CreateVM)), None)
        outcome.address, outcome.host_key = self.agent.learn(
            vm, outcome.node or "", outcome.vmid, booted, outcome.address, self.known.get(vm), template
        )

    def _summary(self, outcome: VmOutcome) -> str:
        if outcome.vmid is None:
            return "done"
        return f"vmid {outcome.vmid}" + (f", {outcome.address}" if outcome.address else "")

    @contextmanager
    def _slot(self, node: str, vm: str) -> Iterator[None]:
        """One of ``node``'s slots for disk work (see :mod:`homelab.provision.pacing`)."""
        with self.pace.slot(node, vm):
            self._check_cancel()
            yield

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Interrupted("interrupted")

    def _run(self, action: Action, outcome: VmOutcome) -> None:
        # Disk work (full clones, disk growth and moves, deletes) holds one of its node's slots while its task runs;
        # config writes, starts and the waits for guest agents hold none, so they never keep other VMs waiting.
        if isinstance(action, CreateVM):
            outcome.vmid, outcome.node = self._create(action, start=True)
        elif isinstance(action, ReplaceVM):
            outcome.vmid, outcome.node, outcome.address, outcome.host_key = self._replace(action)
            outcome.learned = True
        elif isinstance(action, UpdateVM):
            outcome.vmid, outcome.node = action.vmid, action.node
            self._update(action)
        elif isinstance(action, GrowDisk):
            outcome.vmid, outcome.node = action.vmid, action.node
            self.report.step(action.vm, f"growing {action.disk_key} to {format_size(action.new)}")
            self._resize(action.node, action.vmid, action.disk_key, action.new, vm=action.vm)
        elif isinstance(action, StartVM):
            outcome.vmid, outcome.node = action.vmid, action.node
            self._start(action.vm, action.node, action.vmid)
        elif isinstance(action, RemoveVM):
            with self._slot(action.node, action.vm):
                if action.park_data:
                    self.disks.park(action.vm, action.node, action.vmid, action.park_data)
                self._remove(action.vm, action.node, action.vmid, action.purge_data)
        elif isinstance(action, AddDataDisk):
            outcome.vmid, outcome.node = action.vmid, action.node
            with self._slot(action.node, action.vm):
                self.disks.attach_new(action.vm, action.node, action.vmid, action.size)
        elif isinstance(action, MoveDataDisk):
            with self._slot(action.node, action.vm):
                if action.unwind:
                    unwind(
                        self.api, self.lab, self.report.step, action.vm, action.node, action.from_vmid, action.to_vmid
                    )
                self.disks.move(action.vm, action.node, action.from_vmid, action.from_key, action.to_vmid)
        elif isinstance(action, Unchanged):
            outcome.vmid, outcome.node = action.vmid, action.node
        # Orphan and Blocked change nothing.

    # ----------------------------------------------------------------- steps

    def _create(self, action: CreateVM, start: bool) -> tuple[int, str]:
        vmid, node = self._clone(action)
        if node != action.node:
            self._check_cancel()
            self.report.step(action.vm, f"migrating {vmid} from {node} to {action.node} (offline)")
            with self._slot(node, action.vm):
                migrate_offline(self.api, node, vmid, action.node, self.timeouts.clone, f"migration of {action.vm}")
        node = action.node
        self._check_cancel()
        self.report.step(action.vm, "configuring cloud-init, cores, memory, tags")
        self.api.put(f"/nodes/{node}/qemu/{vmid}/config", **encode_config(action.config))
        if action.adopt:
            with self._slot(node, action.vm):
                self.disks.adopt(action.vm, node, vmid, *action.adopt)
        elif action.data_disk:
            with self._slot(node, action.vm):
                self.disks.attach_new(action.vm, node, vmid, action.data_disk)
        config = self.api.get(f"/nodes/{node}/qemu/{vmid}/config")
        disk_key = boot_disk(config)
        if disk_key is None:
            raise OperationError(f"{action.vm}: the clone of {action.template.name} has no boot disk")
        self.report.step(action.vm, f"growing {disk_key} to {format_size(action.disk)}")
        self._resize(node, vmid, disk_key, action.disk, only_if_larger=str(config[disk_key]), vm=action.vm)
        if start:
            self._check_cancel()
            self._start(action.vm, node, vmid)
        return vmid, node

    def _clone(self, action: CreateVM) -> tuple[int, str]:
        """Clone the template version; returns (vmid, the node the clone is on).

        A vmid someone else took meanwhile (PVE refuses it before the task, or, when it is on another node,
        inside the task) is given up for a fresh one from /cluster/nextid. A clone of ours whose answer was
        lost and that the retry ran into is adopted once its task is done.
        """
        tpl = action.template
        creating = describe_vm(self.lab.name, action.vm, tpl.template, tpl.version, "creating")
        direct = action.node if action.node != tpl.node and not action.migrate else None
        for _ in range(20):
            vmid = action.vmid or self.alloc.take()
            self.report.step(action.vm, f"cloning {tpl.name} -> {vmid}" + (f" on {tpl.node}" if action.migrate else ""))
            params: dict[str, Any] = dict(newid=vmid, name=action.vm, description=creating, full=int(action.full))
            if action.full:
                params["storage"] = self.lab.proxmox.storage
            if direct:
                params["target"] = direct
            if self.lab.proxmox.pool:
                params["pool"] = self.lab.proxmox.pool
            try:
                # A full clone copies the disks and loads the template's node: it holds one of its slots. A linked
                # clone is a thin snapshot PVE takes under its own storage lock: it holds none.
                with self._slot(tpl.node, action.vm) if action.full else nullcontext():
                    upid = self.api.post(f"/nodes/{tpl.node}/qemu/{tpl.vmid}/clone", **params)
                    self.api.wait_task(tpl.node, upid, self.timeouts.clone, f"clone of {action.vm}", max_poll=SLOT_POLL)
                return vmid, direct or tpl.node
            except ProxmoxError as exc:
                if not vmid_taken(exc):
                    raise
                node = self._ours_in_creation(vmid, action)
                if node is not None:
                    self._wait_unlocked(node, vmid, f"clone of {action.vm}")
                    return vmid, node
                if action.vmid:
                    raise
                self.alloc.taken(vmid)
        raise OperationError(f"{action.vm}: no free vmid after 20 tries")

    def _wait_unlocked(self, node: str, vmid: int, what: str) -> None:
        """Wait until the VM's config lock (e.g. 'clone') is gone."""
        deadline = time.monotonic() + self.timeouts.clone
        delay = 0.1
        while self.api.get(f"/nodes/{node}/qemu/{vmid}/config").get("lock"):
            self._check_cancel()
            if time.monotonic() >= deadline:
                raise OperationTimeout(f"{what} did not finish within {self.timeouts.clone}s")
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def _ours_in_creation(self, vmid: int, action: CreateVM) -> str | None:
        """The node where the VM at ``vmid`` is this lab's clone of ``action.vm`` still being created, if it is."""
        for node in dict.fromkeys((action.template.node, action.node)):
            try:
                config = self.api.get(f"/nodes/{node}/qemu/{vmid}/config")
            except ProxmoxError:
                continue
            if marks_as(parse_mark(config.get("description")), self.lab.name, vm=action.vm, state="creating"):
                return node
        return None

    def _resize(
        self, node: str, vmid: int, disk_key: str, size: int, only_if_larger: str | None = None, *, vm: str
    ) -> None:
        if only_if_larger is not None:
            current = drive_size(only_if_larger)
            if current is not None and current >= size:
                return
        with self._slot(node, vm):
            upid = self.api.put(f"/nodes/{node}/qemu/{vmid}/resize", disk=disk_key, size=format_size(size))
            if isinstance(upid, str) and upid.startswith("UPID:"):
                self.api.wait_task(node, upid, self.timeouts.task, f"disk resize of {vmid}", max_poll=SLOT_POLL)

    def _start(self, vm: str, node: str, vmid: int) -> None:
        self.report.step(vm, "starting")
        start_vm(self.api, node, vmid, self.timeouts.start, f"start of {vm}")

    def _stop(self, vm: str, node: str, vmid: int) -> None:
        self.report.step(vm, f"stopping {vmid}")
        stop_vm(self.api, node, vmid, self.timeouts.task)

    def _shut_down(self, vm: str, node: str, vmid: int) -> None:
        """A VM whose data disk moves on: shut down cleanly, so the guest's unwritten data reaches the disk."""
        self.report.step(vm, f"shutting {vmid} down")
        grace = min(self.timeouts.start, 300)
        shutdown_vm(self.api, node, vmid, grace, self.timeouts.task, f"shutdown of {vmid}")

    def _update(self, action: UpdateVM) -> None:
        self.report.step(action.vm, "updating " + ", ".join(c.key for c in action.changes))
        config = encode_config({c.key: c.new for c in action.changes})
        if "description" in config:
            tpl_meta = self._current_meta(action.node, action.vmid)
            config["description"] = describe_vm(
                self.lab.name, action.vm, str(tpl_meta.get("template")), str(tpl_meta.get("version")), "ready"
            )
        self.api.put(f"/nodes/{action.node}/qemu/{action.vmid}/config", **config)
        if action.reboot:
            self.report.step(action.vm, "rebooting to apply changes")
            self.api.run_task(
                "POST",
                f"/nodes/{action.node}/qemu/{action.vmid}/status/reboot",
                action.node,
                self.timeouts.start,
                f"reboot of {action.vm}",
            )

    def _current_meta(self, node: str, vmid: int) -> dict[str, Any]:
        config = self.api.get(f"/nodes/{node}/qemu/{vmid}/config")
        return parse_mark(config.get("description")) or {}

    def _remove(self, vm: str, node: str, vmid: int, purge_data: bool = False) -> None:
        # delete_vm re-checks the mark right before deleting: never a VM this lab does not manage, and never
        # one that holds a data disk unless the user said --purge-data.
        step = lambda m: self.report.step(vm, m)  # noqa: E731
        delete_vm(self.api, node, vmid, self.lab.name, timeout=self.timeouts.task, step=step, purge_data=purge_data)

    def _replace(self, action: ReplaceVM) -> tuple[int, str, str | None, str | None]:
        """Blue/green: the new VM is built beside the old; the old is removed only once the new is up (cloud-init
        finished, address and host key read): returns its vmid, node, address and host key. The new VM is marked
        "replacing" until then, so a run killed in between leaves the next run knowing the old one ran well.

        With a static IP or a data disk both cannot run at once: the new VM is fully built but stopped, the old
        one shut down cleanly (its guest writes out what it holds; hard-stopped after a grace period) and its data
        disk moved over, the new one started. If it does not come up, or the user interrupts, it goes back
        (handover.go_back): the new VM is stopped before the old one starts again.
        """
        create, old = replacing(action.create, self.lab.name), (action.vm, action.old_node, action.old_vmid)
        handover = action.static_ip or action.data_from is not None
        vmid, node = self._create(create, start=not handover)
        try:
            if handover:
                keep_mac(self.api, self.report.step, action, node, vmid)
                self._shut_down(*old)
                with self._slot(node, action.vm):
                    if action.drops_snapshots:
                        self.disks.drop_snapshots(*old)
                    if action.data_from:
                        self.disks.move(action.vm, node, action.old_vmid, action.data_from, vmid)
                        if action.snapshot_first:
                            self.disks.snapshot_first(action.vm, node, vmid, action.old_vmid)
                self._start(action.vm, node, vmid)
            address, key = self.agent.learn(action.vm, node, vmid, True, None, None, create.template)
        except HomelabError as exc:
            go_back(self.api, self.lab, self.report.step, action, node, vmid, exc, handover)
            raise
        came_up(self.api, action, node, vmid)
        with self._slot(action.old_node, action.vm):
            self._remove(*old)
        return vmid, node, address, key


def apply_plan(
    api: PveApi,
    lab: Lab,
    plan: Plan,
    used_vmids: frozenset[int],
    reporter: Reporter | None = None,
    concurrency: int | None = None,
    known: dict[str, Host] | None = None,
) -> ApplyResult:
    """Run every VM's chain at once, with at most ``concurrency`` disk tasks per node (None: the lab's
    ``settings.concurrency``, the one place that default is taken; fewer while a node reports itself busy).
    Ctrl-C stops chains at their next step."""
    if plan.blocked:
        raise OperationError("; ".join(b.describe() for b in plan.blocked))
    started = time.monotonic()
    reporter = reporter or SilentReporter()
    cancel = threading.Event()
    slots = concurrency or lab.settings.concurrency
    executor = Executor(api, lab, VmidAllocator(api, used_vmids), reporter, cancel, known, concurrency=slots)
    chains = list(plan.by_vm().items())
    # A thread per chain (capped): threads mostly wait; the nodes' slots bound the load on Proxmox.
    workers = max(1, min(len(chains), MAX_THREADS))
    outcomes: dict[str, VmOutcome] = {}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="homelab-vm")
    try:
        # Ctrl-C sets the chains' events, and the KeyboardInterrupt comes once every chain has stopped: never in
        # the middle of handing chains to the pool or of waiting for them (homelab.interrupts says why).
        with deferring_interrupts(cancel, api.cancel):
            futures: dict[Future[VmOutcome], str] = {
                pool.submit(executor.run_chain, vm, acts): vm for vm, acts in chains
            }
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in done:
                    outcomes[futures[fut]] = fut.result()
    finally:
        pool.shutdown(wait=True)
    ordered = [outcomes[vm] for vm, _ in chains if vm in outcomes]
    return ApplyResult(ordered, dict(api.calls), time.monotonic() - started)


__all__ = ["ApplyResult", "Executor", "Reporter", "SilentReporter", "VmOutcome", "VmidAllocator", "apply_plan"]
