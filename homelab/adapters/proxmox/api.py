"""The Proxmox API as homelab uses it: a Transport Protocol, retries, task waiting.

Knows no SDK: client.py (the only module that imports proxmoxer) provides the Transport, connect.py joins the two.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import urlsplit

from homelab.errors import ConnectionLost, Interrupted, OperationTimeout, ProxmoxError, TaskFailed
from homelab.interrupts import deferring_interrupts

# Where pveproxy listens when the lab's URL names no port: the API client assumes it, and so must every tool
# homelab hands the URL to (Packer would otherwise try 443).
DEFAULT_PORT = 8006


def with_port(address: str) -> str:
    """``https://host[:port][/]`` as ``https://host:port``, the port being DEFAULT_PORT when none is given."""
    url = urlsplit(address.rstrip("/"))
    host = url.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{url.scheme}://{host}:{url.port or DEFAULT_PORT}"


class Transport(Protocol):
    """The one call an SDK adapter provides: method, path, params -> data, or ProxmoxError. An adapter may also
    provide ``request_many(paths, connections) -> list`` (GETs at once: each answer's data, or NOT_ANSWERED)."""

    def request(self, method: str, path: str, params: dict[str, Any]) -> Any: ...


# A read request_many did not answer (an error, a lost connection): PveApi reads it again the ordinary way.
NOT_ANSWERED: Any = type("NotAnswered", (), {"__repr__": lambda self: "NOT_ANSWERED"})()


@dataclass
class RetryPolicy:
    """How often and how patiently transient failures are retried."""

    attempts: int = 6
    first_delay: float = 0.2
    max_delay: float = 5.0
    sleep: Callable[[float], None] = time.sleep
    # A lost connection (no answer at all) is retried this long, whatever the attempts, even by a caller that
    # polls on its own: then it is reported as the lost connection, not as what was being waited for.
    connection_grace: float = 45.0


@dataclass
class PveApi:
    """Proxmox calls with retries of transient failures, call counting and task waiting."""

    transport: Transport
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    calls: Counter[str] = field(default_factory=Counter)
    # Set (by the executor) when the user interrupts: task and agent waits stop at their next poll.
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _answered: bool = field(default=False, repr=False)  # Proxmox has answered once: no answer now is a lost link

    def request(self, method: str, path: str, _retry: bool = True, **params: Any) -> Any:
        """One API call; transient failures (network, 5xx locks, agent not yet up) are retried with backoff.

        ``_retry=False`` makes one attempt (for callers that poll on their own).
        """
        delay = self.retry.first_delay
        attempts = self.retry.attempts if _retry else 1
        attempt, lost_since = 0, None
        while True:
            attempt += 1
            with self._lock:
                self.calls[method] += 1
            try:
                answer = self.transport.request(method, path, {k: v for k, v in params.items() if v is not None})
                self._answered = True
                return answer
            except ConnectionLost as exc:
                if not self._answered:  # never reached in this run: a wrong address, not a lost connection
                    if attempt >= attempts:
                        raise
                else:
                    lost_since = time.monotonic() if lost_since is None else lost_since
                    if time.monotonic() - lost_since >= self.retry.connection_grace:
                        raise ConnectionLost(
                            f"lost the connection to Proxmox: no answer for {self.retry.connection_grace:g}s "
                            f"({exc}); run the command again once Proxmox answers",
                            transient=False,  # final: callers that poll on their own stop here too
                        ) from None
            except ProxmoxError as exc:
                if not exc.transient or attempt >= attempts:
                    raise
            if self.cancel.is_set():
                raise Interrupted(f"interrupted while retrying {method} {path}")
            self.retry.sleep(delay)
            delay = min(delay * 2, self.retry.max_delay)

    def shielded(self) -> PveApi:
        """The same connection (and call counts), deaf to the user's Ctrl-C: for the few calls that must still
        be made after it, such as a replacement's rollback (each still bounded by its own timeout)."""
        return replace(self, cancel=threading.Event(), _lock=threading.Lock())

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, **params)

    def get_many(self, paths: Sequence[str], readers: int, pool: Executor | None = None) -> list[Any]:
        """GET every path (no parameters), ``readers`` at once; the answers in the order of ``paths``. Through the
        transport's own many-at-once reads when it has them; what those leave (and everything otherwise) goes one
        call each, with retries, in ``pool`` or ``readers`` threads: errors are those of ``get``."""
        answers = [NOT_ANSWERED] * len(paths)
        many = getattr(self.transport, "request_many", None)
        if many is not None and paths:
            with self._lock:
                self.calls["GET"] += len(paths)
            answers = many(paths, readers)
            self._answered = self._answered or any(a is not NOT_ANSWERED for a in answers)
        left = [i for i, answer in enumerate(answers) if answer is NOT_ANSWERED]
        if left:
            own = None if pool is not None else ThreadPoolExecutor(readers, thread_name_prefix="homelab-read")

            def read(i: int) -> Any:
                if self.cancel.is_set():  # Ctrl-C: the reads not yet sent are not sent
                    raise Interrupted(f"interrupted before GET {paths[i]}")
                return self.get(paths[i])

            try:
                with deferring_interrupts(self.cancel):
                    for i, answer in zip(left, (pool or own).map(read, left), strict=True):  # type: ignore[union-attr]
                        answers[i] = answer
            finally:
                if own is not None:
                    own.shutdown(cancel_futures=True)
        return answers

    def get_once(self, path: str, **params: Any) -> Any:
        """A GET without retries, for callers that poll on their own."""
        return self.request("GET", path, False, **params)

    def post(self, path: str, **params: Any) -> Any:
        return self.request("POST", path, **params)

    def put(self, path: str, **params: Any) -> Any:
        return self.request("PUT", path, **params)

    def delete(self, path: str, **params: Any) -> Any:
        return self.request("DELETE", path, **params)

    @property
    def writes(self) -> int:
        """Calls that can change something (POST, PUT, DELETE)."""
        return self.calls["POST"] + self.calls["PUT"] + self.calls["DELETE"]

    def wait_task(
        self,
        node: str,
        upid: str,
        timeout: float,
        what: str = "task",
        poll: float = 0.05,
        max_poll: float = 2.0,
    ) -> None:
        """Poll a worker task until it stops; raise TaskFailed with PVE's message, or OperationTimeout."""
        deadline = time.monotonic() + timeout
        delay = poll
        while True:
            if self.cancel.is_set():
                raise Interrupted(f"interrupted while waiting for the {what} (task {upid} goes on on {node})")
            status = self.get(f"/nodes/{node}/tasks/{upid}/status")
            if status.get("status") == "stopped":
                exit_status = str(status.get("exitstatus", ""))
                if exit_status == "OK" or exit_status.startswith("WARNINGS"):
                    return
                raise TaskFailed(f"{what} failed on Proxmox: {exit_status or 'unknown error'}")
            if time.monotonic() >= deadline:
                raise OperationTimeout(
                    f"{what} did not finish within {timeout:g}s (task {upid} is still running on {node})"
                )
            self.retry.sleep(delay)
            delay = min(delay * 1.5, max_poll)

    def run_task(self, method: str, path: str, node: str, timeout: float, what: str, **params: Any) -> None:
        """Start a worker task (the call answers with a UPID) and wait for it."""
        upid = self.request(method, path, **params)
        if isinstance(upid, str) and upid.startswith("UPID:"):
            self.wait_task(node, upid, timeout, what)
