"""Secrets: only ever from the environment or a 0600 file outside the lab repo; never logged."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from homelab.errors import SecretError
from homelab.lab.models import Lab
from homelab.masking import register
from homelab.paths import config_dir

TOKEN_ENV = "HOMELAB_PROXMOX_TOKEN"
PASSWORD_ENV = "HOMELAB_PROXMOX_PASSWORD"


def secrets_file() -> Path:
    """$HOMELAB_SECRETS, else <config dir>/secrets.yml."""
    return Path(os.environ.get("HOMELAB_SECRETS") or config_dir() / "secrets.yml")


def read_private_yaml(path: Path) -> object:
    """The YAML document of a secrets file that only its owner may read ({} when there is no file);
    SecretError when others may read it or it is not YAML. The caller checks its shape."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(f"{path}: readable by other users (mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        raise SecretError(f"{path}: not valid YAML") from None


def _file_secrets(lab_name: str) -> dict[str, str]:
    """The lab's section of the secrets file: ``<lab name>: {proxmox_token: ..., proxmox_password: ...}``."""
    path = secrets_file()
    data = read_private_yaml(path)
    section = data.get(lab_name, {}) if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise SecretError(f"{path}: {lab_name}: must be a mapping such as {{proxmox_token: ...}}")
    return {str(k): str(v) for k, v in section.items()}


@dataclass(frozen=True)
class ProxmoxAuth:
    """How to log in: an API token (preferred) or a user and password. repr never shows the secret."""

    token_id: str | None = None
    token_secret: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)


def proxmox_auth(lab: Lab) -> ProxmoxAuth:
    """The credentials for lab.proxmox, from the environment first, then the secrets file."""
    px = lab.proxmox
    if px.token_id:
        secret = os.environ.get(TOKEN_ENV) or _file_secrets(lab.name).get("proxmox_token")
        if not secret:
            raise SecretError(
                f"no secret for API token {px.token_id}: set {TOKEN_ENV}, or add "
                f"'{lab.name}: {{proxmox_token: ...}}' to {secrets_file()} (mode 0600)"
            )
        register(secret)
        return ProxmoxAuth(token_id=px.token_id, token_secret=secret)
    password = os.environ.get(PASSWORD_ENV) or _file_secrets(lab.name).get("proxmox_password")
    if not password:
        raise SecretError(
            f"no password for {px.user}: set {PASSWORD_ENV}, or add "
            f"'{lab.name}: {{proxmox_password: ...}}' to {secrets_file()} (mode 0600)"
        )
    register(password)
    return ProxmoxAuth(user=px.user, password=password)
