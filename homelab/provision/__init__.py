"""Provisioning: the lab's VMs on Proxmox. facts (read) -> plan (pure) -> executor (write)."""
