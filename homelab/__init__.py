"""homelab: turn one YAML file into a working Proxmox homelab."""

__version__ = "0.1.0"
