"""Calls on one VM that more than one stage makes: start, stop, and the one delete, which re-checks the mark."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.datadisks import data_disk_of, is_keeper, kept_disks
from homelab.adapters.proxmox.marks import marks_as, parse_mark
from homelab.errors import OperationError, ProxmoxError, TaskFailed

Step = Callable[[str], None]


class HoldsData(OperationError):
    """The VM holds a data disk (or is the keeper of some) and the caller did not say to purge data."""


class NotMarked(OperationError):
    """The VM at a vmid is not the one the caller meant to delete (its mark or name differs): left alone."""

    def __init__(self, message: str, vmid: int):
        super().__init__(message)
        self.vmid = vmid


def is_missing(exc: ProxmoxError) -> bool:
    """Whether PVE's answer means there is no such VM."""
    return exc.status == 404 or "does not exist" in str(exc)


def start_vm(api: PveApi, node: str, vmid: int, timeout: float, what: str) -> None:
    """Start a VM and wait for the task; a VM already running counts as started."""
    try:
        api.run_task("POST", f"/nodes/{node}/qemu/{vmid}/status/start", node, timeout, what)
    except TaskFailed as exc:
        # A start whose answer was lost and that was sent again finds the VM running: that is success.
        if "already running" not in str(exc):
            raise


def stop_vm(api: PveApi, node: str, vmid: int, timeout: float) -> None:
    """Stop a VM (hard, like pulling the plug) and wait for the task."""
    api.run_task("POST", f"/nodes/{node}/qemu/{vmid}/status/stop", node, timeout, f"stop of {vmid}")


def shutdown_vm(api: PveApi, node: str, vmid: int, grace: int, timeout: float, what: str) -> None:
    """Shut a VM down the way its guest wants it (the guest agent, else ACPI), so that what the guest has not
    written yet reaches its disks; stopped hard after ``grace`` seconds. A VM that is not running counts."""
    try:
        upid = api.post(f"/nodes/{node}/qemu/{vmid}/status/shutdown", timeout=grace, forceStop=1)
        if isinstance(upid, str) and upid.startswith("UPID:"):
            api.wait_task(node, upid, grace + timeout, what)
    except ProxmoxError as exc:
        if "not running" not in str(exc):
            raise


def delete_vm(
    api: PveApi,
    node: str,
    vmid: int,
    lab_name: str,
    *,
    timeout: float,
    name: str | None = None,
    unmarked: bool = False,
    missing_ok: bool = False,
    step: Step | None = None,
    mark: Mapping[str, str] | None = None,
    purge_data: bool = False,
) -> bool:
    """Stop (if running) and delete a VM and its disks, only if it is provably the lab's.

    Right before deleting, the VM's config is read again (its vmid may have changed hands since it was planned)
    and its description's mark must name ``lab_name`` and hold each of ``mark``'s fields (template, version);
    with ``name``, the VM must also be called that. ``unmarked``: a VM with no mark at all counts when it has
    ``name`` (a VM a builder is still making, before anything could describe it). Otherwise NotMarked is
    raised and nothing is touched. No VM at ``vmid``: False with ``missing_ok``, else PVE's error.

    A VM that holds a data disk, or a keeper that holds kept ones, is only deleted with ``purge_data``;
    otherwise HoldsData is raised and nothing is touched: user data never goes as a side effect.
    """
    step = step or (lambda _message: None)
    fields = dict(mark or {})
    try:
        config: dict[str, Any] = api.get(f"/nodes/{node}/qemu/{vmid}/config") or {}
    except ProxmoxError as exc:
        if missing_ok and is_missing(exc):
            return False
        raise
    record = parse_mark(config.get("description"))
    if name is not None and config.get("name") != name:
        raise NotMarked(f"refusing to remove VM {vmid}: it is named {config.get('name')}, not {name}", vmid)
    if not (marks_as(record, lab_name, **fields) or (unmarked and name is not None and record is None)):
        wanted = f" ({', '.join(f'{key} {value}' for key, value in fields.items())})" if fields else ""
        raise NotMarked(
            f"refusing to remove VM {vmid}: its description does not mark it as lab {lab_name}'s{wanted}", vmid
        )
    if not purge_data:
        disk = data_disk_of(config)
        if disk is not None:
            raise HoldsData(f"refusing to remove VM {vmid}: it holds the data disk {disk.volume} ({disk.key})")
        if is_keeper(record) and kept_disks(config):
            raise HoldsData(f"refusing to remove VM {vmid}: it keeps data disks of destroyed VMs")
    if api.get(f"/nodes/{node}/qemu/{vmid}/status/current").get("status") == "running":
        step(f"stopping {vmid}")
        stop_vm(api, node, vmid, timeout)
    step(f"deleting {vmid}")
    api.run_task(
        "DELETE",
        f"/nodes/{node}/qemu/{vmid}",
        node,
        timeout,
        f"delete of {vmid}",
        purge=1,
        **{"destroy-unreferenced-disks": 1},
    )
    return True
