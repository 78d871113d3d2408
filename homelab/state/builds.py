"""Packer builds under way, recorded on this machine: Packer describes its VM only when it converts it to a
template, so a VM a killed build left carries no mark. The record (vmid, name, template, version, written
before Packer starts and dropped once the build ended either way) is what proves such a VM is this lab's."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from homelab.paths import state_dir
from homelab.state.files import write_atomic
from homelab.state.reading import StateFileError, read_state_json


@dataclass(frozen=True)
class BuildUnderWay:
    vmid: int
    name: str
    template: str
    version: str


def builds_file(lab_name: str) -> Path:
    return state_dir(lab_name) / "builds-under-way.json"


def builds_under_way(lab_name: str) -> dict[int, BuildUnderWay]:
    """The builds recorded as started and not ended, by vmid."""
    path = builds_file(lab_name)
    data = read_state_json(path, "record of builds under way") or {}
    try:
        return {int(vmid): BuildUnderWay(**entry) for vmid, entry in data.items()}
    except (TypeError, ValueError, AttributeError):
        raise StateFileError(path, "the record of builds under way is not {vmid: {name, template, version}}") from None


def record_build(lab_name: str, build: BuildUnderWay | None, vmid: int) -> None:
    """Record ``build`` as started at ``vmid`` (None: drop the record of vmid)."""
    found = builds_under_way(lab_name)
    if build is None:
        if vmid not in found:
            return
        found.pop(vmid)
    else:
        found[vmid] = build
    body = {str(k): {key: v for key, v in asdict(b).items() if key != "vmid"} | {"vmid": k} for k, b in found.items()}
    write_atomic(builds_file(lab_name), json.dumps(body, indent=2, sort_keys=True) + "\n")
