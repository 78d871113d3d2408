"""What the executor reports and returns, and how parallel clones get their vmids."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

from homelab.adapters.proxmox.api import PveApi
from homelab.errors import ProxmoxError


class Reporter(Protocol):
    """Where progress goes (a live display, log lines, or nothing)."""

    def step(self, vm: str, message: str) -> None: ...

    def finished(self, vm: str, ok: bool, message: str) -> None: ...


class SilentReporter:
    """Progress nobody watches (library use, benchmarks)."""

    def step(self, vm: str, message: str) -> None:
        pass

    def finished(self, vm: str, ok: bool, message: str) -> None:
        pass


@dataclass
class VmOutcome:
    """What happened to one VM's chain."""

    vm: str
    ok: bool = True
    vmid: int | None = None
    node: str | None = None
    address: str | None = None
    host_key: str | None = None
    error: str | None = None
    done: list[str] = field(default_factory=list)


@dataclass
class ApplyResult:
    """Every VM's outcome, and the API calls it took."""

    outcomes: list[VmOutcome]
    calls: dict[str, int]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes)


class VmidAllocator:
    """Hands out vmids to parallel clones without collisions.

    /cluster/nextid is asked first; later ids count up locally past every id known to be used. Another
    client can still take an id between our choice and our clone (PVE's nextid race), and a VM this token may
    not see is missing from the facts: the clone then fails ("already exists" before its task, or inside it
    when the VM is on another node), the id is marked taken and /cluster/nextid asked afresh.
    """

    def __init__(self, api: PveApi, used: frozenset[int]):
        self._api = api
        self._used = set(used)
        self._next: int | None = None
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            if self._next is None:
                self._next = int(self._api.get("/cluster/nextid"))
            while self._next in self._used:
                self._next += 1
            vmid = self._next
            self._used.add(vmid)
            self._next += 1
            return vmid

    def taken(self, vmid: int) -> None:
        """``vmid`` turned out to be someone else's: never hand it out, and ask /cluster/nextid again."""
        with self._lock:
            self._used.add(vmid)
            self._next = None


def vmid_taken(exc: ProxmoxError) -> bool:
    """Whether a clone failed because its new vmid exists: refused before the task ("already exists"), or in
    the task when the VM is on another node (the cluster file system refuses the config file)."""
    text = str(exc)
    return "already exists" in text or ("qemu-server/" in text and "File exists" in text)
