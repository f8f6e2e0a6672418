"""A front's media processes (``gateway.processes`` >= 2): start, placement, replacement.

The front starts N media processes on its node (runtime/media/media_process.py), places
each offer on the least loaded one and keeps signalling only. A thread reads each process's
load every MEDIA_POLL_S and replaces one that died; its sessions are gone with it (the
scheduler has given their leases back already), the others do not notice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime import constants as C
from runtime.config import Config
from runtime.control.messages import EngineLoad
from runtime.errors import ErrorCode, Refused
from runtime.front.engines import RemoteEngine
from runtime.media.stream_event import StreamEvent

log = logging.getLogger("rtcpool.gateway")

PLACED_CACHE_MAX = 4096  # sessions whose media process this front remembers (else: the directory)


@dataclass
class MediaSlot:
    """One of this front's media processes: its actor and its last measured load.

    ``unseen`` holds the offers placed here that the last reading may not count: in flight
    (None) or answered at a monotonic time. A reading asked for after an offer was answered
    counts its session, so only then is the offer dropped from ``unseen``; a burst of offers
    spreads out, and a reading that was under way while an offer was answered cannot
    erase it (issue 10: a 3-1 split of four sessions)."""

    index: int
    engine_id: str
    actor: Any
    load: EngineLoad
    unseen: dict[str, float | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # seen dead: no offer or resume goes here while its replacement starts (test-found: a
    # resume placed on the dead process was answered "session ended")
    dead: bool = False

    @property
    def engine(self) -> RemoteEngine:
        return RemoteEngine(self.actor)

    def score(self) -> float:
        return self.load.score() + len(self.unseen)

    def place(self, webrtc_id: str) -> None:
        with self.lock:
            self.unseen[webrtc_id] = None

    def answered(self, webrtc_id: str, ok: bool) -> None:
        with self.lock:
            if ok:
                self.unseen[webrtc_id] = time.monotonic()
            else:
                self.unseen.pop(webrtc_id, None)

    def reading(self, load: EngineLoad, asked_at: float) -> None:
        """A load reading asked for at ``asked_at`` (monotonic) arrived."""
        with self.lock:
            self.load = load
            self.unseen = {k: t for k, t in self.unseen.items() if t is None or t >= asked_at}


class MediaSupervisor:
    """The media processes of one front, and which of them holds which session."""

    def __init__(
        self,
        config: Config,
        gateway_id: str,
        scheduler: Callable[[], Any],
        events: Callable[[], list[StreamEvent]],
    ) -> None:
        self.config = config
        self.gateway_id = gateway_id
        self.node_id = ""
        self._scheduler = scheduler  # the current scheduler actor (it may be replaced)
        self._events = events  # the stream events, as a media process takes them
        self.slots: list[MediaSlot] = []
        self.placed: collections.OrderedDict[str, MediaSlot] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # --- start and replacement ----------------------------------------------------------------

    def start(self, count: int, node_id: str) -> None:
        """Start ``count`` media processes (blocking), then the thread that watches them."""
        self.node_id = node_id
        slots = [self._launch(i) for i in range(count)]
        for slot in slots:
            self._await(slot)
        self.slots = slots
        log.info("%d media processes: pids %s", len(slots), ", ".join(str(s.load.pid) for s in slots))
        self._stop.clear()
        self._thread = threading.Thread(target=self._supervise, name="rtcpool-media", daemon=True)
        self._thread.start()

    def _launch(self, index: int) -> MediaSlot:
        from runtime.media.media_process import start_media_process

        engine_id = f"{self.gateway_id}-m{index}-{uuid.uuid4().hex[:4]}"
        actor = start_media_process(self.config, engine_id, self.node_id)
        return MediaSlot(index, engine_id, actor, EngineLoad(engine_id, 0, self.node_id, 0, 0.0, 0.0))

    def _await(self, slot: MediaSlot) -> None:
        """Give a new media process the events and wait for it; tell the scheduler (which
        watches it from then on). A process that does not start in time is killed."""
        import ray

        try:
            slot.load = ray.get(slot.actor.start.remote(self._events()), timeout=C.MEDIA_START_TIMEOUT_S)
        except Exception:
            with contextlib.suppress(Exception):
                ray.kill(slot.actor, no_restart=True)
            raise
        ray.get(
            self._scheduler().register_media.remote(slot.engine_id, slot.actor, self.gateway_id, self.node_id, slot.load.pid),
            timeout=C.RAY_CALL_TIMEOUT_S,
        )

    def send_events(self) -> None:
        """A stream added after start: the media processes learn it (blocking)."""
        import ray

        events = self._events()
        refs = [s.actor.set_events.remote(events) for s in self.slots]
        with contextlib.suppress(Exception):  # a dead one gets them when it is replaced
            ray.get(refs, timeout=C.RAY_CALL_TIMEOUT_S)

    def _supervise(self) -> None:
        """Read each media process's load every MEDIA_POLL_S; replace one that died."""
        import ray
        from ray.exceptions import ActorDiedError, GetTimeoutError

        while not self._stop.wait(C.MEDIA_POLL_S):
            for slot in list(self.slots):
                try:
                    asked_at = time.monotonic()
                    slot.reading(ray.get(slot.actor.load.remote(), timeout=C.RAY_CALL_TIMEOUT_S), asked_at)
                except GetTimeoutError:
                    log.warning("media process %s (pid %s) did not report its load", slot.engine_id, slot.load.pid)
                except ActorDiedError as exc:
                    if self._stop.is_set():
                        return
                    log.warning("media process %s (pid %s) died: %s; starting another", slot.engine_id, slot.load.pid, str(exc).splitlines()[0])
                    self._replace(slot)
                except Exception as exc:
                    log.warning("media process %s: %s", slot.engine_id, exc)

    def _replace(self, dead: MediaSlot) -> None:
        dead.dead = True
        with self._lock:
            for key in [k for k, v in self.placed.items() if v is dead]:
                del self.placed[key]
            try:
                slot = self._launch(dead.index)
                self._await(slot)
            except Exception as exc:
                log.warning("starting a media process failed: %s; trying again at the next poll", exc)
                return
            self.slots = [slot if s is dead else s for s in self.slots]

    # --- placement ------------------------------------------------------------------------------

    def least_loaded(self, webrtc_id: str) -> MediaSlot:
        alive = [s for s in self.slots if not s.dead]
        if not alive:
            raise Refused(ErrorCode.NO_MEDIA_PROCESS, "no media process is running")
        slot = min(alive, key=MediaSlot.score)
        slot.place(webrtc_id)
        return slot

    def _remember(self, webrtc_id: str, slot: MediaSlot) -> None:
        self.placed[webrtc_id] = slot
        self.placed.move_to_end(webrtc_id)
        while len(self.placed) > PLACED_CACHE_MAX:
            self.placed.popitem(last=False)

    async def offer(
        self, event_id: str, webrtc_id: str, sdp: str, client: str | None, queue: bool, ticket: str | None
    ) -> dict[str, Any]:
        """An offer, on the least loaded media process."""
        if webrtc_id in self.placed:
            raise Refused(ErrorCode.DUPLICATE_WEBRTC_ID, f"a session {webrtc_id!r} is already active")
        slot = self.least_loaded(webrtc_id)
        # remembered before the call: a hang-up or a candidate for this offer meanwhile
        # goes to the process answering it
        self._remember(webrtc_id, slot)
        try:
            answer = await slot.engine.offer(event_id, webrtc_id, sdp, client, queue, ticket)
        except BaseException:  # refused, or the process did not answer
            slot.answered(webrtc_id, ok=False)
            self.placed.pop(webrtc_id, None)
            raise
        slot.answered(webrtc_id, ok=True)
        if answer.get("status") == "queued":  # a waiting client is nowhere yet
            self.placed.pop(webrtc_id, None)
        return answer

    async def resume(self, event_id: str, webrtc_id: str, sdp: str, key: Any, client: str | None) -> dict[str, Any]:
        """A resume offer (docs/failover.md): to the media process that holds the session if
        it is alive (the client's network changed), else to the least loaded one that is.
        A process that turns out dead (this front has not noticed yet) is passed over."""
        from ray.exceptions import ActorDiedError

        from runtime.front.engines import OFFER_FORWARD_TIMEOUT_S, raise_refusal

        tried: set[int] = set()
        owner = self.placed.get(webrtc_id)
        while True:
            slot = owner if owner is not None and id(owner) not in tried and not owner.dead else None
            if slot is None:
                alive = [s for s in self.slots if id(s) not in tried and not s.dead]
                if not alive:
                    raise Refused(ErrorCode.NO_MEDIA_PROCESS, "no live media process to resume on: try again")
                slot = min(alive, key=MediaSlot.score)
            tried.add(id(slot))
            try:
                answer = await asyncio.wait_for(
                    slot.actor.resume.remote(event_id, webrtc_id, sdp, key, client), OFFER_FORWARD_TIMEOUT_S
                )
            except ActorDiedError:
                slot.dead = True  # the supervisor replaces it at its next poll
                continue
            except TimeoutError as exc:
                raise Refused(ErrorCode.MEDIA_TIMEOUT, "the media process did not answer the resume") from exc
            raise_refusal(answer)
            self._remember(webrtc_id, slot)
            return dict(answer)

    async def ask_each(self, method: str, *args: Any) -> list[Any]:
        """``method(*args)`` of every media process, one after another, each within
        RAY_CALL_TIMEOUT_S; a dead or silent one has nothing to say (left out)."""
        answers = []
        for slot in list(self.slots):
            with contextlib.suppress(Exception):
                answers.append(await asyncio.wait_for(getattr(slot.actor, method).remote(*args), C.RAY_CALL_TIMEOUT_S))
        return answers

    async def stalled(self, timeout_s: float) -> list[str]:
        """Readiness problems of this front's media processes: each whose event loop is
        stalled now (gateway.loop_stall_warn_ms; runtime/media/stall_guard.py), asked all at
        once. The probe answers on a thread of its own, so one that does not answer within
        ``timeout_s`` is stuck past its loop (a C call holding the GIL stalls the guard's
        thread too): a problem as well. A dead one is not: the supervisor replaces it."""
        async def ask(slot: MediaSlot) -> str | None:
            try:
                stall_s = await asyncio.wait_for(slot.actor.loop_stall.remote(), timeout_s)
            except TimeoutError:
                return f"media process {slot.engine_id} did not answer its readiness probe within {timeout_s:.0f} s"
            except Exception:
                return None  # dead or going (ActorDiedError and the like): replaced, not waited for
            return f"media process {slot.engine_id}: event loop stalled for {stall_s:.1f} s" if stall_s > 0 else None

        return [p for p in await asyncio.gather(*(ask(s) for s in list(self.slots))) if p is not None]

    # --- the end --------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop watching, then end every media process and tell the scheduler. Safe twice."""
        import ray

        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, C.RAY_CALL_TIMEOUT_S)
        slots, self.slots = self.slots, []
        self.placed.clear()
        scheduler = self._scheduler()

        async def close(slot: MediaSlot) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(slot.actor.aclose.remote(), C.RAY_CALL_TIMEOUT_S + C.CLOSE_ACK_TIMEOUT_S)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(scheduler.forget_gateway.remote(slot.engine_id), C.RAY_CALL_TIMEOUT_S)
            with contextlib.suppress(Exception):
                ray.kill(slot.actor, no_restart=True)

        await asyncio.gather(*(close(s) for s in slots))
