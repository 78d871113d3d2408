"""One run per lab at a time on this machine: a file lock in the lab's state folder.

Commands that change the lab (apply, up, destroy, template build/prune, deploy, keys rotate) hold it for their
whole run. It is a kernel lock (flock) on ``<state dir>/lock``: the kernel releases it on any exit, SIGKILL
included, so a lock left by a dead process is simply free again; there is nothing stale to clean up. The file
also records who holds it (host, pid, command, since when), which is what a second run shows while it waits.

This protects runs on one machine (and machines sharing a state folder over a file system that honours
flock). Two machines with their own state folders are not serialised by it; the VM plan stops a run that sees
another one's work in progress on Proxmox (a VM of the lab locked by a clone), see homelab.provision.plan.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from homelab.errors import HomelabError
from homelab.paths import state_dir

Say = Callable[[str], None]


class LabBusy(HomelabError):
    """Another run holds the lab's lock and the user asked not to wait (--no-wait). Exit code 2."""

    exit_code = 2


@dataclass(frozen=True)
class Holder:
    """Who holds a lab's lock, as the holder recorded it."""

    host: str
    pid: int
    command: str
    since: float

    def describe(self, now: float | None = None) -> str:
        """``homelab apply (pid 123 on host1, since 12:03:04, 5s ago)``."""
        now = time.time() if now is None else now
        when = datetime.fromtimestamp(self.since, UTC).astimezone().strftime("%H:%M:%S")
        return f"{self.command} (pid {self.pid} on {self.host}, since {when}, {max(0, now - self.since):.0f}s ago)"


def lock_file(lab_name: str) -> Path:
    """The lab's lock file."""
    return state_dir(lab_name) / "lock"


def read_holder(path: Path) -> Holder | None:
    """What the lock file says about its holder; None when it says nothing readable (being written, or free)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Holder(str(data["host"]), int(data["pid"]), str(data["command"]), float(data["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextmanager
def lab_lock(lab_name: str, command: str, *, wait: bool = True, say: Say | None = None) -> Iterator[Holder]:
    """Hold the lab's lock for the block. Held elsewhere: ``wait`` for it (after one line through ``say`` naming
    the holder), or raise LabBusy at once."""
    path = lock_file(lab_name)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(path)
            who = holder.describe() if holder else "another homelab process"
            if not wait:
                raise LabBusy(
                    f"lab {lab_name} is busy: {who} holds {path}; run again later (or without --no-wait)"
                ) from None
            if say:
                say(f"lab {lab_name} is busy: {who} holds it; waiting for it to finish (Ctrl-C to stop)")
            fcntl.flock(fd, fcntl.LOCK_EX)
        me = Holder(socket.gethostname(), os.getpid(), command, time.time())
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me.__dict__).encode("utf-8") + b"\n", 0)
        try:
            yield me
        finally:
            os.ftruncate(fd, 0)  # free again: nobody to name
    finally:
        os.close(fd)  # closing releases the flock
