"""Where homelab's own login key for the lab's VMs lives: made once, put on every VM by cloud-init, 0600 on disk.

It is made by :func:`homelab.adapters.sshkeys.ensure_admin_key`; the deploy stage and key rotation log in
with it (:mod:`homelab.adapters.ssh`). The user's own keys from access.ssh_keys sit beside it on the VMs.
"""

from __future__ import annotations

from pathlib import Path

from homelab.lab.models import Lab
from homelab.paths import state_dir


def admin_key_file(lab_name: str) -> Path:
    """The private half for a lab by name; the public half is beside it with .pub."""
    return state_dir(lab_name) / "ssh" / "id_ed25519"


def admin_key_path(lab: Lab) -> Path:
    """The private half; the public half is beside it with .pub."""
    return admin_key_file(lab.name)


def read_admin_public(lab: Lab) -> str | None:
    """The admin public key line, or None before the first apply made it."""
    try:
        return admin_key_path(lab).with_suffix(".pub").read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None
