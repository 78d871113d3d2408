"""Write lab files that point at a fake Proxmox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from homelab.demo.launcher import FakeProxmox

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFOr7xB0Q1YhYyH8nEIpwoZzvvz4cLyYWpaT3wKJ7rpv test@homelab"


def lab_data(fake: FakeProxmox, vms: list[dict[str, Any]], name: str = "test", **extra: Any) -> dict[str, Any]:
    """A lab for the fake: its URL, CA, token id; the default template debian-docker."""
    data: dict[str, Any] = {
        "name": name,
        "proxmox": {"url": fake.url, "node": "pve1", "token_id": fake.token_id, "ca_bundle": fake.cafile},
        "network": {"subnet": "10.10.0.0/24", "gateway": "10.10.0.1", "dns": ["10.10.0.1"], "domain": "home.arpa"},
        "templates": [{"name": "debian-docker"}],
        "access": {"ssh_keys": [SSH_KEY]},
        "vms": vms,
    }
    data.update(extra)
    return data


def write_lab(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
