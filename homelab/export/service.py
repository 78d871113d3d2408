"""`homelab export terraform DIR`: read the lab's VMs from Proxmox, build the HCL, write it."""

from __future__ import annotations

from pathlib import Path

from homelab.adapters.proxmox.api import PveApi
from homelab.errors import InputError
from homelab.export.facts import gather_export
from homelab.export.files import TerraformExport, build_export
from homelab.lab.models import Lab
from homelab.state.files import write_atomic


def export_terraform(api: PveApi, lab: Lab, directory: Path) -> TerraformExport:
    """Write the lab's Terraform configuration into ``directory`` (made if missing); other files are left alone."""
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{directory}: not a directory")
    result = build_export(lab, gather_export(api, lab))
    for name, text in result.files.items():
        write_atomic(directory / name, text)
    return result
