"""Half-open sessions: offers answered whose client never completed ICE.

A full stream, and a newcomer: a half-open session of another client address gives its slot
up once it is HALF_OPEN_GRACE_S old. A client that posts offers and never connects would
otherwise hold a concurrency_limit=1 stream shut until each offer's connect timeout, again
and again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from runtime.errors import EndReason
from runtime.media.session import Session

log = logging.getLogger("rtcpool.engine")

HALF_OPEN_GRACE_S = 5.0  # an answered offer that has not connected by then may give its slot to a newcomer


class HalfOpen:
    """Displaces the half-open sessions among ``live_sessions()`` for newcomers."""

    def __init__(self, live_sessions: Callable[[], list[Session]]) -> None:
        self._live_sessions = live_sessions
        # streams with a timer that displaces a half-open session for the line (see
        # displace_when_stale), and those timers
        self._displacing: set[str] = set()
        self._timers: set[asyncio.Task[None]] = set()

    async def displace(self, event_id: str, client: str) -> bool:
        """A full stream, and a newcomer: end the oldest session of another client address
        that was answered HALF_OPEN_GRACE_S ago or more and never connected (a half-open
        offer: its client never completed ICE). True if one was ended (its slot is back)."""
        now = time.monotonic()
        stale = [
            s for s in self._live_sessions()
            if s.event.event_id == event_id and s.connected_at is None and s.client != client
            and now - s.created_at >= HALF_OPEN_GRACE_S
        ]  # fmt: skip
        if not stale:
            return False
        victim = min(stale, key=lambda s: s.created_at)
        log.warning("session %s: ended half-open (no ICE after %.1f s) for a newcomer to the full stream %s", victim.webrtc_id, now - victim.created_at, event_id)
        await victim.aclose(EndReason.DISPLACED, "half-open: displaced by a newcomer to the full stream")
        return True

    def displace_when_stale(self, event_id: str, client: str) -> None:
        """Someone waits in line: the youngest half-open session of another address that is
        not stale yet is displaced once it is (one timer per engine and stream at a time)."""
        young = [
            s.created_at for s in self._live_sessions()
            if s.event.event_id == event_id and s.connected_at is None and s.client != client
        ]  # fmt: skip
        if not young or event_id in self._displacing:
            return
        delay = max(0.0, min(young) + HALF_OPEN_GRACE_S - time.monotonic())

        async def later() -> None:
            try:
                await asyncio.sleep(delay)
                await self.displace(event_id, client)
            finally:
                self._displacing.discard(event_id)

        self._displacing.add(event_id)
        task = asyncio.get_running_loop().create_task(later())
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    def cancel(self) -> None:
        """Stop every timer (the engine is closing)."""
        for task in list(self._timers):
            task.cancel()
