"""The lab's VMs as SSH targets: address, login, and the pinned host key.

`homelab apply` records each VM it brings up in <state dir>/hosts.json; the later stages (deploy keys,
Ansible) read them from here. Host keys are pinned: read through the guest agent (an authenticated
channel through the Proxmox API) or given by the user, never learned blindly on first connect.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from homelab.lab.models import Lab
from homelab.paths import state_dir
from homelab.state.files import write_atomic


@dataclass(frozen=True)
class Host:
    """One SSH target."""

    name: str
    address: str
    user: str
    port: int = 22
    # "<keytype> <base64>" of the host's SSH host key; None until it is known.
    host_key: str | None = None
    # Private key homelab logs in with; None: the lab's admin key (<state dir>/ssh/id_ed25519).
    key_file: str | None = None
    # The VM this record was learned from; None in records written before homelab kept it.
    vmid: int | None = None

    def is_for(self, vmid: int) -> bool:
        """Whether this record may describe the VM with ``vmid``: not when it was learned from another VM
        (the lab's VM was replaced or re-created since), so its address and host key would be stale."""
        return self.vmid is None or self.vmid == vmid

    def known_hosts_line(self) -> str:
        """The pinned entry for a known_hosts file."""
        if not self.host_key:
            raise ValueError(f"{self.name}: host key is not pinned")
        target = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{target} {self.host_key}"


def hosts_file(lab: Lab) -> Path:
    """Where the lab's hosts are recorded."""
    return state_dir(lab.name) / "hosts.json"


def load_hosts(lab: Lab) -> list[Host]:
    """The hosts the last apply recorded, in lab order; empty before the first apply."""
    path = hosts_file(lab)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    return [Host(**entry) for entry in data.get("hosts", [])]


def save_hosts(lab: Lab, hosts: list[Host]) -> None:
    """Record the hosts atomically."""
    write_atomic(hosts_file(lab), json.dumps({"hosts": [asdict(h) for h in hosts]}, indent=2) + "\n")
