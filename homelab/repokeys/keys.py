"""Deploy key pairs: ed25519 in OpenSSH format, kept in the lab's state folder, never in the lab repo.

Layout of ``<state dir>/deploy-keys/``::

    id_ed25519, id_ed25519.pub            the current key (what the VMs use)
    pending_ed25519, pending_ed25519.pub  a key a rotation made and has not finished switching to
    retired/<when>_ed25519[.pub]          keys a finished rotation replaced
    known_hosts                           the pinned host key of the config repo's git host
    rotations.jsonl                       one line per rotation (append-only)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from homelab.adapters.sshkeys import fingerprint, new_key_pair, public_line_of
from homelab.errors import InputError
from homelab.lab.models import Lab
from homelab.paths import state_dir
from homelab.state.files import write_atomic, write_secret
from homelab.state.reading import StateFileError, read_state_text

CURRENT = "id_ed25519"
PENDING = "pending_ed25519"


@dataclass(frozen=True)
class DeployKey:
    """A key pair on disk. Only the path of the private half is held, never its content."""

    private_path: Path
    public_line: str

    @property
    def public_path(self) -> Path:
        """The ``.pub`` file beside the private key."""
        return self.private_path.with_name(self.private_path.name + ".pub")

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` of the public key."""
        return fingerprint(self.public_line)

    @property
    def comment(self) -> str:
        """The comment of the public key line (``homelab-<lab>-<date>``)."""
        fields = self.public_line.split(maxsplit=2)
        return fields[2] if len(fields) > 2 else ""

    def private_bytes(self) -> bytes:
        """The private key file's content, for installing it on a host. Never print or log it."""
        return self.private_path.read_bytes()


class KeyStore:
    """The deploy keys of one lab, in ``<state dir>/deploy-keys``."""

    def __init__(self, lab: Lab):
        self.lab_name = lab.name
        self.root = state_dir(lab.name) / "deploy-keys"

    @property
    def known_hosts(self) -> Path:
        """The pinned host key(s) of the git host."""
        return self.root / "known_hosts"

    @property
    def rotation_log(self) -> Path:
        """Append-only record of rotations (JSON lines)."""
        return self.root / "rotations.jsonl"

    def _load(self, name: str) -> DeployKey | None:
        path = self.root / name
        if not path.exists():
            return None
        pub = path.with_name(name + ".pub")
        line = (read_state_text(pub, "deploy key's public half") or "").strip()
        if not line:
            try:
                line = public_line_of(path)
            except (OSError, ValueError) as exc:
                raise StateFileError(
                    path,
                    f"the deploy key cannot be read ({exc})",
                    "restore it, or make a new one: homelab keys generate --force",
                ) from None
        try:
            fingerprint(line)
        except ValueError:
            raise StateFileError(
                pub, "not an OpenSSH public key line (damaged)", f"remove it: it is made again from {path}"
            ) from None
        return DeployKey(path, line)

    def current(self) -> DeployKey | None:
        """The key the VMs should use, or None before ``homelab keys generate``."""
        return self._load(CURRENT)

    def require_current(self) -> DeployKey:
        """The current key; an InputError that says what to run when there is none."""
        key = self.current()
        if key is None:
            raise InputError(f"lab {self.lab_name!r} has no deploy key yet; run: homelab keys generate")
        return key

    def pending(self) -> DeployKey | None:
        """The key an unfinished rotation is switching to, if any."""
        return self._load(PENDING)

    def create(self, name: str, *, force: bool = False) -> DeployKey:
        """Generate a key pair under ``name``; refuse to replace one unless ``force``."""
        path = self.root / name
        existing = self._load(name)
        if existing is not None and not force:
            raise InputError(
                f"{path} already exists (fingerprint {existing.fingerprint}); use --force to replace it "
                "(VMs and the git host that use it will stop working: `homelab keys rotate` is the safe way)"
            )
        comment = f"homelab-{self.lab_name}-{datetime.now(UTC):%Y-%m-%d}"
        private, public = new_key_pair(comment)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The private key is 0600 from birth (O_EXCL temp file created 0600, then renamed).
        write_secret(path, private)
        write_atomic(path.with_name(name + ".pub"), public + "\n")
        return DeployKey(path, public)

    def promote_pending(self) -> tuple[DeployKey | None, DeployKey]:
        """Make the pending key current; the old current moves to retired/. Returns (retired, new current)."""
        pending = self.pending()
        if pending is None:
            raise InputError("no pending key to switch to")
        old = self.current()
        retired: DeployKey | None = None
        if old is not None:
            stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S}"
            target = self.root / "retired" / f"{stamp}_ed25519"
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.replace(old.public_path, target.with_name(target.name + ".pub"))
            os.replace(old.private_path, target)
            retired = DeployKey(target, old.public_line)
        current = self.root / CURRENT
        os.replace(pending.public_path, current.with_name(CURRENT + ".pub"))
        os.replace(pending.private_path, current)
        return retired, DeployKey(current, pending.public_line)
