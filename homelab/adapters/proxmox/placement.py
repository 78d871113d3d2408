"""Where things are on a cluster: the PVE release, which template versions sit wholly on shared storage (and
so clone straight to any node), and the one offline migration of a VM to another node.

PVE refuses a clone with ``target`` while any volume of the source, its cloud-init drive too, is on a storage
that is not shared ("can't clone VM to node ... (VM uses local storage)"); such a VM is cloned on the
template's node, as a full clone (a linked clone cannot leave its base), and then migrated offline.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.versions import TemplateVersion
from homelab.errors import OperationTimeout, ProxmoxError, TaskFailed

# qemu-server has ``ciupgrade`` since 8.0.0 and lets users other than root@pam set it since 8.0.7; every
# PVE 8.1 ships that.
CIUPGRADE_SINCE = (8, 1)
_DRIVE = re.compile(r"^(ide|sata|scsi|virtio|efidisk|tpmstate)\d+$")


def read_release(api: PveApi) -> tuple[int, int] | None:
    """The PVE release (major, minor) from ``/version`` (readable by every user), None if unreadable."""
    try:
        version = str((api.get("/version") or {}).get("version", ""))
    except ProxmoxError:
        return None
    found = re.match(r"^(\d+)\.(\d+)", version)
    return (int(found.group(1)), int(found.group(2))) if found else None


def has_ciupgrade(release: tuple[int, int] | None) -> bool:
    """Whether homelab may set ``ciupgrade`` on this release (unknown release: no, PVE's default stays)."""
    return release is not None and release >= CIUPGRADE_SINCE


def volume_storages(config: dict[str, Any]) -> set[str]:
    """The storages a VM config's volumes are on (disks, cloud-init drive, ISO images; not empty drives)."""
    found = set()
    for key, value in config.items():
        if not _DRIVE.match(key):
            continue
        volume = str(value).split(",", 1)[0]
        if volume in ("", "none", "cdrom") or ":" not in volume or volume.startswith("/"):
            continue
        found.add(volume.split(":", 1)[0])
    return found


def shared_templates(api: PveApi, versions: Iterable[TemplateVersion]) -> frozenset[int]:
    """The vmids of the template versions whose every volume is on a shared storage (one GET for the storages,
    one per version)."""
    versions = list(versions)
    if not versions:
        return frozenset()
    shared = {
        str(item.get("storage"))
        for item in api.get("/cluster/resources", type="storage") or []
        if int(item.get("shared") or 0)
    }
    out = set()
    for version in versions:
        config = api.get(f"/nodes/{version.node}/qemu/{version.vmid}/config") or {}
        if volume_storages(config) <= shared:
            out.add(version.vmid)
    return frozenset(out)


def migrate_offline(api: PveApi, node: str, vmid: int, target: str, timeout: float, what: str) -> None:
    """Move a stopped VM and its disks from ``node`` to ``target`` and wait for the task.

    A migration whose answer was lost and whose retry finds the VM already on ``target`` (its config gone from
    ``node``) counts as done once the VM there is unlocked.
    """
    try:
        api.run_task("POST", f"/nodes/{node}/qemu/{vmid}/migrate", node, timeout, what, target=target)
        return
    except TaskFailed:
        raise
    except ProxmoxError as exc:
        if "does not exist" not in str(exc):
            raise
        try:
            config = api.get(f"/nodes/{target}/qemu/{vmid}/config")
        except ProxmoxError:
            raise exc from None
    deadline = time.monotonic() + timeout
    while config.get("lock"):
        if time.monotonic() >= deadline:
            raise OperationTimeout(f"{what} did not finish within {timeout:g}s")
        api.retry.sleep(0.5)
        config = api.get(f"/nodes/{target}/qemu/{vmid}/config")
