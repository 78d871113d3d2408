"""Proxmox: the API with retries and tasks (api), the proxmoxer transport (client, the only module importing
proxmoxer), connect(lab) joining them, and the typed facts and calls every stage shares: the lab's marks,
guests and template versions, the cluster facts, and the one VM delete that re-checks the mark.

Import the submodules themselves: this package imports nothing, so importing a part never loads proxmoxer.
"""
