"""What a failed build leaves behind: the VM at the planned vmid, removed only if it is provably this build's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.vms import NotMarked, delete_vm
from homelab.errors import HomelabError, OperationError
from homelab.lab.models import Lab
from homelab.templates.plan import BuildPlan, RemoveHalfBuilt


class BuildFailed(OperationError):
    """A build failed; says what was cleaned up (or what is left to clean by hand)."""


@contextmanager
def cleaning_up(plan: BuildPlan, failure: BaseException, reason: str) -> Iterator[None]:
    """Around the clean-up after a failed build (``failure``, in words ``reason``): an error while cleaning up
    becomes BuildFailed saying what is left to remove by hand."""
    try:
        yield
    except HomelabError as cleanup:
        raise BuildFailed(
            f"building {plan.name} failed: {reason}; removing VM {plan.vmid} failed too ({cleanup}): "
            f"remove it by hand (qm destroy {plan.vmid} --purge)"
        ) from failure


def remove_build_vm(api: PveApi, lab: Lab, plan: BuildPlan, node: str, *, unmarked: bool = False) -> bool | None:
    """Delete the VM a failed build made at its vmid: True once removed, False if there is none, None if the VM
    there is not this build's (its name or description record differs) and was left alone.

    ``unmarked``: a VM named as planned but not yet described counts as this build's (Packer describes the
    template only when it finishes).
    """
    try:
        return delete_vm(
            api,
            node,
            plan.vmid,
            plan.lab,
            timeout=lab.settings.timeouts.task,
            name=plan.name,
            unmarked=unmarked,
            missing_ok=True,
            mark={"template": plan.template, "version": plan.version},
        )
    except NotMarked:
        return None


def left_alone(vmid: int) -> str:
    """Why a failed build removed nothing at its vmid."""
    return f"VM {vmid} is not the one this build made (its name or description differs), so homelab left it alone"


def remove_half_built(api: PveApi, lab: Lab, template: str, action: RemoveHalfBuilt) -> None:
    """Delete a VM an interrupted build of ``template`` left, only if it is still named and marked as that
    build's (by ``lab``)."""
    delete_vm(
        api,
        action.node,
        action.vmid,
        lab.name,
        timeout=lab.settings.timeouts.task,
        name=action.name,
        missing_ok=True,
        unmarked=action.unmarked,
        mark={"template": template, "version": action.version},
    )
    if action.unmarked:
        from homelab.state.builds import record_build

        record_build(lab.name, None, action.vmid)
