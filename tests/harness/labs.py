"""Labs for tests: one builder of a lab file's data, with the variants as its parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from homelab.demo.launcher import FakeProxmox
from homelab.lab.loader import parse_lab
from homelab.lab.models import Lab

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFOr7xB0Q1YhYyH8nEIpwoZzvvz4cLyYWpaT3wKJ7rpv test@homelab"


# A lab network that holds the SSH test hosts' addresses (10.77.x.x; see tests/harness/hosts.py)
HOSTS_NETWORK = {"subnet": "10.77.0.0/16", "gateway": "10.77.0.1", "dns": ["10.77.0.1"], "build_ip": "10.77.255.250"}


def lab_data(
    fake: FakeProxmox | None = None,
    vms: list[dict[str, Any]] | None = None,
    name: str = "test",
    *,
    password: bool = False,
    domain: str | None = "home.arpa",
    **sections: Any,
) -> dict[str, Any]:
    """A lab file's data: the lab ``name`` with ``vms`` (none by default), the template debian-docker and
    one SSH key.

    Proxmox is ``fake`` (its URL, CA and token id; its user with ``password``) or, without one,
    https://pve.test:8006, where nothing answers. The network is 10.10.0.0/24 (template builds at 10.10.0.250)
    with the search ``domain``
    (None: no domain). ``sections`` add or replace top-level sections: templates, stacks, repo, settings...
    """
    proxmox: dict[str, Any] = {"url": fake.url if fake else "https://pve.test:8006", "node": "pve1"}
    if password:
        proxmox["user"] = fake.user if fake else "root@pam"
    else:
        proxmox["token_id"] = fake.token_id if fake else "root@pam!homelab"
    if fake:
        proxmox["ca_bundle"] = fake.cafile
    network: dict[str, Any] = {
        "subnet": "10.10.0.0/24",
        "gateway": "10.10.0.1",
        "dns": ["10.10.0.1"],
        "build_ip": "10.10.0.250",
    }
    if domain:
        network["domain"] = domain
    data: dict[str, Any] = {
        "name": name,
        "proxmox": proxmox,
        "network": network,
        "templates": [{"name": "debian-docker"}],
        "access": {"ssh_keys": [SSH_KEY]},
        "vms": vms or [],
    }
    data.update(sections)
    return data


def make_lab(*args: Any, **kwargs: Any) -> Lab:
    """The validated lab of ``lab_data(*args, **kwargs)``."""
    return parse_lab(yaml.safe_dump(lab_data(*args, **kwargs), sort_keys=False))


def write_lab(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` (see :func:`lab_data`) as the lab file ``path``; returns ``path``."""
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def add_template_version(fake: FakeProxmox, vmid: int = 9001, version: str = "202611201200", lab: str = "test") -> None:
    """A newer version of the template debian-docker in ``fake``, as `homelab template build` leaves one for lab
    ``lab``: marked with the lab's tags and with the guest agent baked in. Lab VMs on an older one get replaced."""
    fake.call(
        "add_vm",
        vmid=vmid,
        name=f"debian-docker-{version}",
        template=True,
        guest_agent=True,
        config={
            "agent": "1",
            "ostype": "l26",
            "scsi0": f"local-lvm:base-{vmid}-disk-0,size=8G",
            "net0": f"virtio=BC:24:11:00:{vmid // 100 % 100:02X}:{vmid % 100:02X},bridge=vmbr0",
            "tags": f"guest-agent;homelab-template;homelab-{lab}",
        },
    )
