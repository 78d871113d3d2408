"""Versioned VM templates: build (cloud image through the API, or Packer), list, prune, resolve.

:func:`resolve_template` reads the cluster and names the version a template's VMs are cloned from (the one
resolver, homelab.adapters.proxmox.versions.pick_version, which the VM stage uses too).
"""

from homelab.templates.facts import resolve_template

__all__ = ["resolve_template"]
