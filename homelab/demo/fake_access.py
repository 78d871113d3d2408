"""The fake Proxmox's access and versions, as a stock PVE has them (a mixin of the fake's class).

- ``/version`` reports the configured version; what depends on it follows: ``download-url`` refuses
  ``content=import`` below 8.3 (not in the enumeration) and a ``.qcow2`` file for it below 8.4 ("invalid
  filename or wrong extension"), as libpve-storage-perl before 8.2.8 and 8.3.6 do; guest agent calls need
  VM.Monitor below PVE 9 and VM.GuestAgent.* from 9 on (qemu-server 9.0.3).
- ``download-url`` asks what pve-storage asks: Datastore.AllocateTemplate on the storage, and Sys.AccessNetwork
  on the node or Sys.Audit + Sys.Modify on /.
- Create and clone need SDN.Use on ``/sdn/zones/localnetwork/<bridge>`` for each NIC's bridge; the node's
  network list shows only the bridges the user may audit or use; cloud-init keys need VM.Config.Cloudinit.
- An API token with privilege separation holds only what both it and its user hold, and
  ``/access/permissions`` answers that (fakepve would give the union).

``configure(pve, config)`` applies the fake's config: ``version`` and ``grants`` ([who, path, [privileges]]).
"""

from __future__ import annotations

import re
from typing import Any

from homelab.adapters.proxmox.privileges import parse_version

CLOUDINIT_KEYS = ("ciuser", "cipassword", "citype", "ciupgrade", "cicustom", "sshkeys", "nameserver", "searchdomain")


def configure(pve: Any, config: dict[str, Any]) -> None:
    """Set the version and the ACLs the fake's config names (none: everyone may do everything)."""
    if config.get("version"):
        pve.version = str(config["version"])
        pve.release_version = ".".join(pve.version.split(".")[:2])
    for who, path, privileges in config.get("grants") or []:
        pve.grant(who, path, *privileges)


