"""The cloud-image builder: carries out a plan through the Proxmox API, no Packer needed.

Download (Proxmox verifies the checksum), create a VM whose disk is imported from the image, grow the disk,
bake the guest agent in (boot it once at the build address and install qemu-guest-agent over SSH, see
bake.py), remove the build's cloud-init settings, convert to a template. If anything fails once the VM was
created, the VM and its disks are removed again, so a failed build never leaves a half-made VM behind. Only a
VM that is provably this build's (its name and its description record) is ever removed: the vmid may have
been taken by someone else in the meantime.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.marks import marks_as, parse_mark
from homelab.adapters.ssh import first_contact
from homelab.errors import HomelabError, OperationError, ProxmoxError, TaskFailed
from homelab.lab.models import Lab
from homelab.lab.types import drive_size, parse_size
from homelab.templates.bake import BakeTemplateVm, OpenShell, SealTemplateVm, bake, seal
from homelab.templates.leftovers import BuildFailed, cleaning_up, left_alone, remove_build_vm, remove_half_built
from homelab.templates.plan import (
    BuildPlan,
    ConvertToTemplate,
    CreateTemplateVm,
    DownloadImage,
    GrowTemplateDisk,
    RemoveHalfBuilt,
    ReuseImage,
)

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


def _download(api: PveApi, lab: Lab, action: DownloadImage) -> None:
    api.run_task(
        "POST",
        f"/nodes/{action.node}/storage/{action.storage}/download-url",
        action.node,
        # a cloud image is a few hundred MiB: give it the clone timeout, the longest the lab sets
        max(lab.settings.timeouts.task, lab.settings.timeouts.clone),
        f"download of {action.url}",
        url=action.url,
        content="import",
        filename=action.filename,
        checksum=action.checksum,
        **{"checksum-algorithm": action.algorithm},
    )


def _create(api: PveApi, lab: Lab, plan: BuildPlan, action: CreateTemplateVm) -> bool:
    """Create the VM; True if a retry of the create (its first answer lost) ran into the VM it had made."""
    try:
        api.run_task(
            "POST",
            f"/nodes/{action.node}/qemu",
            action.node,
            lab.settings.timeouts.task,
            f"creating VM {action.vmid}",
            **dict(action.params),
        )
        return False
    except TaskFailed:
        raise
    except ProxmoxError as exc:
        if "already exists" not in str(exc) or not _made_by(api, lab, plan, action):
            raise
        return True


def _made_by(api: PveApi, lab: Lab, plan: BuildPlan, action: CreateTemplateVm) -> bool:
    """Whether the VM at the planned vmid is provably this build's: its name and its description's record
    (lab, template, version). PVE writes both when the create task ends, so a VM still locked by it is
    waited for first."""
    path = f"/nodes/{action.node}/qemu/{action.vmid}/config"
    deadline = time.monotonic() + lab.settings.timeouts.task
    try:
        config = api.get(path) or {}
        while config.get("lock") == "create" and time.monotonic() < deadline:
            api.retry.sleep(0.5)
            config = api.get(path) or {}
    except ProxmoxError:
        return False  # gone (its create failed) or on another node: not ours to adopt
    record = parse_mark(config.get("description"))
    return config.get("name") == action.name and marks_as(
        record, plan.lab, template=plan.template, version=plan.version
    )


def _check_adopted(api: PveApi, action: CreateTemplateVm, progress: Progress) -> None:
    """A VM of ours that a lost answer hid: carry on with it if its create finished, else fail (and so remove it)."""
    config = api.get(f"/nodes/{action.node}/qemu/{action.vmid}/config") or {}
    if config.get("lock") or not str(config.get("scsi0", "")).split(",")[0]:
        raise OperationError(f"VM {action.vmid} that this build's create left behind is not complete")
    progress(f"VM {action.vmid} was created though the answer was lost; carrying on with it")


def _grow(api: PveApi, lab: Lab, action: GrowTemplateDisk) -> None:
    config = api.get(f"/nodes/{action.node}/qemu/{action.vmid}/config") or {}
    if (drive_size(str(config.get(action.disk, ""))) or 0) >= parse_size(action.size):
        return  # the image is already this large; Proxmox never shrinks a disk
    api.run_task(
        "PUT",
        f"/nodes/{action.node}/qemu/{action.vmid}/resize",
        action.node,
        lab.settings.timeouts.task,
        f"growing {action.disk} of VM {action.vmid}",
        disk=action.disk,
        size=action.size,
    )


def _convert(api: PveApi, lab: Lab, action: ConvertToTemplate) -> None:
    api.run_task(
        "POST",
        f"/nodes/{action.node}/qemu/{action.vmid}/template",
        action.node,
        lab.settings.timeouts.task,
        f"converting VM {action.vmid} to a template",
    )


def build_cloud_image(
    api: PveApi, lab: Lab, plan: BuildPlan, progress: Progress, open_shell: OpenShell | None = None
) -> bool:
    """Carry out a cloud-image plan. Returns True if it downloaded the image (False: reused it).
    ``open_shell``: how the bake reaches the build VM (default: SSH, the host key taken on first contact).

    On any failure after the VM was created, the VM is removed (if it is still the one this build made)
    and BuildFailed says so. A failed create removes nothing: the vmid may belong to someone else's VM.
    """
    downloaded = False
    created: CreateTemplateVm | None = None
    try:
        for action in plan.actions:
            progress(action.describe())
            if isinstance(action, RemoveHalfBuilt):
                remove_half_built(api, lab, plan.template, action)
            elif isinstance(action, DownloadImage):
                _download(api, lab, action)
                downloaded = True
            elif isinstance(action, ReuseImage):
                pass
            elif isinstance(action, CreateTemplateVm):
                adopted = _create(api, lab, plan, action)
                created = action  # only now: a create refused ("already exists") by a VM not ours made nothing
                if adopted:
                    _check_adopted(api, action, progress)
            elif isinstance(action, GrowTemplateDisk):
                _grow(api, lab, action)
            elif isinstance(action, BakeTemplateVm):
                bake(api, lab, action, progress, open_shell or first_contact)
            elif isinstance(action, SealTemplateVm):
                seal(api, lab, action)
            elif isinstance(action, ConvertToTemplate):
                _convert(api, lab, action)
            else:  # pragma: no cover - a plan from plan_cloud_image holds nothing else
                raise TypeError(f"not a cloud-image action: {action!r}")
    except BaseException as exc:
        if created is None:
            raise
        reason = str(exc) if isinstance(exc, HomelabError) else f"{type(exc).__name__}: {exc}"
        progress(f"build failed ({reason}); removing VM {created.vmid}")
        with cleaning_up(plan, exc, reason):
            removed = remove_build_vm(api, lab, plan, created.node)
        if not isinstance(exc, Exception):
            raise  # KeyboardInterrupt and the like: cleaned up, now let it through
        if removed is None:
            what = left_alone(created.vmid)
        else:
            what = f"VM {created.vmid} was removed" if removed else "no VM was left behind"
        raise BuildFailed(f"building {created.name} failed: {reason}; {what}") from exc
    return downloaded
