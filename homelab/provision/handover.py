"""Going back from a replacement that did not finish: the new VM stops before the old one starts.

A blue/green replacement of a VM with a static address (or a data disk) hands over: the old VM stops, its data
disk moves to the new one, the new one starts. If the new VM does not come up, or the user presses Ctrl-C at any
point of that, the replacement goes back: the new VM is stopped (once every task still running on it has ended,
so a start a Ctrl-C cut short cannot bring it up again later), the data disk moves back (the new VM rolled back
first to the snapshot taken before its first start, if there is one: the old VM gets back what it left), and
only then the old VM starts. These calls use a shielded connection (PveApi.shielded): the Ctrl-C that stopped
the replacement must not stop its rollback half-way. A run killed outright (SIGKILL) cannot go back; the new
VM's mark ("replacing") tells the next run that the old VM is the one that last ran well
(adapters.proxmox.labvms.current_and_leftovers).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.datadisks import DATA_KEY
from homelab.adapters.proxmox.marks import describe_vm
from homelab.adapters.proxmox.snapshots import rollback, snapshots
from homelab.adapters.proxmox.vmconfig import with_mac_of
from homelab.adapters.proxmox.vms import start_vm, stop_vm
from homelab.errors import HomelabError, Interrupted, OperationTimeout, TaskFailed
from homelab.lab.models import Lab
from homelab.provision.actions import CreateVM, ReplaceVM
from homelab.provision.datadisk import DataDisks

Step = Callable[[str, str], None]


def replacing(create: CreateVM, lab: str) -> CreateVM:
    """The replacement's new VM as it is made: marked "replacing" until it came up (:func:`came_up`)."""
    version = create.template
    mark = describe_vm(lab, create.vm, version.template, version.version, "replacing")
    return replace(create, config=dict(create.config, description=mark))


def came_up(api: PveApi, action: ReplaceVM, node: str, vmid: int) -> None:
    """Mark the new VM ready: from now on it is the one that last ran well, and the old one may go."""
    api.put(f"/nodes/{node}/qemu/{vmid}/config", description=action.create.config["description"])


def keep_mac(api: PveApi, step: Step, action: ReplaceVM, node: str, vmid: int) -> None:
    """Give the handover's new VM the old one's MAC address (they never run at once): a DHCP reservation still
    matches, and neighbours whose ARP cache names the old VM's MAC reach the new one at once instead of after
    their entry has failed (about 10 s on Linux, longer on some routers)."""
    old = api.get(f"/nodes/{action.old_node}/qemu/{action.old_vmid}/config") or {}
    new = api.get(f"/nodes/{node}/qemu/{vmid}/config") or {}
    net = with_mac_of(str(old.get("net0", "")), str(new.get("net0", "")))
    if net is not None:
        step(action.vm, f"giving {vmid} the MAC address of {action.old_vmid}")
        api.put(f"/nodes/{node}/qemu/{vmid}/config", net0=net)


def why(cause: BaseException, vmid: int) -> str:
    """What stopped a replacement, in words: the user's Ctrl-C, or the new VM that did not come up."""
    if isinstance(cause, Interrupted):
        return f"interrupted while replacing it with {vmid}"
    return f"new VM {vmid} did not come up ({cause})"


def wait_idle(api: PveApi, node: str, vmid: int, timeout: float) -> None:
    """Wait until no task runs on the VM (a start, stop or disk move that a Ctrl-C stopped waiting for)."""
    deadline = time.monotonic() + timeout
    while any(
        "endtime" not in task
        for task in api.get(f"/nodes/{node}/tasks", vmid=vmid, source="active", limit=50) or []
        if str(task.get("id")) == str(vmid)
    ):
        if time.monotonic() >= deadline:
            raise OperationTimeout(f"a task on VM {vmid} did not end within {timeout:g}s")
        time.sleep(0.1)


def unwind(api: PveApi, lab: Lab, step: Step, vm: str, node: str, vmid: int, old: int) -> None:
    """Before an unfinished replacement's new VM gives the data disk back to ``old``: roll it back to the snapshot
    taken before its first start (the data as the old VM left it) and drop its snapshots, which PVE's disk move
    refuses to leave behind. Nothing to do for a new VM without snapshots."""
    taken = snapshots(api, node, vmid)
    if taken:
        if api.get(f"/nodes/{node}/qemu/{vmid}/status/current").get("status") == "running":
            step(vm, f"stopping {vmid}")
            stop_vm(api, node, vmid, lab.settings.timeouts.task)
        step(vm, f"rolling {vmid} back to {taken[0].name}: the data disk goes back as {old} left it")
        rollback(api, node, vmid, taken[0].name, lab.settings.timeouts.task, start=False)
        DataDisks(api, lab, step, lambda: 0).drop_snapshots(vm, node, vmid)


def _stopped(api: PveApi, node: str, vmid: int, timeout: float) -> None:
    try:
        stop_vm(api, node, vmid, timeout)
    except TaskFailed as exc:
        if "not running" not in str(exc):
            raise


def go_back(
    api: PveApi, lab: Lab, step: Step, action: ReplaceVM, node: str, vmid: int, cause: BaseException, handover: bool
) -> None:
    """After ``cause`` stopped the replacement by the new VM ``vmid``: stop it; with a ``handover`` (the old VM
    was or may have been stopped), move the data disk back and start the old VM. A failure here is reported and
    left to the next run, which keeps the old VM (never raised over ``cause``)."""
    api = api.shielded()
    old = action.old_vmid
    timeouts = lab.settings.timeouts
    step(
        action.vm,
        f"{why(cause, vmid)}; going back to {old}" + (", stopping " + str(vmid) + " first" if handover else ""),
    )
    try:
        for busy in (vmid, old) if handover else (vmid,):
            wait_idle(api, node if busy == vmid else action.old_node, busy, timeouts.task)
        _stopped(api, node, vmid, timeouts.task)
        if not handover:
            return
        if action.data_from and DATA_KEY in (api.get(f"/nodes/{node}/qemu/{vmid}/config") or {}):
            unwind(api, lab, step, action.vm, node, vmid, old)
            DataDisks(api, lab, step, lambda: 0).move(action.vm, node, vmid, DATA_KEY, old, action.data_from)
        step(action.vm, f"starting {old} again")
        start_vm(api, action.old_node, old, timeouts.start, f"start of {action.vm}")
    except HomelabError as failed:
        step(action.vm, f"could not go back to {old} ({failed}); the next run keeps {old} and removes {vmid}")