class AccessMixin:
    """Overrides of fakepve's FakePve (put before it in the class's bases)."""

    version: str
    acl: dict[str, list[tuple[str, set[str]]]] | None

    # ---------------------------------------------------------------- versions

    def pve_version(self) -> tuple[int, int, int]:
        return parse_version(self.version) or (9, 0, 0)

    # ------------------------------------------------------------- permissions

    def allowed(self, user: str, path: str, priv: str) -> bool:
        if self.acl is None or user.split("!")[0] == "root@pam" or "!" not in user:
            return bool(super().allowed(user, path, priv))  # type: ignore[misc]
        # a privilege-separated token: what the token holds, limited to what its user holds
        return self._allowed_as(user, path, priv) and self._allowed_as(user.split("!")[0], path, priv)

    def _allowed_as(self, who: str, path: str, priv: str) -> bool:
        """fakepve's check, for ``who``'s own ACL entries only."""
        everything = self.acl
        assert everything is not None
        self.acl = {who: everything.get(who, [])}
        try:
            return bool(super().allowed(who, path, priv))  # type: ignore[misc]
        finally:
            self.acl = everything

    def check_permissions(self, user: Any, perms: Any, values: Any, declared: Any = None) -> Any:
        if perms and self.pve_version() < (9, 0, 0):
            perms = _agent_rule_of_pve8(perms)
        return super().check_permissions(user, perms, values, declared)  # type: ignore[misc]

    async def _permissions(self, v: dict[str, Any], user: str) -> Any:
        who = v.get("userid") or user
        if self.acl is None or who.split("!")[0] == "root@pam":
            return await super()._permissions(v, user)  # type: ignore[misc]
        from fakepve import shapes

        entries = [entry for name in (who, who.split("!")[0]) for entry in self.acl.get(name, [])]
        paths = sorted({path for path, _ in entries})
        known = sorted({*shapes.PRIVILEGES, *(p for _, privs in entries for p in privs)})  # PVE 8's VM.Monitor too
        held = {}
        for path in paths:
            if v.get("path") is not None and not (path == "/" or v["path"] == path or v["path"].startswith(path + "/")):
                continue
            privs = [p for p in known if self.allowed(who, path, p)]
            if privs:
                held[path] = dict.fromkeys(sorted(privs), 1)
        return held

    def _config_priv(self, key: str) -> str:
        if key in CLOUDINIT_KEYS or re.fullmatch(r"ipconfig\d+", key):
            return "VM.Config.Cloudinit"
        if key == "ostype":
            return "VM.Config.Options"
        return str(super()._config_priv(key))  # type: ignore[misc]

    # --------------------------------------------------------------- SDN.Use

    def _need_bridges(self, user: str, config: dict[str, Any]) -> None:
        for key, value in config.items():
            if re.fullmatch(r"net\d+", key):
                bridge = re.search(r"bridge=([^,]+)", str(value))
                tag = re.search(r"tag=(\d+)", str(value))
                if bridge:
                    path = f"/sdn/zones/localnetwork/{bridge.group(1)}" + (f"/{tag.group(1)}" if tag else "")
                    self.require(user, path, "SDN.Use")

    async def _qm_create(self, v: dict[str, Any], user: str) -> Any:
        self._need_bridges(user, v)
        return await super()._qm_create(v, user)  # type: ignore[misc]

    async def _qm_clone(self, v: dict[str, Any], user: str) -> Any:
        source = self.vm(int(v["vmid"]))  # type: ignore[attr-defined]
        if source is not None:
            self._need_bridges(user, source.config)
        return await super()._qm_clone(v, user)  # type: ignore[misc]

    async def synthesise(self, match: Any, method: str, info: Any, user: Any, values: Any) -> Any:
        data = await super().synthesise(match, method, info, user, values)  # type: ignore[misc]
        if match.template == "/nodes/{node}/network" and method == "GET" and isinstance(data, list):
            # pve-manager lists a bridge only to whom may audit or use it
            data = [
                item
                for item in data
                if item.get("type") not in ("bridge", "OVSBridge")
                or any(
                    self.allowed(user, f"/sdn/zones/localnetwork/{item['iface']}", p) for p in ("SDN.Audit", "SDN.Use")
                )
            ]
        return data

    # ------------------------------------------------------------ download-url

    async def _download_url(self, request: Any) -> Any:
        from fakepve import PveError
        from fakepve.server import USER, params

        user = request[USER]
        node, storage = request.match_info["node"], request.match_info["storage"]
        p = await params(request)
        version = self.pve_version()
        if p.get("content") == "import" and version < (8, 3, 0):
            raise PveError(
                400,
                "Parameter verification failed.",
                {"content": "value 'import' does not have a value in the enumeration 'iso, vztmpl'"},
            )
        self.require(user, f"/storage/{storage}", "Datastore.AllocateTemplate")
        if not (
            self.allowed(user, f"/nodes/{node}", "Sys.AccessNetwork")
            or (self.allowed(user, "/", "Sys.Audit") and self.allowed(user, "/", "Sys.Modify"))
        ):
            raise PveError(403, f"Permission check failed (/nodes/{node}, Sys.AccessNetwork)")
        if p.get("content") == "import" and version < (8, 4, 0) and not str(p.get("filename", "")).endswith(".ova"):
            raise PveError(400, "Parameter verification failed.", {"filename": "invalid filename or wrong extension"})
        # fakepve's handler asks Sys.Audit and Sys.Modify on / of everyone; the rule above replaced that check
        self._checked_download = {"Sys.Audit", "Sys.Modify"}
        return await super()._download_url(request)  # type: ignore[misc]

    def require(self, user: str, path: str, priv: str) -> None:
        skip: set[str] = getattr(self, "_checked_download", set())
        if path == "/" and priv in skip:  # fakepve's download-url asks these first, before any await
            skip.discard(priv)
            return
        super().require(user, path, priv)  # type: ignore[misc]


def _agent_rule_of_pve8(perms: dict[str, Any]) -> dict[str, Any]:
    """A guest agent call's permission rule as PVE 8 has it: VM.Monitor on the VM."""
    check = perms.get("check")
    if isinstance(check, list) and check[:1] == ["perm"] and any(str(p).startswith("VM.GuestAgent.") for p in check[2]):
        return {"check": ["perm", check[1], ["VM.Monitor"]]}
    return perms
