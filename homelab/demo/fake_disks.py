"""The fake's disk reassignment: ``POST /nodes/{node}/qemu/{vmid}/move_disk`` with ``target-vmid``.

fakepve 0.5.0 answers move_disk from the schema only. This mixin moves the volume to the other VM the way
qemu-server's reassign does (PVE 7.2+): both VMs on one node, neither a template nor locked, the source stopped
(unless the disk is an unusedN entry), the target slot free, the volume renamed to the target's vmid, no copy.
Moving to another storage (``storage``) is not modelled and says so.

It also makes a config update allocate a new disk (``scsi1: local-lvm:50``) and size an existing volume the way
qemu-server's create_disks does, hot-plugged into a running VM as PVE's default ``hotplug`` (disk) allows;
fakepve 0.5.0 stores such values as given.
"""

from __future__ import annotations

import re
from typing import Any

DRIVE = re.compile(r"^(scsi|virtio|sata)\d+$")


class DiskReassign:
    """Mixin of the fake's FakePve: disk reassignment between VMs, disks added by a config update."""

    async def _apply_config(self, vm: Any, user: str, p: dict[str, Any]) -> Any:
        from fakepve.qemu import split_drive

        fake: Any = self
        updates = dict(p)
        drives = [k for k in updates if DRIVE.match(k) and split_drive(str(updates[k]))[1].get("media") != "cdrom"]
        for key in drives:
            fake._qm_check_drive(user, vm.vmid, None, key, str(updates[key]), None)
            updates[key], _made = fake._qm_new_drive(vm.vmid, key, str(updates[key]), None)
        result = await super()._apply_config(vm, user, updates)  # type: ignore[misc]
        for key in drives:
            if key in vm.pending:  # hot-plugged: a disk reaches a running VM at once
                vm.config[key] = vm.pending.pop(key)
        return result

    def _disk_reassigned(self, old_volid: str, new_volid: str) -> None:
        """Called when a volume got its new name in a reassignment (a fake with real disk files moves its file)."""

    def _routes_homelab_disks(self) -> list[tuple[str, str, Any]]:
        return [("POST", "/nodes/{node}/qemu/{vmid}/move_disk", self._homelab_move_disk)]

    async def _homelab_move_disk(self, v: dict[str, Any], user: str) -> Any:
        from fakepve import PveError
        from fakepve.qemu import join_drive, split_drive, volume_ref

        fake: Any = self
        vmid, disk = int(v["vmid"]), str(v["disk"])
        target_vmid = v.get("target-vmid")
        if target_vmid is None:
            raise PveError(501, "the fake models move_disk only with target-vmid (disk reassignment)")
        if v.get("storage"):
            msg = "either set 'storage' or 'target-vmid', but not both"
            raise PveError(400, "Parameter verification failed.", {"target-vmid": msg, "storage": msg})
        target_vmid = int(target_vmid)
        target_disk = str(v.get("target-disk") or disk)
        if target_vmid == vmid:
            raise PveError(
                400,
                "Parameter verification failed.",
                {"target-vmid": "must be different than source VMID to reassign disk"},
            )
        fake.require(user, f"/vms/{target_vmid}", "VM.Config.Disk")

        def check() -> tuple[Any, Any, str]:
            source, target = fake.vm(vmid), fake.vm(target_vmid)
            if source is None:
                raise PveError(500, f"could not find VM {vmid}")
            if target is None:
                raise PveError(500, f"could not find target VM {target_vmid}")
            if source.node != target.node:
                raise PveError(500, f"Both VMs need to be on the same node ({source.node} != {target.node})")
            for vm in (source, target):
                if vm.lock:
                    raise PveError(500, f"VM is locked ({vm.lock})")
            if source.template or target.template:
                raise PveError(500, "Can't move disks from or to template VMs")
            if disk not in source.config:
                raise PveError(500, f"Disk '{disk}' for VM '{vmid}' does not exist")
            if target_disk in target.config:
                raise PveError(500, f"Target disk key '{target_disk}' is already in use for VM '{target_vmid}'")
            volume, props = split_drive(str(source.config[disk]))
            if props.get("media") == "cdrom":
                raise PveError(500, "CD drive contents can't be moved to another VM")
            if volume_ref(volume)[0] is None:
                raise PveError(500, f"disk '{disk}' has no associated volume")
            if any(volume in str(snap.get(key, "")) for snap in source.snapshots.values() for key in snap):
                raise PveError(500, "Can't move disk used by a snapshot to another VM")
            if source.status == "running" and not re.fullmatch(r"unused\d+", disk):
                raise PveError(500, "Cannot move disk to another VM while the source VM is running - detach first")
            return source, target, volume

        source, _target, volume = check()
        fake.require(user, "/storage/" + volume_ref(volume)[0], "Datastore.AllocateSpace")

        async def body() -> None:
            source, target, volume = check()
            sid, name = volume_ref(volume)
            volumes = fake.storages[sid].setdefault("volumes", {})
            new_name = fake._qm_free_name(sid, target_vmid, (volumes.get(name) or {}).get("format") or "raw")
            vol = volumes.pop(name, {"content": "images", "size": 0})
            vol["vmid"] = target_vmid
            volumes[new_name] = vol
            new_volid = f"{sid}:{new_name}"
            fake._disk_reassigned(f"{sid}:{name}", new_volid)
            _, props = split_drive(str(source.config[disk]))
            del source.config[disk]
            if re.fullmatch(r"unused\d+", target_disk):
                target.config[target_disk] = new_volid
            else:
                props = {k: val for k, val in props.items() if k != "size"}
                if vol.get("size"):
                    from homelab.lab.types import format_size

                    props["size"] = format_size(int(vol["size"]))
                target.config[target_disk] = join_drive(new_volid, props)

        return await fake.task(
            source.node,
            "qmmove",
            f"{vmid}-{disk}>{target_vmid}-{target_disk}",
            user,
            body,
            log=[f"reassign disk '{disk}' from VM '{vmid}' as '{target_disk}' to VM '{target_vmid}'"],
        )
