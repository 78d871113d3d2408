"""How much disk work apply puts on each Proxmox node at once.

Full clones, disk moves, migrations, disk growth and deletes load a node's disks; each takes one of the node's
slots (``settings.concurrency`` per node) for as long as its Proxmox task runs. Everything else a VM's chain
does waits without a slot: its start task, its guest agent coming up, cloud-init finishing. A linked clone
(the default, ``settings.full_clone: false``) holds none either: PVE makes it a thin snapshot of the
template's disk (no data copied) under its own per-storage lock, and clones one template many times at once
under a shared lock (qemu-server's ``clone_vm``). So twenty VMs clone and boot all at once, instead of in
waves of four; with full clones they copy four at a time and then all boot at once.

The number of slots follows what the node reports (``GET /nodes/{node}/status``, read at most every
``REFRESH_SECS`` while work waits for the node): while its IO delay, CPU, memory or load per CPU are above
:data:`BUSY`, the node's limit halves (down to one); while it is calm the limit grows back by one per reading,
up to the setting. A token that may not read the status (it needs Sys.Audit on the node) keeps the setting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from homelab.adapters.proxmox.api import PveApi
from homelab.errors import Interrupted, ProxmoxError

REFRESH_SECS = 2.0  # real seconds between two status reads of one node
# A node is busy from these shares on: IO delay (PVE's "wait"), CPU, memory used, 1-minute load per CPU.
BUSY = {"iowait": 0.25, "cpu": 0.90, "memory": 0.92, "load": 2.0}


@dataclass(frozen=True)
class NodeLoad:
    """What a node's status says about its load (shares of 1; load is the 1-minute load average per CPU)."""

    iowait: float
    cpu: float
    memory: float
    load: float

    def busy(self) -> str | None:
        """Why the node is too busy for more disk work (None: it is not)."""
        over = [f"{name} {getattr(self, name):.0%}" for name, limit in BUSY.items() if getattr(self, name) >= limit]
        return ", ".join(over) or None


def parse_load(status: dict[str, Any]) -> NodeLoad:
    """The load figures of a ``/nodes/{node}/status`` answer (missing or unreadable figures count as idle)."""
    memory = _mapping(status.get("memory"))
    total, used = _number(memory.get("total")), _number(memory.get("used"))
    cpus = _number(_mapping(status.get("cpuinfo")).get("cpus"))
    loadavg = status.get("loadavg")
    load1 = _number(loadavg[0]) if isinstance(loadavg, list) and loadavg else 0.0
    return NodeLoad(
        iowait=_number(status.get("wait")),
        cpu=_number(status.get("cpu")),
        memory=used / total if total else 0.0,
        load=load1 / cpus if cpus else 0.0,
    )


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float:
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


@dataclass
class _Node:
    limit: int
    in_flight: int = 0
    read_at: float | None = None  # monotonic time of the last status read (None: never)
    reading: bool = False
    readable: bool = True
    busy: str | None = None
    history: list[int] = field(default_factory=list)  # the limit after each reading


class NodePacer:
    """Per-node slots for disk work, fewer while a node reports itself busy."""

    def __init__(
        self,
        api: PveApi,
        limit: int,
        cancel: threading.Event,
        note: Callable[[str, str], None] | None = None,
        refresh: float = REFRESH_SECS,
    ):
        self.api = api
        self.limit = max(1, limit)
        self.cancel = cancel
        self.note = note or (lambda vm, message: None)
        self.refresh = refresh
        self._nodes: dict[str, _Node] = {}
        self._cond = threading.Condition()

    @contextmanager
    def slot(self, node: str, vm: str) -> Iterator[None]:
        """Hold one of ``node``'s slots while the block runs (blocks until one is free); ``vm``: whose work
        it is (a change of the node's limit is reported as its step)."""
        self._acquire(node, vm)
        try:
            yield
        finally:
            with self._cond:
                self._nodes[node].in_flight -= 1
                self._cond.notify_all()

    def node_limit(self, node: str) -> int:
        """The number of slots ``node`` has now."""
        with self._cond:
            state = self._nodes.get(node)
            return state.limit if state else self.limit

    def _acquire(self, node: str, vm: str) -> None:
        while True:
            if self.cancel.is_set():
                raise Interrupted("interrupted")
            self._maybe_read(node, vm)
            with self._cond:
                state = self._nodes[node]
                first = state.readable and state.read_at is None  # the node's first reading is under way
                if not first and state.in_flight < state.limit:
                    state.in_flight += 1
                    return
                due = self.refresh - (time.monotonic() - (state.read_at or 0.0)) if state.readable else 1.0
                self._cond.wait(timeout=max(0.05, min(due, 1.0)))

    def _maybe_read(self, node: str, vm: str) -> None:
        """Read the node's status if it is due (one thread reads; the others go on with the last reading)."""
        with self._cond:
            state = self._nodes.setdefault(node, _Node(self.limit))
            due = state.read_at is None or time.monotonic() - state.read_at >= self.refresh
            if not (state.readable and due and not state.reading):
                return
            state.reading = True
        load: NodeLoad | None = None
        try:
            status = self.api.get(f"/nodes/{node}/status")
            load = parse_load(status if isinstance(status, dict) else {})
        except ProxmoxError as exc:
            if not exc.transient:
                self.note(vm, f"{node}: node status not readable ({exc}); {self.limit} disk tasks at once")
                state.readable = False
        finally:  # also when interrupted: never leave the others waiting for this reading
            with self._cond:
                state.reading = False
                state.read_at = time.monotonic()
                if load is not None:
                    self._adjust(node, vm, state, load)
                self._cond.notify_all()

    def _adjust(self, node: str, vm: str, state: _Node, load: NodeLoad) -> None:
        busy = load.busy()
        before = state.limit
        if busy:
            state.limit = max(1, state.limit // 2)
        else:
            state.limit = min(self.limit, state.limit + 1)
        state.history.append(state.limit)
        if busy and (before != state.limit or state.busy is None):
            self.note(vm, f"{node} is busy ({busy}): {state.limit} disk task(s) at once")
        elif not busy and state.busy:
            self.note(vm, f"{node} is calm again: up to {state.limit} disk tasks at once")
        state.busy = busy
