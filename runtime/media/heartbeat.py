"""The lease heartbeat: one loop, run on a thread of its own or as a task.

An engine beats to the scheduler every HEARTBEAT_S from start-up, not from the first offer:
the scheduler keeps a gateway's pools while it beats (a detached scheduler drops pools whose
gateways are all gone) and reclaims the leases of a gateway silent past its TTL. A beat tells
the engine's leases, its streams, each lease's transport and its load; the answer names the
leases the scheduler no longer knows (their sessions end) and the streams it forgot
(registered again by whoever holds their handlers: the front).

The loop is one coroutine, driven two ways. The front runs it on a thread with an event loop
of its own: the front's engine starts before any event loop of the app exists (the CLI,
Gradio's launch()), and a beat is one small Ray call. A media process, an async Ray actor,
runs it as a task on its own loop: there a blocking ray.get, even on a thread, is flagged
by Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from runtime import constants as C
from runtime.control.messages import EngineLoad, HeartbeatAnswer
from runtime.errors import EndReason

if TYPE_CHECKING:
    from runtime.media.session import Session

log = logging.getLogger("rtcpool.engine")


class HeartbeatHost(Protocol):
    """What the heartbeat needs of the engine it beats for."""

    gateway_id: str
    scheduler: Any  # the scheduler actor's handle, read afresh at every beat
    on_unknown_event: Callable[[str], None] | None  # blocking: registers a stream again

    @property
    def events(self) -> Mapping[str, Any]: ...

    def leased_sessions(self) -> dict[str, Session]:
        """Its sessions by lease id (called off the engine's loop on a thread: a copy)."""
        ...

    def load(self) -> EngineLoad: ...

    def scheduler_died(self, dead: Any) -> None:
        """Blocking: the scheduler actor died; replace it."""
        ...


class Heartbeat:
    """Beats for ``host`` until :meth:`aclose`, from :meth:`start_thread` or :meth:`start_task`."""

    def __init__(self, host: HeartbeatHost) -> None:
        self._host = host
        self._stop = threading.Event()
        # the running loop's wake-up, set in one assignment so stop() on another thread
        # sees either nothing (then the loop checks the flag before it sleeps) or both
        self._waker: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def start_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run_on_thread, name="rtcpool-heartbeat", daemon=True)
            self._thread.start()

    def start_task(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _run_on_thread(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        wake = asyncio.Event()
        self._waker = (asyncio.get_running_loop(), wake)
        while not self.stopped:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), C.HEARTBEAT_S)
            if self.stopped:
                return
            await self.beat()

    async def beat(self) -> None:
        from ray.exceptions import ActorDiedError

        host = self._host
        live, scheduler = host.leased_sessions(), host.scheduler
        try:
            answer = await asyncio.wait_for(self._call(scheduler, live), C.RAY_CALL_TIMEOUT_S)
        except ActorDiedError:
            if not self.stopped:
                with contextlib.suppress(Exception):  # tried again at the next beat
                    await asyncio.to_thread(host.scheduler_died, scheduler)
            return
        except Exception as exc:
            log.warning("scheduler heartbeat failed: %s", exc)
            return
        self._take_answer(answer, live)

    def _call(self, scheduler: Any, live: dict[str, Session]) -> Any:
        return scheduler.heartbeat.remote(
            self._host.gateway_id,
            list(live),
            list(self._host.events),
            {lid: s.transport for lid, s in live.items()},
            self._host.load(),
        )

    def _take_answer(self, answer: HeartbeatAnswer, live: dict[str, Session]) -> None:
        for lease_id in answer.gone:
            session = live.get(lease_id)
            if session is not None:
                with contextlib.suppress(RuntimeError):  # its loop has closed: nothing to end
                    session.loop.call_soon_threadsafe(end_reclaimed, session)
        on_unknown = self._host.on_unknown_event
        for event_id in answer.unknown_events:
            # dropped while this gateway was taken for gone (silent past the TTL)
            if on_unknown is not None and not self.stopped:
                on_unknown(event_id)

    def stop(self) -> None:
        """No beat starts after this (one in flight still lands: see :meth:`aclose`)."""
        self._stop.set()
        waker = self._waker
        if waker is not None:
            loop, wake = waker
            with contextlib.suppress(RuntimeError):  # its loop has ended
                loop.call_soon_threadsafe(wake.set)

    async def aclose(self) -> None:
        """Stop beating and wait up to RAY_CALL_TIMEOUT_S for a beat in flight: a beat after
        the engine's forget_gateway would make it known again. Safe to call twice."""
        self.stop()
        thread, task = self._thread, self._task
        self._thread = self._task = None
        if thread is not None:
            await asyncio.to_thread(thread.join, C.RAY_CALL_TIMEOUT_S)
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=C.RAY_CALL_TIMEOUT_S)
            if not done:
                task.cancel()


def end_reclaimed(session: Session) -> None:
    """The scheduler no longer knows the session's lease: its slot may be someone else's."""
    session.send_client("end_stream", {"reason": "lease_reclaimed"})
    session.close_soon(EndReason.LEASE_RECLAIMED, "the scheduler reclaimed the lease", delay=C.END_STREAM_GRACE_S)
