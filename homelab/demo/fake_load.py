"""Node load and exact start delays in the fake Proxmox.

Disk work loads the node it runs on, as on a real PVE host: every full clone, disk move, migration, resize and
create is a task of the node, and a node does only so many at full speed (``load_capacity``, a few on one SSD
or LVM-thin pool); beyond that they share its disks, and each full clone takes longer (``clone_secs`` plus
``copy_secs_per_gib`` per GiB of its disks, PVE seconds shared out while more than ``load_capacity`` run).

A linked clone (``full=0``, the default from a template) copies no data, as in qemu-server's ``clone_vm``: it
takes the template's config lock shared (concurrent clones of one template are allowed) and asks the storage
for a thin snapshot of each base volume (pve-storage's ``vdisk_clone``: ``lvcreate -s`` on LVM-thin, ``zfs
clone`` on ZFS, a qcow2 backed by the base file), under the storage's lock (``cluster_lock_storage``: a lock
file per storage on the node, or the cluster-wide lock of a shared storage). So linked clones run side by
side, but their snapshot steps take turns: ``clone_lock_secs`` PVE seconds each under that lock, the rest of
their ``clone_secs`` (worker fork, config writes) at once. They add no IO load to the node.

``GET /nodes/{node}/status`` reports what a real node would while disk work goes on: ``wait`` (the IO delay
share, PVE's "IO delay"), ``cpu`` and ``loadavg`` rising with the disk tasks in flight, ``memory`` used by
the running VMs, plus any background load a test sets (``load_background``: node -> {"wait": 0.4, "cpu":
...}, other tenants of the node).

The fake records what the scheduler did: disk tasks in flight per node now and at most (``load_peak``), and
every begin and end (``load_events``); a control op ``load`` returns them.

A VM's start task takes its ``start_secs`` from the first time the fake sees the VM; the server's agent loop
used to set it, at most 20 ms late, so a start sent in that window finished at once. The default is now taken
when the start task begins (:meth:`LoadMixin.start_default`), and the guest agent's timeline is advanced
right when a client asks the agent (``guest_tick``), so neither delay depends on a polling loop. An agent call
to a running VM whose agent is not up yet takes PVE's guest-ping timeout (3 s) before it fails, as on PVE.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

from homelab.lab.types import drive_size

DISK_TASKS = frozenset({"qmclone", "qmmove", "qmigrate", "resize", "qmcreate"})
GIB = 1024**3
NODE_MEMORY = 64 * 1024**3  # bytes of RAM a fake node has
NODE_CPUS = 16
STEP = 0.25  # PVE seconds between re-sharing a node's disks among its tasks (and re-checking an agent)
GUEST_PING = 3.0  # PVE seconds PVE waits for a guest agent's answer to guest-ping


class LoadMixin:
    """FakePve mixin: disk tasks load their node, clones stretch when it is overloaded, node status shows it."""

    clone_secs: float = 0.0  # PVE seconds a clone task takes on an idle node, besides copying data (0: instant)
    clone_lock_secs: float = 0.0  # PVE seconds of a linked clone's snapshot step, under the storage's lock
    copy_secs_per_gib: float = 0.0  # PVE seconds a full clone takes per GiB it copies, on an idle node
    load_capacity: int = 4  # disk tasks a node runs at full speed
    new_vm_start_secs: float = 0.0  # start_secs of a VM the fake has not timed yet (the server's start_secs)
    guest_tick: Callable[[Any], None] | None = None  # advances one VM's guest (the server's agent timeline)

    def _load_state(self) -> dict[str, Any]:
        state = self.__dict__.get("_load")
        if state is None:
            state = self.__dict__["_load"] = {
                "active": {}, "peak": {}, "events": [], "background": {}, "timed": set(),
                "clones": {}, "clones_peak": {}, "kinds": {}, "locks": {},
            }  # fmt: skip
        return state

    # --- disk tasks ----------------------------------------------------------------------------------------

    async def task(self, node: str, ttype: str, tid: Any, user: str, body: Any, **options: Any) -> Any:
        if ttype not in DISK_TASKS:
            return await super().task(node, ttype, tid, user, body, **options)  # type: ignore[misc]

        new = options.get("vm")
        kind = self._load_state()["kinds"].pop(getattr(new, "vmid", None), None) if ttype == "qmclone" else None
        linked, lock_key, gib = (not kind[0], kind[1], kind[2]) if kind else (False, None, 0.0)

        async def loaded() -> Any:
            self._load_begin(node, ttype, tid, heavy=not linked)
            try:
                if linked:
                    await self._linked_clone_work(node, lock_key)
                elif ttype == "qmclone":
                    await self._load_work(node, self.clone_secs + self.copy_secs_per_gib * gib)
                return await body()
            finally:
                self._load_end(node, ttype, tid, heavy=not linked)

        return await super().task(node, ttype, tid, user, loaded, **options)  # type: ignore[misc]

    async def _qm_clone(self, v: dict[str, Any], user: str) -> Any:
        """Note whether the clone is linked or full (PVE's default: linked from a template), which storage lock
        its snapshots take and how many GiB a full clone copies; the task above reads the note."""
        src = self.find(v["node"], int(v["vmid"]))  # type: ignore[attr-defined]
        full = v.get("full")
        full = (not src.template) if full is None else str(full).lower() not in ("0", "false", "")
        config = src.snapshots[v["snapname"]] if v.get("snapname") in src.snapshots else src.config
        disks = [str(value) for key, value in config.items() if _is_disk(key, str(value))]
        gib = sum((drive_size(d) or 0) for d in disks) / GIB
        storage = str(v.get("storage") or (disks[0].split(":", 1)[0] if disks else "local"))
        store = getattr(self, "storages", {}).get(storage) or {}
        lock = (None if store.get("shared") else str(v["node"]), storage)  # a shared storage locks cluster-wide
        self._load_state()["kinds"][int(v["newid"])] = (full, lock, gib)
        return await super()._qm_clone(v, user)  # type: ignore[misc]

    async def _linked_clone_work(self, node: str, lock_key: Any) -> None:
        """A linked clone: its snapshot step under the storage's lock (one at a time), the rest side by side."""
        scale = float(getattr(self, "time_scale", 0))
        if not scale:
            return
        # The lock's turns are booked on the clock, not slept one after another: a busy event loop wakes each
        # sleeper late, and chained sleeps would add that lateness once per clone (PVE's lvcreate does not wait
        # for pveproxy's other requests).
        free_at = self._load_state()["locks"]
        hold = min(self.clone_lock_secs, self.clone_secs)
        now = time.monotonic()
        turn_ends = max(now, free_at.get(lock_key, 0.0)) + hold * scale
        free_at[lock_key] = turn_ends
        await asyncio.sleep(turn_ends - now + (self.clone_secs - hold) * scale)

    def _load_begin(self, node: str, ttype: str, tid: Any, heavy: bool = True) -> None:
        """Count a task in (``heavy``: it loads the node's disks; a linked clone does not)."""
        state = self._load_state()
        if heavy:
            active = state["active"][node] = state["active"].get(node, 0) + 1
            state["peak"][node] = max(state["peak"].get(node, 0), active)
        if ttype == "qmclone":
            clones = state["clones"][node] = state["clones"].get(node, 0) + 1
            state["clones_peak"][node] = max(state["clones_peak"].get(node, 0), clones)
        state["events"].append([time.monotonic(), node, ttype, str(tid), 1, heavy])

    def _load_end(self, node: str, ttype: str, tid: Any, heavy: bool = True) -> None:
        state = self._load_state()
        if heavy:
            state["active"][node] -= 1
        if ttype == "qmclone":
            state["clones"][node] -= 1
        state["events"].append([time.monotonic(), node, ttype, str(tid), -1, heavy])

    async def _load_work(self, node: str, secs: float) -> None:
        """Do ``secs`` PVE seconds of disk work on ``node``, at a share of its disks while it is overloaded."""
        scale = float(getattr(self, "time_scale", 0))
        remaining = float(secs)
        while remaining > 0 and scale:
            share = min(1.0, self.load_capacity / max(1, self._load_state()["active"].get(node, 0)))
            step = min(STEP, remaining / share)
            await asyncio.sleep(step * scale)
            remaining -= step * share

    # --- what the node reports -----------------------------------------------------------------------------

    def node_load(self, node: str) -> dict[str, Any]:
        """The load figures of ``node``'s status: IO delay and CPU from its disk tasks, memory from its VMs."""
        state = self._load_state()
        active = state["active"].get(node, 0)
        extra = state["background"].get(node, {})
        pressure = active / max(1, self.load_capacity)
        wait = min(0.95, 0.01 + 0.15 * pressure + float(extra.get("wait", 0)))
        cpu = min(1.0, 0.02 + 0.05 * pressure + float(extra.get("cpu", 0)))
        running = [v for v in getattr(self, "vms", []) if v.node == node and v.status == "running"]
        used = 2 * 1024**3 + sum(int(v.config.get("memory", 512)) * 1024**2 for v in running)
        used = min(NODE_MEMORY, used + int(float(extra.get("memory", 0)) * NODE_MEMORY))
        load1 = active + len(running) * 0.1 + float(extra.get("load", 0)) * NODE_CPUS
        return {
            "cpu": round(cpu, 4),
            "wait": round(wait, 4),
            "loadavg": [f"{load1:.2f}", f"{load1 * 0.8:.2f}", f"{load1 * 0.5:.2f}"],
            "memory": {"total": NODE_MEMORY, "used": used, "free": NODE_MEMORY - used, "available": NODE_MEMORY - used},
            "cpuinfo": {"cpus": NODE_CPUS, "cores": NODE_CPUS // 2, "sockets": 1, "model": "fake"},
        }

    def _routes_load(self) -> list[tuple[str, str, Any]]:
        return [("GET", "/nodes/{node}/status", self._load_node_status)]

    async def _load_node_status(self, v: dict[str, Any], user: str) -> Any:
        node = str(v["node"])
        return self._complete("/nodes/{node}/status", self.node_load(node), node=node)  # type: ignore[attr-defined]

    def load_op(self, msg: dict[str, Any]) -> dict[str, Any]:
        """The control op ``load``: set ``background``/``capacity``/``clone_secs`` if given; clear the record
        with ``clear``; returns disk tasks in flight per node, their peak (``peak``: tasks that load the disks;
        ``clones_peak``: clone tasks of either kind) and the events ([time, node, type, id, +1/-1, heavy])."""
        state = self._load_state()
        if "background" in msg:
            state["background"] = dict(msg["background"])
        if "capacity" in msg:
            self.load_capacity = int(msg["capacity"])
        if "clone_secs" in msg:
            self.clone_secs = float(msg["clone_secs"])
        answer = {
            "active": dict(state["active"]),
            "peak": dict(state["peak"]),
            "clones_peak": dict(state["clones_peak"]),
            "events": list(state["events"]),
        }
        if msg.get("clear"):
            state["peak"], state["clones_peak"], state["events"] = {}, {}, []
        return answer

    # --- exact delays --------------------------------------------------------------------------------------

    def start_default(self, vm: Any) -> None:
        """Give a VM the server's start delay the first time the fake times it (a VM set to 0 later stays 0)."""
        timed = self._load_state()["timed"]
        if vm.vmid in timed:
            return
        timed.add(vm.vmid)
        if not vm.template and not vm.start_secs:
            vm.start_secs = self.new_vm_start_secs

    async def _do_start(self, vm: Any, user: str, p: dict[str, Any]) -> Any:
        self.start_default(vm)
        return await super()._do_start(vm, user, p)  # type: ignore[misc]

    async def _agent_call(self, match: Any, values: dict[str, Any]) -> Any:
        vm = self.vm(int(values.get("vmid", 0)))  # type: ignore[attr-defined]
        if vm is not None and self.guest_tick is not None:
            self.guest_tick(vm)  # the agent's state as of this very moment, not as of the last loop turn
            await self._guest_ping(vm)
        return await super()._agent_call(match, values)  # type: ignore[misc]

    async def _guest_ping(self, vm: Any) -> None:
        """PVE pings the agent before each command (qemu-server's ``qga_check_running``: ``guest-ping`` with a
        3 s timeout): while a running VM's agent is not up yet, the call answers "not running" only after that
        timeout, or goes on as soon as the agent comes up within it."""
        scale = float(getattr(self, "time_scale", 0))
        waited = 0.0
        while scale and vm.status == "running" and vm.agent is None and not vm.agent_hangs and waited < GUEST_PING:
            step = min(STEP, GUEST_PING - waited)
            await asyncio.sleep(step * scale)
            waited += step
            if self.guest_tick is not None:
                self.guest_tick(vm)


def _is_disk(key: str, value: str) -> bool:
    """A drive of the config with a volume of its own (not a cdrom, not a cloud-init drive, not passed through)."""
    if not re.fullmatch(r"(ide|sata|scsi|virtio|efidisk|tpmstate)\d+", key):
        return False
    volume = value.split(",", 1)[0]
    return ":" in volume and "media=cdrom" not in value and "cloudinit" not in volume
