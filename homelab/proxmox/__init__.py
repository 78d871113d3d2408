"""Talking to Proxmox: a small Protocol, one adapter over proxmoxer, task waiting and retries."""

from homelab.proxmox.api import PveApi, connect

__all__ = ["PveApi", "connect"]
