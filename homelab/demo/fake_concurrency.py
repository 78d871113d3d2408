"""How many API requests the fake serves at once: the peak of requests in flight since the last reading.

A client that claims to read in parallel with a bounded number of readers is tested against what the server
saw (``FakeProxmox.call("concurrency", clear=True)``), not against its own bookkeeping. The count spans the
whole request, the fake's network latency included, so parallel readers overlap exactly as on a real LAN.
"""

from __future__ import annotations

from typing import Any


class ConcurrencySeen:
    """Mixin of the fake's FakePve: counts requests in flight and keeps the highest count."""

    _in_flight = 0
    _peak_in_flight = 0

    def _build_app(self) -> Any:
        from aiohttp import web  # the demo extra, like fakepve

        @web.middleware
        async def count(request: Any, handler: Any) -> Any:
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
            try:
                return await handler(request)
            finally:
                self._in_flight -= 1

        app = super()._build_app()  # type: ignore[misc]
        app.middlewares.insert(0, count)
        return app

    def control_concurrency(self, clear: bool = False) -> int:
        """The most requests served at once since the last clear (and start counting afresh with ``clear``)."""
        peak = self._peak_in_flight
        if clear:
            self._peak_in_flight = self._in_flight
        return peak
