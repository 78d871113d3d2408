"""Backups through Proxmox: vzdump runs now, and the lab's backup job (``/cluster/backup``) for its schedule.

The job is the lab's by its id, ``homelab-<lab>``, and by the mark in its comment; homelab changes only that job.
It names the lab's VMs by vmid, so an apply that replaced a VM updates it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.marks import mark_line, parse_mark
from homelab.errors import InputError, ProxmoxError
from homelab.lab.models import Lab


@dataclass(frozen=True)
class BackupVolume:
    """One backup a vzdump made."""

    vmid: int
    volid: str
    size: int


def job_id(lab: Lab) -> str:
    """The id of the lab's backup job."""
    return f"homelab-{lab.name}"


def backup_storage(api: PveApi, lab: Lab, node: str) -> str:
    """The storage backups go to: the lab's choice, else the first of the node's storages with backup content."""
    if lab.backup.storage:
        return lab.backup.storage
    stores = api.get(f"/nodes/{node}/storage", content="backup") or []
    names = sorted(str(s["storage"]) for s in stores if s.get("active", 1))
    if not names:
        raise InputError(
            f"node {node} has no storage with backup content: set backup.storage in the lab file, or add backup "
            "content to one (`pvesm set STORAGE --content <its current types>,backup`)"
        )
    return names[0]


def run_vzdump(
    api: PveApi, lab: Lab, node: str, vmids: Iterable[int], storage: str, timeout: float
) -> list[BackupVolume]:
    """Back up the VMs of one node with vzdump (waits for the task); the backups it made."""
    ids = sorted(vmids)
    started = int(time.time()) - 1
    api.run_task(
        "POST",
        f"/nodes/{node}/vzdump",
        node,
        timeout,
        f"backup of VM(s) {', '.join(map(str, ids))}",
        vmid=",".join(map(str, ids)),
        storage=storage,
        mode=lab.backup.mode,
        compress="zstd",
        **{"notes-template": f"homelab lab {lab.name}: {{{{guestname}}}}"},
    )
    made = []
    for item in api.get(f"/nodes/{node}/storage/{storage}/content", content="backup") or []:
        if int(item.get("vmid") or 0) in ids and int(item.get("ctime") or 0) >= started:
            made.append(BackupVolume(int(item["vmid"]), str(item["volid"]), int(item.get("size") or 0)))
    return sorted(made, key=lambda b: (b.vmid, b.volid))


def desired_job(lab: Lab, vmids: Iterable[int], storage: str) -> dict[str, Any] | None:
    """The lab's backup job as PVE stores it, or None when the lab sets no schedule."""
    if not lab.backup.schedule:
        return None
    return {
        "schedule": lab.backup.schedule,
        "storage": storage,
        "vmid": ",".join(str(v) for v in sorted(vmids)),
        "mode": lab.backup.mode,
        "compress": "zstd",
        "enabled": 1,
        "prune-backups": f"keep-last={lab.backup.keep_last}",
        "comment": mark_line({"lab": lab.name, "role": "backup-job"}, compact=True),
    }


def read_job(api: PveApi, lab: Lab) -> dict[str, Any] | None:
    """The lab's backup job as PVE has it, or None."""
    try:
        jobs = api.get("/cluster/backup") or []
    except ProxmoxError as exc:
        if exc.status == 403:
            raise _job_access(exc) from exc
        raise
    for job in jobs:
        if job.get("id") == job_id(lab):
            return dict(job)
    return None


def job_difference(current: dict[str, Any] | None, wanted: dict[str, Any] | None) -> str | None:
    """What setting the lab's job changes, in words, or None when it is as wanted."""
    if wanted is None:
        if current is not None and (parse_mark(str(current.get("comment", ""))) or {}).get("role") == "backup-job":
            return "remove it (the lab file sets no backup.schedule)"
        return None
    if current is None:
        count = len([v for v in str(wanted["vmid"]).split(",") if v])
        return f"create it: {wanted['schedule']}, {count} VM(s) to {wanted['storage']}, keep {wanted['prune-backups']}"
    changed = [key for key, value in wanted.items() if str(current.get(key, "")) != str(value)]
    return ("set " + ", ".join(f"{key} {wanted[key]}" for key in changed)) if changed else None


def write_job(api: PveApi, lab: Lab, current: dict[str, Any] | None, wanted: dict[str, Any] | None) -> None:
    """Make the lab's backup job ``wanted`` (None: remove the lab's job)."""
    try:
        if wanted is None:
            if current is not None:
                api.delete(f"/cluster/backup/{job_id(lab)}")
        elif current is None:
            api.post("/cluster/backup", id=job_id(lab), **wanted)
        else:
            api.put(f"/cluster/backup/{job_id(lab)}", **wanted)
    except ProxmoxError as exc:
        if exc.status == 403:
            raise _job_access(exc) from exc
        raise


def _job_access(exc: ProxmoxError) -> InputError:
    return InputError(
        f"the API token may not read or change backup jobs ({exc}); backup.schedule needs Sys.Audit and Sys.Modify "
        "on /: grant them (pveum acl modify / ...), or drop backup.schedule and run `homelab backup` from cron"
    )
