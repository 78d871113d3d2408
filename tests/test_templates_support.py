"""Shared helpers of the template tests (no tests here): labs aimed at the fake Proxmox."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from homelab.adapters.proxmox.api import PveApi, RetryPolicy
from homelab.adapters.proxmox.connect import connect
from homelab.demo.launcher import FakeProxmox
from homelab.lab.loader import parse_lab
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


def lab_yaml(fake: FakeProxmox | None, templates: list[dict[str, Any]], *, password: bool = False, **extra: Any) -> str:
    """The text of a lab file whose proxmox section points at the fake (verifying TLS against its CA)."""
    proxmox: dict[str, Any] = {
        "url": fake.url if fake else "https://pve.example:8006",
        "node": "pve1",
    }
    if fake:
        proxmox["ca_bundle"] = fake.cafile
    if password:
        proxmox["user"] = fake.user if fake else "root@pam"
    else:
        proxmox["token_id"] = fake.token_id if fake else "root@pam!homelab"
    data = {
        "name": "test",
        "proxmox": proxmox,
        "network": {"subnet": "10.10.0.0/24", "gateway": "10.10.0.1"},
        "templates": templates,
        **extra,
    }
    return yaml.safe_dump(data, sort_keys=False)


def lab_for(fake: FakeProxmox | None, templates: list[dict[str, Any]], *, password: bool = False, **extra: Any) -> Lab:
    """A validated lab aimed at the fake (see lab_yaml)."""
    return parse_lab(lab_yaml(fake, templates, password=password, **extra))


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
