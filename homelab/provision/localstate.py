"""What apply will do about this machine's state, said before it does it: a missing admin key, a missing hosts record.

homelab's admin key goes onto every VM through cloud-init. When the VMs carry one but this machine lost it, a new
key means new cloud-init settings on every VM (and a reboot of each running one): that is the user's choice
(``--new-admin-key``), shown by ``plan``, never made silently.
"""

from __future__ import annotations

from homelab.adapters.proxmox.api import PveApi
from homelab.errors import InputError
from homelab.lab.models import Lab
from homelab.provision.facts import Facts, gather
from homelab.state.adminkey import admin_key_path, read_admin_public
from homelab.state.hosts import load_hosts

NEW_KEY_FLAG = "--new-admin-key"


def has_admin_key(lab: Lab) -> bool:
    """Whether both halves of the lab's admin key are on this machine."""
    return read_admin_public(lab) is not None and admin_key_path(lab).is_file()


def vms_with_admin_key(lab: Lab, facts: Facts) -> list[str]:
    """The lab's VMs whose cloud-init carries a homelab admin key of this lab."""
    comment = f"homelab-admin-{lab.name}"
    return [
        str((live.meta or {}).get("vm") or live.name)
        for live in facts.managed
        if any(line.strip().endswith(comment) for line in (live.setting("sshkeys") or "").splitlines())
    ]


def lost_admin_key(lab: Lab, facts: Facts) -> str | None:
    """Why apply must not go on by itself: the VMs carry an admin key this machine no longer has; else None."""
    if has_admin_key(lab):
        return None
    carrying = vms_with_admin_key(lab, facts)
    if not carrying:
        return None
    path = admin_key_path(lab)
    return (
        f"homelab's admin key {path} is missing, but {len(carrying)} VM(s) carry one ({', '.join(sorted(carrying))}): "
        f"restore it (and {path.name}.pub) from a backup, or let apply make a new one and put it on those VMs "
        f"through cloud-init, rebooting the running ones: homelab apply {NEW_KEY_FLAG}"
    )


def local_state_notes(lab: Lab, facts: Facts) -> list[str]:
    """Lines for `plan`: what apply will make or re-learn because this machine lacks it."""
    notes = []
    lost = lost_admin_key(lab, facts)
    if lost:
        notes.append(lost)
    elif not has_admin_key(lab):
        notes.append(f"apply first makes homelab's admin key {admin_key_path(lab)} (cloud-init puts it on new VMs)")
    recorded = {h.name for h in load_hosts(lab, heal=False)}
    running = {str((v.meta or {}).get("vm") or v.name) for v in facts.managed if v.status == "running"}
    unknown = sorted(running - recorded)
    if unknown:
        notes.append(
            f"apply re-reads the address and host key of {len(unknown)} running VM(s) through the guest agent "
            f"(not recorded on this machine): {', '.join(unknown)}"
        )
    return notes


def check_admin_key(api: PveApi, lab: Lab, allow_new: bool) -> None:
    """Before apply or up makes the admin key: refuse (exit 2) when that would silently replace the key the VMs
    carry, unless the user chose it (``--new-admin-key``). Asks Proxmox only when the key is missing here."""
    if has_admin_key(lab) or allow_new:
        return
    lost = lost_admin_key(lab, gather(api, lab))
    if lost:
        raise InputError(lost)
