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
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def deferring_interrupts(*events: threading.Event) -> Iterator[None]:
    """Within the block, SIGINT sets ``events`` (the workers stop at their next step) instead of raising; on
    leaving it, KeyboardInterrupt is raised if one came (from whatever the block raised, if it raised).

    A second Ctrl-C changes nothing: what the workers still do after the first (a replacement going back to
    the old VM) is bounded by its own timeouts. Outside the main thread, or where SIGINT is ignored, the block
    runs as it is: signals reach only the main thread's handlers.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) in (
        signal.SIG_IGN,
        None,
    ):
        yield
        return
    came = threading.Event()

    def defer(signum: int, frame: FrameType | None) -> None:
        came.set()
        for event in events:
            event.set()

    previous = signal.signal(signal.SIGINT, defer)
    try:
        yield
    except BaseException as exc:
        if came.is_set() and not isinstance(exc, KeyboardInterrupt):
            raise KeyboardInterrupt from exc
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if came.is_set():
        raise KeyboardInterrupt


__all__ = ["deferring_interrupts"]
