"""The fake Proxmox as a cluster: node-local storage, cross-node clones refused as PVE refuses them, offline
migration, pools and ACLs from the fake's configuration.

fakepve keeps one volume list per storage, cluster-wide. On a real cluster a storage that is not ``shared``
(``local-lvm``, lvmthin, on every node) holds separate volumes on each node: a VM's disks there live on the node
the VM is on. This mixin models exactly that (a volume of a non-shared storage is on its owner VM's node) and the
rules qemu-server builds on it (read in its API2/Qemu.pm clone_vm and migrate_vm, and QemuMigrate.pm):

- a clone with ``target`` other than the source's node is refused while any source volume (the cloud-init
  drive too) is on a non-shared storage: "can't clone VM to node '<target>' (VM uses local storage)";
- a clone's ``newid`` is checked against the source node's config files before the task starts, so an id
  taken on *another* node fails inside the task, when the cluster file system refuses the new config file;
- ``POST /nodes/{node}/qemu/{vmid}/migrate`` refuses a running VM without ``online``, a target that is the
  node itself or a storage not enabled on the target; offline it copies local volumes to the target, but a
  linked clone whose base is on local storage cannot leave (the task ends "migration aborted").
"""

from __future__ import annotations

from typing import Any

from fakepve import PveError, TaskError
from fakepve.qemu import drives_of, is_cdrom, split_drive, volume_ref
from fakepve.routing import die, param_error
from fakepve.storage import _is_file

# PVE seconds an offline migration takes (the disks are copied over the network).
MIGRATE_SECS = 3.0


