"""A media process: a Ray actor pinned to its front's node that runs one media engine.

With ``gateway.processes: N >= 2`` the app's process keeps the HTTP routes (signalling) and
places each new session on one of N media processes beside it; that process answers the
offer, and RTP, DTLS, SCTP and the codecs of the session run there only, on its own event
loop and GIL (Ray runs an async actor's methods on one uvloop). The front reaches a session
by a Ray call (control plane only: nothing per frame crosses Ray), from any gateway of the
deployment: the scheduler's session directory names the media process of each session.

A media process that dies takes only its own sessions: the scheduler, which waits on
:meth:`MediaProcess.run` of every media process, gives their leases back the moment Ray
reports the actor dead, and the front starts a replacement.

Every method returns a value, never raises: a refusal comes back as the
:class:`runtime.errors.Refused` it raised (it pickles by its fields), which the front raises.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from typing import Any

import ray

from runtime.config import Config
from runtime.control.messages import EngineLoad
from runtime.errors import Refused
from runtime.media.engine import MediaEngine
from runtime.media.session_view import SessionView
from runtime.media.stream_event import StreamEvent
from runtime.ops import logs
from runtime.ops.metrics import EngineMetrics
from workers.link.wire import OutputsKind

log = logging.getLogger("rtcpool.media")

MEDIA_ACTOR_CONCURRENCY = 1000  # concurrent calls a media process takes (offers wait on Ray)
# Ray runs an async actor's concurrency group on an event loop and thread of its own: the
# probe answers there, since the sessions' loop it reports on may be the one that is stalled
PROBE_GROUP = "probe"


class EngineCalls:
    """The per-session calls a front forwards, over one engine, as plain values (see the
    module docstring): a media process's methods, and what an app process whose engine
    holds sessions itself answers through its inbox (runtime/media/inbox.py)."""

    def __init__(self, engine: MediaEngine) -> None:
        self.engine = engine
        self._subs: dict[int, tuple[Any, asyncio.Queue[list[Any]]]] = {}
        self._sub_ids = itertools.count(1)

    async def offer(
        self, event_id: str, webrtc_id: str, sdp: str, client: str | None = None, queue: bool = True, ticket: str | None = None
    ) -> dict[str, Any] | Refused:
        try:
            return await self.engine.offer(event_id, webrtc_id, sdp, client, queue, ticket)
        except Refused as err:
            return err

    async def resume(self, event_id: str, webrtc_id: str, sdp: str, key: Any, client: str | None = None) -> dict[str, Any] | Refused:
        try:
            return await self.engine.resume(event_id, webrtc_id, sdp, key, client)
        except Refused as err:
            return err

    async def candidate(self, webrtc_id: str, key: Any, cand: Any) -> Refused | None:
        try:
            await self.engine.add_candidate(webrtc_id, key, cand)
            return None
        except Refused as err:
            return err

    async def set_args(self, webrtc_id: str, key: Any, args: list[Any]) -> Refused | None:
        try:
            self.engine.set_args(webrtc_id, key, args)
            return None
        except Refused as err:
            return err

    async def close_session(self, webrtc_id: str, key: Any) -> Refused | None:
        try:
            await self.engine.close_session(webrtc_id, key)
            return None
        except Refused as err:
            return err

    async def next_output(self, webrtc_id: str, key: Any, kind: OutputsKind = OutputsKind.ADDITIONAL) -> list[Any] | Refused | None:
        try:
            return self.engine.next_output(webrtc_id, key, kind)
        except Refused as err:
            return err

    async def subscribe(self, webrtc_id: str, key: Any) -> int | Refused:
        """An outputs (SSE) reader at another process: a queue here, read by wait_outputs."""
        try:
            session, queue = self.engine.subscribe(webrtc_id, key)
        except Refused as err:
            return err
        sub = next(self._sub_ids)
        self._subs[sub] = (session, queue)
        return sub

    async def wait_outputs(self, sub: int, timeout: float) -> tuple[list[list[Any]], bool]:
        """The outputs a reader has not had yet (waiting up to ``timeout`` for the first),
        and whether the session has ended (nothing more will come)."""
        entry = self._subs.get(sub)
        if entry is None:
            return [], True
        session, queue = entry
        got: list[list[Any]] = []
        if queue.empty() and not session.closed:
            try:
                got.append(await asyncio.wait_for(queue.get(), timeout))
            except TimeoutError:
                pass
        while not queue.empty():
            got.append(queue.get_nowait())
        ended = session.closed and queue.empty()
        if ended:
            self.unsubscribe(sub)
        return got, ended

    def unsubscribe(self, sub: int) -> None:
        entry = self._subs.pop(sub, None)
        if entry is not None:
            self.engine.unsubscribe(*entry)



class MediaProcess(EngineCalls):
    def __init__(self, config: Config, engine_id: str, niceness: int = 0) -> None:
        super().__init__(MediaEngine(config, engine_id))
        self._forever: asyncio.Future[None] | None = None
        self._niceness = niceness
        _take_priority(niceness)

    async def start(self, events: list[StreamEvent]) -> EngineLoad:
        """Connect to the scheduler, take the events, start beating. Returns its load."""
        from runtime.control.scheduler import get_scheduler
        from runtime.media.ice import pin_host_addresses

        # again, on the sessions' loop: Ray may make threads of its own between __init__ and
        # the first call (seen under load: one thread left at nice 15), and the threads this
        # loop makes later inherit its niceness
        _take_priority(self._niceness)
        eng = self.engine
        rc = eng.config.ray
        logs.configure(eng.config.gateway.log_format)
        pin_host_addresses(eng.config.gateway.ice_host_addresses)
        eng.node_id = ray.get_runtime_context().get_node_id()
        # on a thread: finding a named actor blocks, and this loop is the sessions' loop
        eng.scheduler = await asyncio.to_thread(get_scheduler, rc.detached_scheduler, rc.namespace)
        self.set_events(events)
        eng.start_heartbeat_task()
        eng.start_load_sampler()
        return eng.load()

    def set_events(self, events: list[StreamEvent]) -> None:
        self.engine.events = {e.event_id: e for e in events}

    async def run(self) -> None:
        """Never returns while the process lives: the scheduler awaits it, so Ray tells the
        scheduler the moment this process dies (the call fails with ActorDiedError)."""
        if self._forever is None:
            self._forever = asyncio.get_running_loop().create_future()
        await self._forever

    async def load(self) -> EngineLoad:
        # the front asks every MEDIA_POLL_S: threads Ray's own (nice 15) threads made since
        # take the app's priority too (CI-found: one such thread under two test processes)
        _take_priority(self._niceness)
        return self.engine.load()

    async def metrics(self) -> EngineMetrics:
        return self.engine.metrics()

    async def sessions_view(self) -> list[SessionView]:
        return self.engine.sessions_view()

    @ray.method(concurrency_group=PROBE_GROUP)
    async def loop_stall(self) -> float:
        """How long the sessions' event loop has been stalled, in seconds (0.0: it runs);
        the front's readiness asks (runtime/media/stall_guard.py)."""
        return self.engine.stall_guard.stall_s

    async def drain(self, timeout_s: float) -> None:
        await self.engine.adrain(timeout_s)

    async def drain_now(self) -> None:
        self.engine.drain_now()

    async def aclose(self) -> None:
        await self.engine.aclose()


