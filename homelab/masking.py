"""Secrets never reach the terminal or a log: every message homelab shows passes through :func:`mask`.

The secrets of this run (the API token's secret, a password) are registered where they are read
(homelab.state.secrets); text from servers is masked too, since a server or proxy may echo a request's
Authorization header or cookie back in an error. Credential-shaped text (a PVEAPIToken header, a login
cookie) is masked even when its secret was never registered here.
"""

from __future__ import annotations

import re
import threading

MASK = "***"
_SHAPES = re.compile(
    r"(?P<keep>PVEAPIToken[= ]\s*[^\s=\"']+[=:]|PVEAuthCookie=|CSRFPreventionToken[\"']?\s*[:=]\s*[\"']?|"
    r"[Aa]uthorization[\"']?\s*[:=]\s*[\"']?(?:Bearer |Basic |PVEAPIToken[= ])?)"
    r"(?P<secret>[^\s\"',;&]+)"
)
_secrets: set[str] = set()
_lock = threading.Lock()


def register(*secrets: str | None) -> None:
    """Remember this run's secrets, so that no message shows them (values under 6 characters are not worth it)."""
    with _lock:
        _secrets.update(s for s in secrets if s and len(s) >= 6)


def mask(text: str) -> str:
    """``text`` with every registered secret and every credential-shaped value replaced by ``***``."""
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        text = text.replace(secret, MASK)
    return _SHAPES.sub(lambda m: m.group("keep") + MASK, text)
