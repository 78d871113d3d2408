"""Shared helpers of the template tests (no tests here): images, storages, and looking at the fake Proxmox."""

from __future__ import annotations

from typing import Any

import pytest

from homelab.adapters.proxmox.api import PveApi, RetryPolicy
from homelab.adapters.proxmox.connect import connect
from homelab.demo.launcher import FakeProxmox
from homelab.lab.models import Lab

SHA512 = "sha512:" + "ab" * 64
IMAGE = {"url": "https://images.example/debian-12-genericcloud-amd64.qcow2", "checksum": SHA512}
# The fake's `local` storage as a PVE 8.4+/9 node has it once imports are enabled, plus an installer ISO.
LOCAL_WITH_IMPORT = {
    "local": {
        "type": "dir",
        "active": 1,
        "content": "iso,vztmpl,backup,import",
        "files": ["debian-12.iso"],
        "path": "/var/lib/vz",
    }
}


def api_for(fake: FakeProxmox, lab: Lab, monkeypatch: pytest.MonkeyPatch) -> PveApi:
    """A PveApi logged in to the fake the way the lab says (secret from the environment)."""
    if lab.proxmox.token_id:
        monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake.token_secret)
    else:
        monkeypatch.setenv("HOMELAB_PROXMOX_PASSWORD", fake.password)
    return connect(lab, RetryPolicy(attempts=3, first_delay=0.01))


def vm_config(fake: FakeProxmox, vmid: int) -> dict[str, Any] | None:
    """The fake's config of a VM, or None if there is no such VM."""
    for vm in fake.vms():
        if vm["vmid"] == vmid:
            return dict(vm["config"], template=vm["template"], name=vm["name"])
    return None


def volumes(fake: FakeProxmox, storage: str) -> set[str]:
    """Names of the volumes and files on one of the fake's storages."""
    store = fake.call("storages")[storage]
    return set(store.get("volumes", {})) | {f"iso/{name}" for name in store.get("files", [])}