def _take_priority(niceness: int) -> None:
    """Run at the app process's priority, above the workers. Ray starts every worker process
    at nice 15 (RAY_worker_niceness), actors included, and a media process carries all its
    sessions: starved by the handlers' workers or by anything else on the host, it stalls
    every one of them (test-found: a session's rate halved while a worker and a media
    process started beside it). Linux keeps a niceness per thread, so every thread of the
    process is set (those made later, the encoder's among them, inherit it from the loop's).
    Lowering niceness needs privilege (root, CAP_SYS_NICE) or RAY_worker_niceness=0 on the
    node; without either, say so once."""
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                if os.getpriority(os.PRIO_PROCESS, int(tid)) > niceness:
                    os.setpriority(os.PRIO_PROCESS, int(tid), niceness)
            except ProcessLookupError:
                continue  # a thread that ended meanwhile
    except OSError as exc:
        log.warning(
            "media process at nice %d, below the app's %d (%s): start Ray with RAY_worker_niceness=0 on this node",
            os.getpriority(os.PRIO_PROCESS, 0), niceness, exc,
        )


MediaProcessActor = ray.remote(num_cpus=0, max_restarts=0, max_concurrency=MEDIA_ACTOR_CONCURRENCY, concurrency_groups={PROBE_GROUP: 1})(MediaProcess)  # type: ignore[call-overload]  # Ray's stubs lack max_concurrency


def start_media_process(config: Config, engine_id: str, node_id: str) -> Any:
    """A media process on ``node_id`` (the front's: clients reach the host they signalled,
    and the process answers with this host's ICE candidates). No CPU reserved: Ray's CPUs
    are for workers; media is the host's own work, like the app's process."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return MediaProcessActor.options(
        name=engine_id,
        namespace=config.ray.namespace,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    ).remote(config, engine_id, os.getpriority(os.PRIO_PROCESS, 0))



