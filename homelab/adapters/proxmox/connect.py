"""connect(lab): the lab's Proxmox as a PveApi over the proxmoxer transport (the one place both meet)."""

from __future__ import annotations

from homelab.adapters.proxmox.api import PveApi, RetryPolicy
from homelab.lab.models import Lab


def connect(lab: Lab, retry: RetryPolicy | None = None) -> PveApi:
    """A PveApi for the lab's Proxmox, authenticated from the environment or the secrets file."""
    # proxmoxer (through client.py) loads only when a command really talks to Proxmox.
    from homelab.adapters.proxmox.client import ProxmoxerTransport
    from homelab.state.secrets import proxmox_auth

    grace = float(lab.settings.timeouts.connection)
    # One request never waits longer than a lost connection is allowed to last.
    transport = ProxmoxerTransport.from_lab(lab, proxmox_auth(lab), timeout=min(30.0, grace))
    return PveApi(transport, retry or RetryPolicy(connection_grace=grace))
