"""Node load and exact start delays in the fake Proxmox.

Disk work loads the node it runs on, as on a real PVE host: every clone, disk move, migration, resize and
create is a task of the node, and a node does only so many at full speed (``load_capacity``, a few on one SSD
or LVM-thin pool); beyond that they share its disks, and each clone takes longer (``clone_secs`` PVE seconds of
work per clone, shared out while more than ``load_capacity`` run). ``GET /nodes/{node}/status`` reports what a
real node would while that goes on: ``wait`` (the IO delay share, PVE's "IO delay"), ``cpu`` and ``loadavg``
rising with the disk tasks in flight, ``memory`` used by the running VMs, plus any background load a test
sets (``load_background``: node -> {"wait": 0.4, "cpu": ...}, other tenants of the node).

The fake records what the scheduler did: disk tasks in flight per node now and at most (``load_peak``), and
every begin and end (``load_events``); a control op ``load`` returns them.

A VM's start task takes its ``start_secs`` from the first time the fake sees the VM; the server's agent loop
used to set it, at most 20 ms late, so a start sent in that window finished at once. The default is now taken
when the start task begins (:meth:`LoadMixin.start_default`), and the guest agent's timeline is advanced
right when a client asks the agent (``guest_tick``), so neither delay depends on a polling loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

DISK_TASKS = frozenset({"qmclone", "qmmove", "qmigrate", "resize", "qmcreate"})
NODE_MEMORY = 64 * 1024**3  # bytes of RAM a fake node has
NODE_CPUS = 16
STEP = 0.25  # PVE seconds between re-sharing a node's disks among its tasks


class LoadMixin:
    """FakePve mixin: disk tasks load their node, clones stretch when it is overloaded, node status shows it."""

    clone_secs: float = 0.0  # PVE seconds a clone's disk work takes on an idle node (0: instant)
    load_capacity: int = 4  # disk tasks a node runs at full speed
    new_vm_start_secs: float = 0.0  # start_secs of a VM the fake has not timed yet (the server's start_secs)
    guest_tick: Callable[[Any], None] | None = None  # advances one VM's guest (the server's agent timeline)

    def _load_state(self) -> dict[str, Any]:
        state = self.__dict__.get("_load")
        if state is None:
            state = self.__dict__["_load"] = {"active": {}, "peak": {}, "events": [], "background": {}, "timed": set()}
        return state

    # --- disk tasks ----------------------------------------------------------------------------------------

    async def task(self, node: str, ttype: str, tid: Any, user: str, body: Any, **options: Any) -> Any:
        if ttype not in DISK_TASKS:
            return await super().task(node, ttype, tid, user, body, **options)  # type: ignore[misc]

        async def loaded() -> Any:
            self._load_begin(node, ttype, tid)
            try:
                if ttype == "qmclone":
                    await self._load_work(node, self.clone_secs)
                return await body()
            finally:
                self._load_end(node, ttype, tid)

        return await super().task(node, ttype, tid, user, loaded, **options)  # type: ignore[misc]

    def _load_begin(self, node: str, ttype: str, tid: Any) -> None:
        state = self._load_state()
        active = state["active"][node] = state["active"].get(node, 0) + 1
        state["peak"][node] = max(state["peak"].get(node, 0), active)
        state["events"].append([time.monotonic(), node, ttype, str(tid), 1])

    def _load_end(self, node: str, ttype: str, tid: Any) -> None:
        state = self._load_state()
        state["active"][node] -= 1
        state["events"].append([time.monotonic(), node, ttype, str(tid), -1])

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
        with ``clear``; returns disk tasks in flight per node, the peak and the events."""
        state = self._load_state()
        if "background" in msg:
            state["background"] = dict(msg["background"])
        if "capacity" in msg:
            self.load_capacity = int(msg["capacity"])
        if "clone_secs" in msg:
            self.clone_secs = float(msg["clone_secs"])
        answer = {"active": dict(state["active"]), "peak": dict(state["peak"]), "events": list(state["events"])}
        if msg.get("clear"):
            state["peak"], state["events"] = {}, []
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
        return await super()._agent_call(match, values)  # type: ignore[misc]
