"""The lab's backup job next to its VMs: what `plan` says about it and what `apply` does to it.

Only labs that set ``backup.schedule`` read or write backup jobs (reading them needs Sys.Audit on /, writing them
Sys.Modify on /); a lab without a schedule never touches them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.backups import backup_storage, desired_job, job_difference, job_id, read_job, write_job
from homelab.lab.models import Lab


@dataclass(frozen=True)
class JobChange:
    """The lab's backup job: as it is, as wanted, and the difference in words (None: as wanted)."""

    current: dict[str, Any] | None
    wanted: dict[str, Any] | None
    difference: str | None

    def describe(self, lab: Lab) -> str:
        return f"backup job {job_id(lab)}: {self.difference}"

    def for_vmids(self, lab: Lab, vmids: list[int]) -> JobChange:
        """The same job for other VMs (those an apply ended with), from what was read before: no API call."""
        storage = str((self.wanted or {}).get("storage") or lab.backup.storage)
        wanted = desired_job(lab, vmids, storage)
        return JobChange(self.current, wanted, job_difference(self.current, wanted))


def job_change(api: PveApi, lab: Lab, vmids: list[int]) -> JobChange | None:
    """The job's change for VMs ``vmids``, or None when the lab sets no schedule."""
    if not lab.backup.schedule:
        return None
    current = read_job(api, lab)
    wanted = desired_job(lab, vmids, backup_storage(api, lab, lab.proxmox.node))
    return JobChange(current, wanted, job_difference(current, wanted))


def apply_job(api: PveApi, change: JobChange, lab: Lab) -> None:
    """Make the job as wanted."""
    if change.difference:
        write_job(api, lab, change.current, change.wanted)
