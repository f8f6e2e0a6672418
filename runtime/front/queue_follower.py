"""The front's side of the waiting room: its clients' updates streams, from one long poll.

Every client waiting in a line (runtime/control/waiting_room.py, inside the scheduler) follows its
ticket on ``GET /webrtc/queue``, a server-sent-events stream of its position and ETA. A front
serves any number of them with one outstanding call to the scheduler at a time
(``Scheduler.queue_wait``): it names every ticket followed here, which keeps them alive, and
returns when any line changes (or after ``QUEUE_POLL_S``, with fresh ETAs). Each view is
handed to the streams that follow that ticket, once per change. A waiting client so costs
the front one queue and a few hundred bytes, and the scheduler nothing per second.

How many streams one ticket and one client address may hold open is bounded
(``queue.max_update_streams_per_ticket``, ``queue.max_update_streams_per_address``):
:meth:`QueueFollower.admit` is taken before the stream's response starts, so a refusal is
a 429 with a JSON reason, not a stream that ends at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from runtime import constants as C
from runtime.control.waiting_room import TicketState
from runtime.errors import ErrorCode
from runtime.guard.socket_limits import (
    MAX_QUEUE_STREAMS_PER_ADDRESS,
    MAX_QUEUE_STREAMS_PER_TICKET,
    QUEUE_STREAMS_RETRY_AFTER_S,
    Hold,
    HoldCounter,
)

log = logging.getLogger("rtcpool.queue")

RETRY_S = 1.0  # after a failed poll (the scheduler restarting), the next one
UPDATES_QUEUE_MAX = 8  # views waiting for one slow updates stream; older ones are dropped
Key = tuple[str, str]  # (ticket secret, webrtc_id)


class StreamHolds:
    """One updates stream's places under the per-ticket and per-address bounds; released
    once, however often :meth:`release` is called (the stream's end, and its garbage
    collection when its response never started)."""

    __slots__ = ("_holds",)

    def __init__(self, *holds: Hold | None) -> None:
        self._holds = [h for h in holds if h is not None]

    def release(self) -> None:
        holds, self._holds = self._holds, []
        for hold in holds:
            hold.release()


class QueueFollower:
    """``scheduler()`` gives the deployment's scheduler handle (it may be replaced)."""

    def __init__(
        self,
        scheduler: Callable[[], Any],
        per_ticket: int = MAX_QUEUE_STREAMS_PER_TICKET,
        per_address: int = MAX_QUEUE_STREAMS_PER_ADDRESS,
        *,
        exempt_loopback: bool = False,
    ) -> None:
        self._scheduler = scheduler
        what = "queue update streams"
        retry = QUEUE_STREAMS_RETRY_AFTER_S
        self._per_ticket = HoldCounter(per_ticket, code=ErrorCode.TOO_MANY_QUEUE_STREAMS, what=what, per="ticket", retry_after_s=retry)
        self._per_address = HoldCounter(per_address, code=ErrorCode.TOO_MANY_QUEUE_STREAMS, what=what, per="client address", retry_after_s=retry)
        self._exempt_loopback = exempt_loopback
        self._subs: dict[Key, set[asyncio.Queue[dict[str, Any]]]] = {}
        self._last: dict[Key, dict[str, Any]] = {}
        self._version = -1
        self._task: asyncio.Task[None] | None = None

    @property
    def followed(self) -> int:
        return len(self._subs)

    def admit(self, secret: str, address: str | None) -> StreamHolds:
        """Count one more updates stream on ``secret`` and, given an ``address`` (an HTTP
        client; a WebSocket client's own line is bounded by its socket), on that address;
        Refused 429 too_many_queue_streams past either bound."""
        ticket = self._per_ticket.take(secret)
        if address is None:
            return StreamHolds(ticket, None)
        try:
            return StreamHolds(ticket, self._per_address.take_for_address(address, exempt_loopback=self._exempt_loopback))
        except BaseException:
            ticket.release()
            raise

    @property
    def held(self) -> tuple[int, int]:
        """(update streams counted on tickets, on addresses): both 0 when none is open."""
        return self._per_ticket.total, self._per_address.total

    async def first_view(self, secret: str, webrtc_id: str) -> dict[str, Any]:
        """The ticket's view now (one call: the shared poll may be mid-wait)."""
        _, views = await asyncio.wait_for(
            self._scheduler().queue_wait.remote([[secret, webrtc_id]], -1, 0.0), C.RAY_CALL_TIMEOUT_S
        )
        view: dict[str, Any] = views[secret].to_json()
        return view

    async def updates(
        self, secret: str, webrtc_id: str, first: dict[str, Any], keepalive_s: float
    ) -> AsyncIterator[dict[str, Any] | None]:
        """The ticket's views, from ``first`` on, until it is admitted or gone; None after
        ``keepalive_s`` without one (the stream's keep-alive)."""
        key = (secret, webrtc_id)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(UPDATES_QUEUE_MAX)
        self._subs.setdefault(key, set()).add(queue)
        self._last.setdefault(key, first)
        self._ensure_polling()
        try:
            view: dict[str, Any] | None = first
            while True:
                yield view
                if view is not None and view["state"] != TicketState.WAITING:
                    return
                try:
                    view = await asyncio.wait_for(queue.get(), keepalive_s)
                except TimeoutError:
                    view = None
        finally:
            subs = self._subs.get(key)
            if subs is not None:
                subs.discard(queue)
                if not subs:
                    del self._subs[key]
                    self._last.pop(key, None)

    def _ensure_polling(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        polled: set[Key] = set()
        while self._subs:
            keys = list(self._subs)
            # a ticket followed since the last poll was not in its answer: ask for the views
            # at once (since -1) rather than wait past a change it has not been told of
            since = self._version if polled.issuperset(keys) else -1
            polled = set(keys)
            try:
                version, views = await asyncio.wait_for(
                    self._scheduler().queue_wait.remote([list(k) for k in keys], since, C.QUEUE_POLL_S),
                    C.QUEUE_POLL_S + C.RAY_CALL_TIMEOUT_S,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("the scheduler did not answer the queue's poll: %s", exc)
                await asyncio.sleep(RETRY_S)
                continue
            self._version = version
            for key in keys:
                typed = views.get(key[0])
                view = None if typed is None else typed.to_json()
                if view is None or self._last.get(key) == view:
                    continue
                self._last[key] = view
                for queue in self._subs.get(key, ()):
                    if queue.full():  # a stream that stopped reading: only the newest matters
                        with contextlib.suppress(asyncio.QueueEmpty):
                            queue.get_nowait()
                    queue.put_nowait(view)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is None or task.done():
            return
        loop = task.get_loop()
        if loop is not asyncio.get_running_loop():  # the routes' loop, from another thread
            loop.call_soon_threadsafe(task.cancel)
            return
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
