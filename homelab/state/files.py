"""Writing local files atomically (temp file in the same folder, then rename): one for plain files, one for secrets.

A reader never sees half a file. A secret (a private key, an unattended-install file holding one) is 0600
from birth: its temp file is created with that mode, so it is never briefly readable by others.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a text file that holds no secret (inventories, known_hosts, records, the lab file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace(path, text.encode("utf-8"), mode)


def write_secret(path: Path, data: bytes) -> None:
    """Write a secret file, 0600 from birth, in a folder made 0700 when it is new."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _replace(path, data, 0o600)


def _replace(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
