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
from homelab.state.reading import StateFileError, notice, read_state_json, set_aside


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


def load_hosts(lab: Lab, heal: bool = True) -> list[Host]:
    """The hosts the last apply recorded, in lab order; empty before the first apply.

    hosts.json only caches what Proxmox can tell again (each VM's address and host key, through its guest
    agent): when it cannot be used it is moved aside with a line saying so, and the next apply rebuilds it.
    ``heal=False`` (for commands that change nothing) only says so.
    """
    path = hosts_file(lab)
    try:
        data = read_state_json(path, "hosts record")
        if data is None:
            return []
        if not isinstance(data, dict) or not isinstance(data.get("hosts", []), list):
            raise StateFileError(path, 'the hosts record is not {"hosts": [...]}')
        return [Host(**entry) for entry in data.get("hosts", [])]
    except (StateFileError, TypeError) as exc:
        problem = (
            exc.problem if isinstance(exc, StateFileError) else "the hosts record has an entry homelab cannot read"
        )
        try:
            aside = f"moved to {set_aside(path)}" if heal else "left as it is"
        except OSError as move:
            raise StateFileError(path, problem, f"it could not be moved aside ({move.strerror}): remove it") from None
        notice(
            f"{path}: {problem}; {aside}. It only caches what Proxmox knows: `homelab apply` "
            "rebuilds it through the guest agents"
        )
        return []


def save_hosts(lab: Lab, hosts: list[Host]) -> None:
    """Record the hosts atomically."""
    write_atomic(hosts_file(lab), json.dumps({"hosts": [asdict(h) for h in hosts]}, indent=2) + "\n")
