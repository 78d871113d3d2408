"""SSH key material: the one generator of key pairs, fingerprints, and homelab's admin login key.

Every key homelab makes (the admin login key, the config repo's deploy keys, a template build's
throwaway keys) is an ed25519 pair in OpenSSH format made here. The cryptography package is imported
only when a key is made or read, so `homelab --help` stays quick.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from homelab.lab.models import Lab
from homelab.state.adminkey import admin_key_path, read_admin_public
from homelab.state.files import write_atomic, write_secret


def new_key_pair(comment: str) -> tuple[bytes, str]:
    """A fresh ed25519 pair: (OpenSSH private key file content, public key line with ``comment``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, f"{public.decode('ascii')} {comment}"


def public_line_of(private_key_file: Path) -> str:
    """The public key line (without a comment) of an unencrypted OpenSSH private key file."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_private_key(private_key_file.read_bytes(), password=None)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return public.decode("ascii")


def fingerprint(public_line: str) -> str:
    """The SHA256 fingerprint of an OpenSSH public key line (``type base64 [comment]``), as ``ssh-keygen -l``
    shows it. ValueError when the line is not one."""
    fields = public_line.split()
    if len(fields) < 2:
        raise ValueError("not an OpenSSH public key line")
    blob = base64.b64decode(fields[1], validate=True)
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def ensure_admin_key(lab: Lab) -> str:
    """The lab's admin public key line, making the pair on first use (private key 0600 from birth)."""
    existing = read_admin_public(lab)
    if existing and admin_key_path(lab).is_file():
        return existing
    private, public = new_key_pair(f"homelab-admin-{lab.name}")
    path = admin_key_path(lab)
    write_secret(path, private)
    write_atomic(path.with_suffix(".pub"), public + "\n")
    return public
