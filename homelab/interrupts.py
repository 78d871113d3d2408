"""Ctrl-C while worker threads run: a flag the workers see, never an exception in the middle of the main thread's
wait for them.

Python raises KeyboardInterrupt wherever the main thread happens to be when SIGINT arrives. While it waits on
futures (``concurrent.futures.wait``, ``Executor.map``, ``Future.result``), that can be just after it took a
future's lock and before the code that releases it: the worker that finishes that future then blocks on the
lock forever, and so does the main thread's ``shutdown(wait=True)``. A killed-at-random `homelab apply` hung
this way (the workers had printed that they stopped; the command never ended). So while workers run, SIGINT
only sets the events they watch; the KeyboardInterrupt is raised when the main thread leaves the block, at a
point of its own choosing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

# The signals a Python handler may turn into an exception (SIGINT always: its default handler raises
# KeyboardInterrupt; SIGTERM and SIGHUP where a handler was installed, as `homelab demo` does).
SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextmanager
def deferring_interrupts(*events: threading.Event) -> Iterator[None]:
    """Within the block, SIGINT (and SIGTERM, SIGHUP where a Python handler takes them) sets ``events``, so the
    workers stop at their next step, instead of raising; on leaving the block, the first such signal goes to the
    handler it was meant for (Ctrl-C: KeyboardInterrupt), from whatever the block raised, if it raised.

    A second Ctrl-C changes nothing: what the workers still do after the first (a replacement going back to
    the old VM) is bounded by its own timeouts. Outside the main thread the block runs as it is: signals reach
    only the main thread's handlers. An ignored signal (SIG_IGN) or one left to the system (SIG_DFL) is left so.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}
    meant: dict[int, Callable[[int, FrameType | None], Any]] = {
        sig: handler for sig, handler in handlers.items() if callable(handler)
    }
    came: list[int] = []

    def defer(signum: int, frame: FrameType | None) -> None:
        came.append(signum)
        for event in events:
            event.set()

    for sig in meant:
        signal.signal(sig, defer)
    try:
        yield
    except BaseException as exc:
        if came and not isinstance(exc, KeyboardInterrupt):
            try:
                meant[came[0]](came[0], None)
            except BaseException as delivered:
                raise delivered from exc
        raise
    finally:
        for sig, handler in meant.items():
            signal.signal(sig, handler)
    if came:
        meant[came[0]](came[0], None)


__all__ = ["SIGNALS", "deferring_interrupts"]
