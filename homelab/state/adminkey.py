"""homelab's own login key for the lab's VMs: made once, put on every VM by cloud-init, 0600 on disk.

The deploy stage and key rotation log in with it (homelab.repokeys.remote); the user's own keys from
access.ssh_keys sit beside it on the VMs.
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


def ensure_admin_key(lab: Lab) -> str:
    """The admin public key line, making the pair on first use (private key 0600 from birth)."""
    existing = read_admin_public(lab)
    if existing and admin_key_path(lab).is_file():
        return existing
    from homelab.repokeys.keys import new_key_material
    from homelab.state.files import write_atomic, write_secret

    private, public = new_key_material(f"homelab-admin-{lab.name}")
    path = admin_key_path(lab)
    write_secret(path, private)
    write_atomic(path.with_suffix(".pub"), public + "\n")
    return public
