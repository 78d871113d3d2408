"""The fake Proxmox's PCI resource mappings (Datacenter > Resource Mappings) and what a VM may do with them.

Modelled on pve-manager's API2/Cluster/Mapping/PCI.pm and qemu-server's hostpci permission check:

- ``GET /cluster/mapping/pci`` lists only the mappings the caller holds Mapping.Modify, Mapping.Use or
  Mapping.Audit on (``/mapping/pci/<id>``): a token without them sees an empty list, never a 403;
- ``POST /cluster/mapping/pci`` (Mapping.Modify on /mapping/pci, the schema checks it) adds one: ``id`` and
  ``map``, a list of ``node=<node>,path=<bus address>,id=<vendor:device>`` entries; an id in use is refused;
- ``GET/DELETE /cluster/mapping/pci/{id}``;
- a VM config update setting ``hostpciN`` to ``mapping=<id>`` needs Mapping.Use on ``/mapping/pci/<id>`` (besides
  VM.Config.HWType on the VM); a raw ``host=`` device is for root@pam only ("only root can set 'hostpci0' config
  for non-mapped devices"); ``pcie=1`` is refused unless the VM's machine is q35 (qemu-server refuses it when
  the VM starts; the fake refuses it at once). A start does not look the mapping up (not modelled).
"""

from __future__ import annotations

import re
from typing import Any

HOSTPCI = re.compile(r"^hostpci\d+$")


def parse_entry(text: str) -> dict[str, str]:
    """``node=pve1,path=0000:01:00.0,id=8086:56a0`` as a dict (PVE's property string)."""
    return dict(part.split("=", 1) for part in text.split(",") if "=" in part)


def is_q35(config: dict[str, Any]) -> bool:
    return "q35" in str(config.get("machine") or "")


class PciMappings:
    """Mixin of the fake's FakePve: PCI resource mappings and hostpci passthrough through them."""

    def _mappings(self) -> dict[str, dict[str, Any]]:
        fake: Any = self
        if not hasattr(fake, "pci_mappings"):
            fake.pci_mappings = {}
        found: dict[str, dict[str, Any]] = fake.pci_mappings
        return found

    def _routes_homelab_mapping(self) -> list[tuple[str, str, Any]]:
        return [
            ("GET", "/cluster/mapping/pci", self._mapping_index),
            ("POST", "/cluster/mapping/pci", self._mapping_create),
            ("GET", "/cluster/mapping/pci/{id}", self._mapping_get),
            ("DELETE", "/cluster/mapping/pci/{id}", self._mapping_delete),
        ]

    def _may_see(self, user: str, name: str) -> bool:
        fake: Any = self
        path = f"/mapping/pci/{name}"
        return any(fake.allowed(user, path, p) for p in ("Mapping.Modify", "Mapping.Use", "Mapping.Audit"))

    async def _mapping_index(self, v: dict[str, Any], user: str) -> Any:
        return [{"id": name, **entry} for name, entry in sorted(self._mappings().items()) if self._may_see(user, name)]

    async def _mapping_create(self, v: dict[str, Any], user: str) -> Any:
        from fakepve import PveError

        name = str(v["id"])
        if name in self._mappings():
            raise PveError(500, f"pci ID '{name}' already defined")
        entries = v["map"] if isinstance(v["map"], list) else [v["map"]]
        self._mappings()[name] = {"map": [str(e) for e in entries], "description": str(v.get("description") or "")}
        return None

    async def _mapping_get(self, v: dict[str, Any], user: str) -> Any:
        from fakepve import PveError

        entry = self._mappings().get(str(v["id"]))
        if entry is None:
            raise PveError(500, f"PCI mapping '{v['id']}' not found")
        return {"id": v["id"], **entry}

    async def _mapping_delete(self, v: dict[str, Any], user: str) -> Any:
        self._mappings().pop(str(v["id"]), None)
        return None

    async def _apply_config(self, vm: Any, user: str, p: dict[str, Any]) -> Any:
        from fakepve import PveError

        fake: Any = self
        merged = {**vm.config, **p}
        for key, value in p.items():
            if not HOSTPCI.match(key) or key == "delete":
                continue
            device = parse_entry(str(value)) if "=" in str(value) else {"host": str(value)}
            if not device.get("mapping"):
                if user != "root@pam":  # not even root's tokens
                    raise PveError(403, f"only root can set '{key}' config for non-mapped devices")
            else:
                fake.require(user, f"/mapping/pci/{device['mapping']}", "Mapping.Use")
            if device.get("pcie") == "1" and not is_q35(merged):
                raise PveError(400, "Parameter verification failed.", {key: "q35 machine model is not enabled"})
        return await super()._apply_config(vm, user, p)  # type: ignore[misc]
