"""The fake's backups: ``POST /nodes/{node}/vzdump`` and the backup jobs of ``/cluster/backup``.

fakepve 0.5.0 answers both from the schema only. Modelled as pve-manager's API2/VZDump.pm and API2/Backup.pm
answer: vzdump needs VM.Backup on each VM and Datastore.AllocateSpace on a storage with ``backup`` content,
locks each VM ``backup`` while it runs and leaves a ``backup/vzdump-qemu-<vmid>-<time>.vma.zst`` volume; jobs
are stored (the schema already demands Sys.Modify on / to write them and Sys.Audit to read them).
"""

from __future__ import annotations

import re
import time
from typing import Any


class Backups:
    """Mixin of the fake's FakePve: vzdump and backup jobs."""

    backup_jobs: dict[str, dict[str, Any]]

    def _routes_homelab_backup(self) -> list[tuple[str, str, Any]]:
        self.backup_jobs = {}
        return [
            ("POST", "/nodes/{node}/vzdump", self._homelab_vzdump),
            ("GET", "/cluster/backup", self._homelab_jobs),
            ("POST", "/cluster/backup", self._homelab_job_create),
            ("GET", "/cluster/backup/{id}", self._homelab_job_get),
            ("PUT", "/cluster/backup/{id}", self._homelab_job_put),
            ("DELETE", "/cluster/backup/{id}", self._homelab_job_delete),
        ]

    async def _homelab_vzdump(self, v: dict[str, Any], user: str) -> Any:
        from fakepve import PveError

        fake: Any = self
        node = v["node"]
        storage = v.get("storage") or "local"
        ids = [int(i) for i in re.split(r"[,;\s]+", str(v.get("vmid") or "")) if i]
        if not ids:
            raise PveError(400, "Parameter verification failed.", {"vmid": "property is missing"})
        for vmid in ids:
            fake.require(user, f"/vms/{vmid}", "VM.Backup")
        fake.require(user, f"/storage/{storage}", "Datastore.AllocateSpace")
        store = fake.storages.get(storage)
        if store is None:
            raise PveError(500, f"storage '{storage}' does not exist")
        if "backup" not in re.split(r"[,;\s]+", str(store.get("content", ""))):
            raise PveError(500, f"storage '{storage}' does not support backups")
        vms = []
        for vmid in ids:
            vm = fake.vm(vmid)
            if vm is None or vm.node != node:
                raise PveError(500, f"guest {vmid} is not on node '{node}'")
            vms.append(vm)

        async def body() -> str:
            lines = []
            for vm in vms:
                if vm.lock:
                    raise PveError(500, f"VM {vm.vmid}: can't lock file - VM is locked ({vm.lock})")
                vm.lock = "backup"
                try:
                    await fake.pause(10)
                    # a real backup takes longer than a second; here it may not: never reuse a name
                    when = time.time()
                    while True:
                        stamp = time.strftime("%Y_%m_%d-%H_%M_%S", time.gmtime(when))
                        name = f"vzdump-qemu-{vm.vmid}-{stamp}.vma.zst"
                        if f"backup/{name}" not in store.get("volumes", {}):
                            break
                        when += 1
                    size = 1024**2 + sum(int(vol.get("size") or 0) // 100 for vol in fake._homelab_vm_volumes(vm))
                    fake.store_file(storage, name, size, "backup")
                    store["volumes"][f"backup/{name}"]["vmid"] = vm.vmid
                    lines.append(f"INFO: Finished Backup of VM {vm.vmid}")
                finally:
                    vm.lock = None
            return "\n".join(lines)

        return await fake.task(node, "vzdump", "", user, body, log=[f"INFO: starting new backup job: vzdump {ids}"])

    def _homelab_vm_volumes(self, vm: Any) -> list[dict[str, Any]]:
        from fakepve.qemu import drives_of, volume_ref

        fake: Any = self
        found = []
        for _key, volume, _props in drives_of(vm.config, skip_cdrom=True):
            sid, name = volume_ref(volume)
            vol = (fake.storages.get(sid) or {}).get("volumes", {}).get(name)
            if vol:
                found.append(vol)
        return found

    async def _homelab_jobs(self, v: dict[str, Any], user: str) -> Any:
        return [dict(job, id=job_id) for job_id, job in sorted(self.backup_jobs.items())]

    async def _homelab_job_create(self, v: dict[str, Any], user: str) -> Any:
        from fakepve import PveError

        job_id = str(v.get("id") or f"backup-{len(self.backup_jobs) + 1:08x}")
        if job_id in self.backup_jobs:
            raise PveError(500, f"Job '{job_id}' already exists")
        self.backup_jobs[job_id] = self._homelab_job_fields(v, {"type": "vzdump", "enabled": 1})
        return None

    async def _homelab_job_get(self, v: dict[str, Any], user: str) -> Any:
        return dict(self._homelab_job(v["id"]), id=v["id"])

    async def _homelab_job_put(self, v: dict[str, Any], user: str) -> Any:
        job = self._homelab_job(v["id"])
        for key in re.split(r"[,;\s]+", str(v.get("delete") or "")):
            job.pop(key, None)
        self.backup_jobs[v["id"]] = self._homelab_job_fields(v, job)
        return None

    async def _homelab_job_delete(self, v: dict[str, Any], user: str) -> Any:
        self._homelab_job(v["id"])
        del self.backup_jobs[v["id"]]
        return None

    def _homelab_job(self, job_id: str) -> dict[str, Any]:
        from fakepve import PveError

        if job_id not in self.backup_jobs:
            raise PveError(500, f"job '{job_id}' does not exist")
        return self.backup_jobs[job_id]

    @staticmethod
    def _homelab_job_fields(v: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
        return dict(job, **{k: val for k, val in v.items() if k not in ("id", "delete") and val is not None})
