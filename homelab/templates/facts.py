"""Read-only facts the template stage adds to the cluster's, gathered before planning.

Everything here is a GET: the VMs that use each version, and the storages an image can be downloaded to. The
guests and the versions found among them are the cluster's (homelab.adapters.proxmox.guests, versions).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.guests import Guest, list_guests
from homelab.adapters.proxmox.marks import marks_as, parse_mark, split_tags
from homelab.adapters.proxmox.versions import (
    TemplateMissing,
    TemplateVersion,
    find_versions,
    parse_version_name,
    pick_version,
    version_name,
)
from homelab.errors import OperationError
from homelab.lab.models import Lab, Template

_DRIVE = re.compile(r"^(ide|sata|scsi|virtio|efidisk|tpmstate|unused)\d+$")


class VmidRangeFull(OperationError):
    """Every vmid of a template's vmid_range is taken."""


@dataclass(frozen=True)
class VersionUse:
    """A guest that was made from a version: cloned by homelab (its description says so) or a linked clone."""

    vmid: int
    node: str
    name: str
    how: str


@dataclass(frozen=True)
class VersionDetails:
    """A version with what its description records and the guests that use it."""

    version: TemplateVersion
    record: dict[str, Any] = field(default_factory=dict)
    used_by: tuple[VersionUse, ...] = ()


def lab_template(lab: Lab, template: Template | str) -> Template:
    """The lab's Template model for a name (or the model itself)."""
    if isinstance(template, Template):
        return template
    for candidate in lab.templates:
        if candidate.name == template:
            return candidate
    known = ", ".join(t.name for t in lab.templates)
    raise TemplateMissing(f"the lab has no template {template!r} (its templates: {known})")


def resolve_template(api: PveApi, lab: Lab, template: Template | str) -> TemplateVersion:
    """The version VMs of this template are cloned from: the pinned one, else the newest.

    Raises TemplateMissing (with "run homelab template build") when there is none.
    """
    model = lab_template(lab, template)
    return pick_version(find_versions(list_guests(api), model.name), model)


def next_free_vmid(guests: Iterable[Guest], vmid_range: tuple[int, int]) -> int:
    """The lowest vmid of the range that no guest (VM or container) has."""
    taken = {g.vmid for g in guests}
    first, last = vmid_range
    for vmid in range(first, last + 1):
        if vmid not in taken:
            return vmid
    raise VmidRangeFull(f"every vmid from {first} to {last} is taken: run `homelab template prune` or widen vmid_range")


def _base_refs(config: dict[str, Any]) -> set[int]:
    """vmids of the template disks (base-<vmid>-disk-N) a config's drives are linked to."""
    refs: set[int] = set()
    for key, value in config.items():
        if _DRIVE.match(key):
            volume = str(value).split(",", 1)[0]
            refs.update(int(m) for m in re.findall(r"base-(\d+)-disk-\d+", volume))
    return refs


def version_usage(api: PveApi, guests: Iterable[Guest], versions: list[TemplateVersion]) -> dict[int, list[VersionUse]]:
    """For each version (by vmid), the guests made from it.

    A guest uses a version when its description has a ``homelab: {"vm": ..., "template": ..., "version": ...}``
    line naming it (homelab apply writes one), or when one of its disks is a linked clone of the version's disk.
    Reads the config of every VM that is not itself one of the versions (one GET each).
    """
    by_name = {v.name: v for v in versions}
    by_vmid = {v.vmid: v for v in versions}
    used: dict[int, list[VersionUse]] = {v.vmid: [] for v in versions}
    for guest in guests:
        if guest.kind != "qemu" or guest.vmid in by_vmid:
            continue
        config = api.get(f"/nodes/{guest.node}/qemu/{guest.vmid}/config") or {}
        record = parse_mark(config.get("description"))
        seen: set[int] = set()
        if record and "vm" in record and record.get("template") and record.get("version"):
            version = by_name.get(version_name(str(record["template"]), str(record["version"])))
            if version is not None:
                used[version.vmid].append(VersionUse(guest.vmid, guest.node, guest.name, "cloned"))
                seen.add(version.vmid)
        for vmid in _base_refs(config):
            if vmid in by_vmid and vmid not in seen:
                used[vmid].append(VersionUse(guest.vmid, guest.node, guest.name, "linked clone"))
    return used


def version_details(api: PveApi, guests: Iterable[Guest], versions: list[TemplateVersion]) -> list[VersionDetails]:
    """Each version with its description record and the guests that use it (oldest first)."""
    used = version_usage(api, guests, versions)
    details = []
    for version in versions:
        config = api.get(f"/nodes/{version.node}/qemu/{version.vmid}/config") or {}
        record = parse_mark(config.get("description")) or {}
        details.append(VersionDetails(version, record, tuple(used.get(version.vmid, ()))))
    return details


def import_storages(api: PveApi, node: str) -> list[str]:
    """Storages of the node that take disk images to import (content type ``import``), enabled and active."""
    names = []
    for item in api.get(f"/nodes/{node}/storage", content="import", enabled=1) or []:
        if item.get("active", 1) and "import" in split_tags(str(item.get("content", "")).replace(",", ";")):
            names.append(str(item["storage"]))
    return names


def storage_files(api: PveApi, node: str, storage: str, content: str) -> set[str]:
    """Volume ids (``local:import/x.qcow2``) of one content type on a storage."""
    return {str(item["volid"]) for item in api.get(f"/nodes/{node}/storage/{storage}/content", content=content) or []}


@dataclass(frozen=True)
class HalfBuilt:
    """A VM an interrupted build of this template left: named and marked as one of its versions, not a template."""

    vmid: int
    node: str
    name: str
    version: str
    unmarked: bool = False  # a Packer build's VM (described only at the end), known from this machine's record


def half_built(api: PveApi, lab: Lab, template: Template, guests: Iterable[Guest]) -> tuple[HalfBuilt, ...]:
    """The VMs (not templates) named as a version of ``template`` whose description marks them as this lab's build
        of it: a build killed before it could clean up (SIGKILL, power loss). A VM without that mark is not ours to
        judge, unless this machine recorded starting that very build there (Packer describes its VM only at the end:
    :mod:`homelab.state.builds`); any other is left alone, as a namesake."""
    from homelab.state.builds import builds_under_way

    started = builds_under_way(lab.name)
    found = []
    for guest in guests:
        version = parse_version_name(template.name, guest.name) if guest.is_vm else None
        if version is None:
            continue
        record = parse_mark((api.get(f"/nodes/{guest.node}/qemu/{guest.vmid}/config") or {}).get("description"))
        if marks_as(record, lab.name, template=template.name, version=version) and "builder" in (record or {}):
            found.append(HalfBuilt(guest.vmid, guest.node, guest.name, version))
        elif record is None and (under_way := started.get(guest.vmid)) and under_way.name == guest.name:
            # Packer's VM, unmarked until the end: this machine recorded starting exactly this build there
            found.append(HalfBuilt(guest.vmid, guest.node, guest.name, version, unmarked=True))
    return tuple(sorted(found, key=lambda h: h.vmid))