class ClusterMixin:
    """Mixin of the fake's FakePve subclass (see serve.fake_class); needs fakepve's QemuApi and storage parts.

    ``lost_answers``: [[method, path suffix, times], ...] (set through the control socket's ``set`` op): such a
    request is carried out, then its connection is closed before the answer goes out, as when a proxy or the
    network drops the answer of a call that already did its work.
    """

    lost_answers: list[list[Any]] = []

    def _routes_homelab_cluster(self) -> list[tuple[str, str, Any]]:
        return [("POST", "/nodes/{node}/qemu/{vmid}/migrate", self._cluster_migrate)]

    async def _answer(self, request: Any, handler: Any, generic: Any, path_node: Any) -> Any:
        response = await super()._answer(request, handler, generic, path_node)  # type: ignore[misc]
        for rule in self.lost_answers:
            method, suffix, times = rule
            if request.method == method and request.path.endswith(suffix) and times > 0:
                rule[2] = times - 1
                request.transport.close()  # the work is done; its answer never arrives
                break
        return response

    # ----------------------------------------------------------- volumes

    def _cluster_volumes(self, config: dict[str, Any]) -> list[tuple[str, str, str]]:
        """(key, storage, volume name) of every volume a config uses (disks, cloud-init drive, ISO images)."""
        found = []
        for key, volume, _props in drives_of(config):
            if not volume or volume in ("none", "cdrom"):
                continue
            sid, name = volume_ref(volume)
            if sid is not None:
                found.append((key, sid, name))
        return found

    def _qm_alloc(self, sid: str, vmid: int, fmt: Any, size: int, linked_from: str | None = None) -> Any:
        """fakepve names a linked clone's volume after its base only on file storages; PVE's LVM-thin and ZFS
        name it ``base-9000-disk-0/vm-101-disk-0`` too, which is what tells migration it is a linked clone."""
        volid, fmt = super()._qm_alloc(sid, vmid, fmt, size, linked_from)  # type: ignore[misc]
        store = self.storages[sid]  # type: ignore[attr-defined]
        if linked_from and not _is_file(store):
            name = volid.split(":", 1)[1]
            renamed = f"{linked_from.split('/')[-1]}/{name}"
            store["volumes"][renamed] = store["volumes"].pop(name)
            volid = f"{sid}:{renamed}"
        return volid, fmt

    def _cluster_local(self, sid: str) -> bool:
        store = self.storages.get(sid)  # type: ignore[attr-defined]
        return store is not None and not store.get("shared")

    # ------------------------------------------------------------- clone

    async def _qm_clone(self, v: dict[str, Any], user: str) -> Any:
        node, vmid, newid = v["node"], int(v["vmid"]), int(v["newid"])
        target = v.get("target")
        if target in (node, "localhost"):
            target = None
        src = self.find(node, vmid)  # type: ignore[attr-defined]
        if target:
            if target not in self.nodes:  # type: ignore[attr-defined]
                raise die(f"no such cluster node '{target}'")
            storage = v.get("storage")
            if storage and not self._storage_enabled(storage, target):  # type: ignore[attr-defined]
                raise die(f"storage '{storage}' is not available on node '{target}'")
            if storage and self._cluster_local(storage):
                raise die(f"can't clone to non-shared storage '{storage}'")
            config = src.snapshots[v["snapname"]] if v.get("snapname") in src.snapshots else src.config
            if any(self._cluster_local(sid) for _k, sid, _n in self._cluster_volumes(config)):
                raise die(f"can't clone VM to node '{target}' (VM uses local storage)")
        other = self.vm(newid)  # type: ignore[attr-defined]
        if other is not None and other.node != node:
            # The early check looks only at this node's config files; the cluster file system refuses the file
            # once the worker writes it.
            message = f"close (rename) atomic file '/etc/pve/nodes/{node}/qemu-server/{newid}.conf' failed: File exists"

            async def body() -> None:
                raise TaskError(message)

            return await self.task(node, "qmclone", vmid, user, body)  # type: ignore[attr-defined]
        return await super()._qm_clone(v, user)  # type: ignore[misc]

    # ----------------------------------------------------------- migrate

    async def _cluster_migrate(self, v: dict[str, Any], user: str) -> Any:
        node, vmid, target = v["node"], int(v["vmid"]), v["target"]
        if target == node:
            raise param_error(target="target is local node.")
        self.need_quorum()  # type: ignore[attr-defined]
        if target not in self.nodes:  # type: ignore[attr-defined]
            raise die(f"no such cluster node '{target}'")
        for option in ("force", "migration_type", "migration_network"):
            if v.get(option) and user != "root@pam":
                raise param_error(**{option: "Only root may use this option."})
        vm = self.find(node, vmid)  # type: ignore[attr-defined]
        self._check_lock(vm)  # type: ignore[attr-defined]
        online = bool(int(v.get("online") or 0))
        if vm.status == "running" and not online:
            raise die("can't migrate running VM without --online")
        volumes = self._cluster_volumes(vm.config)
        for _key, sid, _name in volumes:
            if not self._storage_enabled(sid, target):  # type: ignore[attr-defined]
                raise die(f"storage '{sid}' is not available on node '{target}'")
        log = [f"starting migration of VM {vmid} to node '{target}'"]
        problem = self._cluster_migrate_problem(vm, volumes, online and vm.status == "running", v)
        if problem:
            log.append(f"ERROR: migration aborted (duration 00:00:01): {problem}")

        async def body() -> str:
            if problem:
                raise TaskError("migration aborted")
            self._qm_lock(vm, "migrate")  # type: ignore[attr-defined]
            try:
                await self.pause(MIGRATE_SECS)  # type: ignore[attr-defined]
            finally:
                self._qm_lock(vm, None)  # type: ignore[attr-defined]
            vm.node = target
            return f"migration finished successfully: VM {vmid} is on node '{target}'"

        return await self.task(node, "qmigrate", vmid, user, body, vm=vm, log=log)  # type: ignore[attr-defined]

    def _cluster_migrate_problem(
        self, vm: Any, volumes: list[tuple[str, str, str]], live: bool, v: dict[str, Any]
    ) -> str | None:
        """Why QemuMigrate's volume scan would stop this migration, or None."""
        for key, sid, name in volumes:
            if not self._cluster_local(sid):
                continue
            volume, props = split_drive(vm.config[key])
            if is_cdrom(volume, props) and not name.startswith("iso/"):
                continue  # a cloud-init drive: generated, PVE copies it offline (fakepve names it vm-N-disk-M)
            if is_cdrom(volume, props):
                return f"can't migrate local cdrom image '{volume}'"
            if live and not v.get("with-local-disks"):
                return f"can't live migrate attached local disks without with-local-disks option ('{sid}:{name}')"
            if "/" in name and name.split("/")[-2].startswith("base-"):
                base = name.split("/")[-2]
                scan = "Problem found while scanning volumes"
                return f"{scan} - can't migrate '{sid}:{name}' as it's a clone of '{base}'"
            if vm.template and self._cluster_base_in_use(sid, name):
                return f"can't migrate local disk '{sid}:{name}': referenced by linked clone(s)"
        return None

    def _cluster_base_in_use(self, sid: str, name: str) -> bool:
        for other in self.vms:  # type: ignore[attr-defined]
            for _key, osid, oname in self._cluster_volumes(other.config):
                if osid == sid and oname != name and oname.startswith(name + "/"):
                    return True
        return False


def setup_cluster(pve: Any, config: dict[str, Any]) -> None:
    """The cluster parts of the fake's JSON config: ``pools`` ({name: {"storage": [ids]}}) and ``acl``
    ({user or token: [[path, [privileges]]]}; once given, every call is checked like PVE checks it) and
    ``version`` (what /version reports)."""
    for name, pool in config.get("pools", {}).items():
        pve.pools.setdefault(name, set())
        pve.pool_info[name] = {"comment": pool.get("comment"), "storage": set(pool.get("storage", []))}
    if config.get("version"):
        pve.version = config["version"]
        pve.release_version = ".".join(config["version"].split(".")[:2])
    for user, grants in config.get("acl", {}).items():
        for path, privs in grants:
            pve.grant(user, path, *privs)


__all__ = ["ClusterMixin", "PveError", "setup_cluster"]
