"""The media engine: one process's sessions, their leases, and its heartbeat.

A media engine answers offers, holds the sessions (runtime/media/webrtc_session.py and
runtime/media/ws_session.py, siblings over runtime/media/session.py), leases workers from the
scheduler and gives them back; an offer is checked before any lease is taken
(runtime/media/offers.py) and the scheduler hears from the engine through one heartbeat
(runtime/media/heartbeat.py). It runs either inside the app's own process
(``gateway.processes: 1``, the front and the engine share one event loop) or in a media
process beside it (runtime/media/media_process.py, a Ray actor per engine). The routes and the
stream registrations are the front's (runtime/front/gateway.py); an engine only needs to know each
stream's media shape and limits (:class:`StreamEvent` with or without its handler).

Every engine is a "gateway" to the scheduler: it has its own id, its own leases and its own
heartbeat, so a media process that dies loses exactly its own leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from runtime import constants as C
from runtime.config import Config
from runtime.control.leases import LeaseDenied, LeaseGrant, LeaseQueued
from runtime.control.messages import EngineLoad
from runtime.errors import EndReason, ErrorCode, Refused
from runtime.guard.limits import AddressLimits, Admission, check_candidate_address, client_key
from runtime.media.half_open import HalfOpen
from runtime.media.heartbeat import Heartbeat
from runtime.media.load import sample_load
from runtime.media.offers import (
    check_key,
    denied_error,
    draining_error,
    key_digest,
    queued_answer,
    strip_forbidden_candidates,
)
from runtime.media.session import OUTPUTS_QUEUE_MAX, Session, WorkerGone
from runtime.media.session_view import SessionView
from runtime.media.stall_guard import StallGuard
from runtime.media.stream_event import StreamEvent
from runtime.media.webrtc_session import WebRTCSession
from runtime.media.ws_session import WebSocketSession
from runtime.ops.metrics import EngineCounters, EngineMetrics, FailoverCause, snapshot
from runtime.ops.shm_check import geometry_for
from workers.link.shape import Transport
from workers.link.wire import Args, OutputsKind, WireError

log = logging.getLogger("rtcpool.engine")

OUTPUTS_GRACE_S = 30.0  # a session's unfetched AdditionalOutputs are kept this long after it ends
UNLIMITED_OFFERS_PER_MIN = 10**9  # an engine does not rate-limit: its front does, seeing every offer
SESSION_KEY_BYTES = 24  # random bytes of a session key (192 bits; base64url: 32 characters)
# a resume that comes before the scheduler saw the old media process die (Ray notices a dead
# actor within about a second) is asked again this often, for at most this long
RESUME_SETTLE_S = 5.0
RESUME_SETTLE_POLL_S = 0.25

SessionMaker = Callable[[StreamEvent, LeaseGrant], Session]  # a session for a lease, not started
SessionStarter = Callable[[Session], Awaitable[dict[str, Any]]]  # starts it: the client's answer


class MediaEngine:
    """The sessions of one process. ``scheduler`` is the deployment's scheduler handle;
    ``on_unknown_event`` is called (from the heartbeat, blocking) for an event the scheduler
    forgot, by whoever can register it again (the front: it has the handlers);
    ``on_scheduler_died`` likewise replaces a dead scheduler."""

    def __init__(self, config: Config, engine_id: str | None = None) -> None:
        self.config = config
        self.gateway_id = engine_id or f"gw-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.events: dict[str, StreamEvent] = {}
        self.sessions: dict[str, Session] = {}
        self.geometry = geometry_for(config)
        self.scheduler: Any = None
        self.node_id = ""  # this process's Ray node, once started: workers elsewhere get TCP
        self.on_unknown_event: Callable[[str], None] | None = None
        self.on_scheduler_died: Callable[[Any], None] | None = None
        self._heartbeat = Heartbeat(self)
        # each session's key (pending offers too): the server's secret its client proves
        # every later request with; the client's webrtc_id is only a name
        self.keys: dict[str, str] = {}
        # unfetched outputs of ended sessions, by (webrtc_id, kind), with the session's key
        self._ended_outputs: dict[tuple[str, str], tuple[str, asyncio.Queue[list[Any]]]] = {}
        self.last_load = EngineLoad(self.gateway_id, os.getpid(), "", 0, 0.0, 0.0)
        self._sampler: asyncio.Task[None] | None = None
        self.stall_guard = StallGuard(config.gateway.loop_stall_warn_ms / 1000)  # started with the sampler
        self.counters = EngineCounters(process=self.gateway_id)  # /metrics
        self.draining = False  # no new offers: see adrain()
        # pending offers and live sessions per client address; the front limits the rate
        lc = config.gateway.limits
        self.address_limits = AddressLimits(
            lc.max_pending_offers_per_address, lc.max_sessions_per_address, UNLIMITED_OFFERS_PER_MIN,
            exempt_loopback=lc.exempt_loopback, max_tracked=lc.max_tracked_addresses,
        )  # fmt: skip
        self._drain_now: asyncio.Event | None = None
        self.half_open = HalfOpen(self.live_sessions)

    # --- signalling ----------------------------------------------------------------------------

    async def offer(
        self,
        event_id: str,
        webrtc_id: str,
        sdp: str,
        client: str | None = None,
        queue: bool = True,
        ticket: str | None = None,
    ) -> dict[str, Any]:
        """Answer an offer for ``event_id`` from ``client`` (its address). The id is
        reserved before any wait, so a second offer with it meanwhile is a duplicate, and a
        close for it finds it pending. The client's address holds a pending offer until
        the session connects, and a session until it ends (gateway.limits).

        A full stream that queues answers with the session's place in its line instead
        (``{"status": "queued", "queue": {...}}``, the route's 202; ``queue`` False: the
        client takes no place, 429); the offer posted again with the line's ``ticket``
        once admitted is answered as any other. A waiting client holds nothing here."""
        sdp = strip_forbidden_candidates(sdp, self.config.gateway.limits.allow_loopback_candidates)

        async def begin(session: Session) -> dict[str, Any]:
            assert isinstance(session, WebRTCSession)
            try:
                answer = await session.start(sdp, "offer")
            except WorkerGone:
                raise
            except Exception as exc:
                await session.aclose(EndReason.OFFER_FAILED, f"offer failed: {exc}")
                raise Refused(ErrorCode.BAD_SDP, f"the offer could not be answered: {exc}") from exc
            return {"sdp": answer.sdp, "type": answer.type}

        def make(event: StreamEvent, lease: LeaseGrant) -> Session:
            return WebRTCSession(self, event, webrtc_id, lease)

        return await self._open(event_id, webrtc_id, client, queue, ticket, make, begin)

    async def open_websocket(
        self,
        event_id: str,
        webrtc_id: str,
        client: str | None,
        client_kind: Transport,
        send_text: Callable[[str], Awaitable[None]],
        queue: bool = False,
        ticket: str | None = None,
    ) -> dict[str, Any]:
        """A session for a WebSocket audio client (runtime/media/ws_session.py), with the same
        lease, limits and line as an offer: the answer has ``session`` (the live
        WebSocketSession) and ``session_key``, or is a queued answer."""

        async def begin(session: Session) -> dict[str, Any]:
            assert isinstance(session, WebSocketSession)
            await session.start_ws()
            return {"session": session}

        def make(event: StreamEvent, lease: LeaseGrant) -> Session:
            return WebSocketSession(self, event, webrtc_id, lease, client_kind, send_text)

        return await self._open(event_id, webrtc_id, client, queue, ticket, make, begin)

    async def _open(
        self,
        event_id: str,
        webrtc_id: str,
        client: str | None,
        queue: bool,
        ticket: str | None,
        make: SessionMaker,
        begin: SessionStarter,
    ) -> dict[str, Any]:
        """An offer or a WebSocket: ``make`` a session for the lease, ``begin`` it (its answer)."""
        event = self.events.get(event_id)
        if event is None:
            raise Refused(ErrorCode.UNKNOWN_STREAM, f"no stream {event_id!r} (GET /webrtc/streams)")
        if self.draining:
            raise draining_error()
        if webrtc_id in self.sessions:
            raise Refused(ErrorCode.DUPLICATE_WEBRTC_ID, f"a session {webrtc_id!r} is already active")
        admission = self.address_limits.admit_offer(client)
        self.sessions[webrtc_id] = None  # type: ignore[assignment]
        key = self.keys[webrtc_id] = secrets.token_urlsafe(SESSION_KEY_BYTES)
        try:
            answer = await self._open_session(event, webrtc_id, admission, client, queue, ticket, make, begin, key)
            if answer.get("status") == "queued":
                return answer
            return {**answer, "session_key": key}
        finally:
            if self.sessions.get(webrtc_id) is None:
                admission.ended()
                self.sessions.pop(webrtc_id, None)
                if self.keys.get(webrtc_id) == key:
                    del self.keys[webrtc_id]

    async def resume(self, event_id: str, webrtc_id: str, sdp: str, key: Any, client: str | None = None) -> dict[str, Any]:
        """A client's offer for its own session again, with its ``key`` (docs/failover.md):
        after its media process died (the scheduler held its lease and its worker held the
        handler: both are taken over here), or after its network changed (the session is
        still here: a new peer connection replaces the old, the worker link stays)."""
        event = self.events.get(event_id)
        if event is None:
            raise Refused(ErrorCode.UNKNOWN_STREAM, f"no stream {event_id!r} (GET /webrtc/streams)")
        if self.draining:
            raise draining_error()
        sdp = strip_forbidden_candidates(sdp, self.config.gateway.limits.allow_loopback_candidates)
        started = time.monotonic()
        live = self.sessions.get(webrtc_id)
        if isinstance(live, WebRTCSession) and not live.closed:
            self.authorize(webrtc_id, key)
            answer = await live.restart_peer(sdp)
            self.counters.failover(event_id, FailoverCause.RESUMED, time.monotonic() - started)
            return {"sdp": answer.sdp, "type": answer.type, "session_key": key, "resumed": True}
        if webrtc_id in self.sessions:
            raise Refused(ErrorCode.DUPLICATE_WEBRTC_ID, f"a session {webrtc_id!r} is already active")
        if not isinstance(key, str) or not key:
            raise Refused(ErrorCode.SESSION_KEY_REQUIRED, "a resume offer carries its session's key ('session_key')")
        admission = self.address_limits.admit_offer(client)
        self.sessions[webrtc_id] = None  # type: ignore[assignment]
        self.keys[webrtc_id] = key
        try:
            grant = await self._resume_lease(webrtc_id, key)
            if not isinstance(grant, LeaseGrant):
                raise denied_error(grant)
            session = WebRTCSession(self, event, webrtc_id, grant)
            session.admission, session.client = admission, client_key(client).key
            try:
                answer = await session.start(sdp, "offer")
            except Exception as exc:
                await session.aclose(EndReason.WORKER_UNAVAILABLE, f"resume failed: {exc}")
                raise Refused(ErrorCode.WORKER_UNAVAILABLE, f"the session could not be resumed: {exc}") from exc
            self.sessions[webrtc_id] = session
            self.counters.session_started(event.event_id)
            session.counted = True
            self.counters.failover(event_id, FailoverCause.RESUMED, time.monotonic() - started)
            log.info("session %s resumed here, worker pid %s (%s)", webrtc_id, grant.pid, "its handler held" if grant.resumed else "a fresh worker")
            session.log_start()
            return {"sdp": answer.sdp, "type": answer.type, "session_key": key, "resumed": True}
        finally:
            if self.sessions.get(webrtc_id) is None:
                admission.ended()
                self.sessions.pop(webrtc_id, None)
                if self.keys.get(webrtc_id) == key:
                    del self.keys[webrtc_id]

    async def _resume_lease(self, webrtc_id: str, key: str) -> Any:
        """The scheduler's answer to a resume. A client may re-offer before the scheduler has
        seen its media process die (it then answers "live elsewhere"): asked again for up
        to RESUME_SETTLE_S."""
        deadline = time.monotonic() + RESUME_SETTLE_S
        while True:
            try:
                grant = await asyncio.wait_for(
                    self.scheduler.resume.remote(webrtc_id, key_digest(key), self.gateway_id, self.node_id),
                    C.LEASE_TIMEOUT_S + C.RAY_CALL_TIMEOUT_S,
                )
            except Exception as exc:
                raise Refused(ErrorCode.SCHEDULER_UNAVAILABLE, f"the scheduler did not answer: {exc}") from exc
            settling = getattr(grant, "error", None) == ErrorCode.DUPLICATE_WEBRTC_ID
            if not settling or time.monotonic() > deadline:
                return grant
            await asyncio.sleep(RESUME_SETTLE_POLL_S)

    def authorize(self, webrtc_id: str, key: Any) -> None:
        """Refuse a request about a session that does not present the session's key: 404
        for no such session (pending offers included), 403 for a missing or wrong key. With
        ``gateway.require_session_key: false`` the id alone is enough (fastrtc clients)."""
        expected = self.keys.get(webrtc_id)
        if expected is None:
            raise Refused(ErrorCode.UNKNOWN_WEBRTC_ID, f"no session {webrtc_id!r}")
        check_key(self.config, expected, key)

    async def _open_session(
        self,
        event: StreamEvent,
        webrtc_id: str,
        admission: Admission,
        address: str | None,
        queue: bool,
        ticket: str | None,
        make: SessionMaker,
        begin: SessionStarter,
        key: str = "",
    ) -> dict[str, Any]:
        known = client_key(address)
        client = known.key
        # the line counts tickets per address, but not those the limits exempt (loopback)
        line_client = "" if known.loopback and self.config.gateway.limits.exempt_loopback else client
        for attempt in range(2):  # one retry: an idle worker may have died since the lease
            try:
                lease = await self._acquire(event, webrtc_id, queue, ticket, line_client, key)
            except Refused as err:
                if err.code != ErrorCode.CONCURRENCY_LIMIT_REACHED or not await self.half_open.displace(event.event_id, client):
                    raise
                lease = await self._acquire(event, webrtc_id, queue, ticket, line_client, key)
            if isinstance(lease, LeaseQueued):
                # a half-open session of another client holds a slot the line needs: its
                # end admits the head of the line (maybe this one)
                if not await self.half_open.displace(event.event_id, client):
                    self.half_open.displace_when_stale(event.event_id, client)
                return queued_answer(webrtc_id, lease)
            ticket = None  # a retry (the worker died) is a new offer: the held slot was taken
            session = make(event, lease)
            session.admission = admission
            session.client = client
            try:
                answer = await begin(session)
            except WorkerGone as exc:
                log.warning("session %s: %s", webrtc_id, exc)
                await session.aclose(EndReason.WORKER_UNAVAILABLE, "worker unavailable")
                if attempt == 0:
                    continue
                raise Refused(ErrorCode.WORKER_UNAVAILABLE, str(exc)) from exc
            self.sessions[webrtc_id] = session
            self.counters.session_started(event.event_id)
            session.counted = True
            session.log_start()
            return answer
        raise AssertionError("unreachable")

    async def _acquire(
        self, event: StreamEvent, webrtc_id: str, queue: bool = False, ticket: str | None = None, client: str = "", key: str = ""
    ) -> LeaseGrant | LeaseQueued:
        from ray.exceptions import ActorDiedError

        replaced = registered = False  # each recovery at most once per offer
        while True:
            scheduler = self.scheduler
            try:
                lease = await asyncio.wait_for(
                    scheduler.acquire.remote(
                        event.event_id, self.gateway_id, webrtc_id, self.node_id, ticket=ticket, queue=queue, client=client,
                        # sessions per address, counted by the scheduler over the whole deployment
                        max_per_client=self.config.gateway.limits.max_sessions_per_address,
                        # a resume offer proves the session is its client's with the key
                        key_digest=key_digest(key) if key else "",
                        resume_grace_s=self.config.gateway.resume_grace_s,
                    ),
                    C.LEASE_TIMEOUT_S + C.RAY_CALL_TIMEOUT_S,
                )
            except ActorDiedError as exc:  # once more with a new scheduler
                if replaced:
                    raise Refused(ErrorCode.SCHEDULER_UNAVAILABLE, f"the scheduler did not answer: {exc}") from exc
                replaced = True
                await asyncio.get_running_loop().run_in_executor(None, self.scheduler_died, scheduler)
                continue
            except Exception as exc:
                raise Refused(ErrorCode.SCHEDULER_UNAVAILABLE, f"the scheduler did not answer: {exc}") from exc
            unknown = isinstance(lease, LeaseDenied) and lease.error == ErrorCode.UNKNOWN_STREAM
            if not unknown or registered or self.on_unknown_event is None:
                break
            registered = True
            # a scheduler that does not know a stream this gateway serves: it was replaced
            # (another gateway of this process may have started the new one before this one
            # registered there; CI-found) or forgot this gateway; register again, once
            await asyncio.get_running_loop().run_in_executor(None, self.on_unknown_event, event.event_id)
        if isinstance(lease, (LeaseGrant, LeaseQueued)):
            return lease
        raise denied_error(lease)

    def scheduler_died(self, dead: Any) -> None:
        """Blocking: the scheduler actor died; whoever owns registrations replaces it."""
        if self.on_scheduler_died is not None:
            self.on_scheduler_died(dead)
            return
        from runtime.control.scheduler import get_scheduler

        if self.scheduler is dead:
            rc = self.config.ray
            self.scheduler = get_scheduler(detached=rc.detached_scheduler, namespace=rc.namespace, replace=True)

    async def add_candidate(self, webrtc_id: str, key: Any, cand: Any) -> None:
        from aiortc.sdp import candidate_from_sdp

        self.authorize(webrtc_id, key)
        session = self.sessions.get(webrtc_id)
        if not isinstance(session, WebRTCSession) or session.pc is None:
            raise Refused(ErrorCode.UNKNOWN_WEBRTC_ID, f"no session {webrtc_id!r}")
        if cand is None:
            return  # end of candidates
        text = cand.get("candidate") if isinstance(cand, dict) else cand
        if not text:
            return
        if not isinstance(text, str):
            raise Refused(ErrorCode.BAD_CANDIDATE, "'candidate' must be an SDP candidate attribute")
        session.candidates.take()
        # no candidates to link-local/metadata (169.254.0.0/16), multicast or (outside the
        # local config) loopback addresses: the gateway would send STUN checks there
        check_candidate_address(text, allow_loopback=self.config.gateway.limits.allow_loopback_candidates)
        try:
            ice = candidate_from_sdp(text.split(":", 1)[1] if text.startswith("candidate:") else text)
            if isinstance(cand, dict):
                ice.sdpMid = cand.get("sdpMid")
                ice.sdpMLineIndex = cand.get("sdpMLineIndex")
            await session.add_ice_candidate(ice)
        except Exception as exc:
            raise Refused(ErrorCode.BAD_CANDIDATE, f"cannot parse ICE candidate: {exc}") from exc

    def next_output(self, webrtc_id: str, key: Any, kind: OutputsKind = OutputsKind.ADDITIONAL) -> list[Any] | None:
        """The oldest outputs of a session not yet fetched (None: none waiting): its
        AdditionalOutputs, or with ``kind=OutputsKind.STREAM`` the values its function returned
        for the stream's other outputs. A session's unfetched outputs outlive it by
        OUTPUTS_GRACE_S. Raises 403 for a wrong key, 404 for no such session."""
        session = self.sessions.get(webrtc_id)
        queue: asyncio.Queue[list[Any]] | None
        if session is not None:
            self.authorize(webrtc_id, key)
            queue = session.stream_outputs if kind == OutputsKind.STREAM else session.outputs
        else:
            ended = self._ended_outputs.get((webrtc_id, kind))
            if ended is None:
                if webrtc_id in self.keys:  # an offer being answered: no outputs yet
                    self.authorize(webrtc_id, key)
                    return None
                raise Refused(ErrorCode.UNKNOWN_WEBRTC_ID, f"no session {webrtc_id!r}")
            check_key(self.config, ended[0], key)
            queue = ended[1]
        if queue.empty():
            return None
        return queue.get_nowait()

    def set_args(self, webrtc_id: str, key: Any, args: list[Any]) -> None:
        self.authorize(webrtc_id, key)
        session = self.sessions.get(webrtc_id)
        if session is None:
            raise Refused(ErrorCode.UNKNOWN_WEBRTC_ID, f"no session {webrtc_id!r}")
        if not session.input_rate.take():
            retry = max(1, math.ceil(session.input_rate.retry_after()))
            raise Refused(ErrorCode.INPUT_RATE_LIMITED, "too many input posts for this session", retry_after_s=retry)
        try:
            Args(list(args)).encode()  # what the worker is sent: refused here, not after a 200
        except (TypeError, ValueError, OverflowError, WireError) as exc:
            raise Refused(ErrorCode.BAD_REQUEST, f"'args' holds a value the worker cannot receive: {str(exc)[:200]}") from None
        session.set_args(args)

    def subscribe(self, webrtc_id: str, key: Any) -> tuple[Session, asyncio.Queue[list[Any]]]:
        """A queue of its own for an outputs (SSE) reader of a live session."""
        self.authorize(webrtc_id, key)
        session = self.sessions.get(webrtc_id)
        if session is None:
            raise Refused(ErrorCode.UNKNOWN_WEBRTC_ID, f"no session {webrtc_id!r}")
        session.readers.take()
        queue: asyncio.Queue[list[Any]] = asyncio.Queue(OUTPUTS_QUEUE_MAX)
        session.subscribers.append(queue)
        return session, queue

    @staticmethod
    def unsubscribe(session: Session, queue: asyncio.Queue[list[Any]]) -> None:
        """An outputs reader went away: its queue and its place among the session's readers."""
        if queue in session.subscribers:
            session.subscribers.remove(queue)
            session.readers.release()

    # a hang-up for an offer still being answered polls for its session this often, for at
    # most as long as the offer itself may take (a lease, then the worker link)
    HANGUP_POLL_S = 0.05
    HANGUP_WAIT_S = C.LEASE_TIMEOUT_S + C.RAY_CALL_TIMEOUT_S + C.WORKER_CONNECT_TIMEOUT_S

    async def close_session(self, webrtc_id: str, key: Any) -> None:
        """End a session because its client hung up. An offer still being answered (its id
        reserved, no session yet) is ended as soon as its session exists: the client that
        stopped will never use the answer, and the session would hold its slot until the
        connect timeout. Returns once the session is closing (or its offer failed)."""
        self.authorize(webrtc_id, key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.HANGUP_WAIT_S
        while webrtc_id in self.sessions:
            session = self.sessions[webrtc_id]
            if session is not None:
                session.close_soon(EndReason.CLIENT_CLOSED, "the client hung up")
                return
            if loop.time() > deadline:
                # left to the session's connect timeout
                log.warning("session %s: hang-up gave up waiting for its offer", webrtc_id)
                return
            await asyncio.sleep(self.HANGUP_POLL_S)

    # --- draining ---------------------------------------------------------------------------------

    async def adrain(self, timeout_s: float) -> None:
        """Take no new offers, tell every client the server is going away, let the sessions
        run until they end or ``timeout_s`` passes (or :meth:`drain_now`), then end the rest
        cleanly: end_stream, then close (slots and workers back). Offers being answered when
        the drain began become sessions and are told too."""
        self.draining = True
        loop = asyncio.get_running_loop()
        now = self._drain_now = self._drain_now or asyncio.Event()
        deadline = loop.time() + timeout_s
        told: set[int] = set()
        while loop.time() < deadline and not now.is_set():
            pending = any(s is None for s in self.sessions.values())
            live = self.live_sessions()
            if not live and not pending:
                break
            for session in live:
                if id(session) not in told:
                    told.add(id(session))
                    left = max(0.0, deadline - loop.time())
                    session.send_client_warning(f"the server is restarting: this stream ends within {left:.0f} s")
                    session.send_client("log", {"event": "server_draining", "deadline_s": round(left, 1)})
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(now.wait(), min(C.DRAIN_POLL_S, max(0.0, deadline - loop.time())))
        ending = [asyncio.ensure_future(self._end_drained(s)) for s in self.live_sessions()]
        if ending:
            await asyncio.wait(ending, timeout=C.END_STREAM_GRACE_S + C.CLOSE_ACK_TIMEOUT_S + C.RAY_CALL_TIMEOUT_S)

    @staticmethod
    async def _end_drained(session: Session) -> None:
        session.send_client("end_stream", {"reason": "server_draining"})
        await asyncio.sleep(C.END_STREAM_GRACE_S)  # the message goes out before the close
        await session.aclose(EndReason.DRAINING, "the server is draining")

    def drain_now(self) -> None:
        """End a drain's wait at once (a second SIGTERM, or SIGINT)."""
        self.draining = True
        if self._drain_now is None:
            self._drain_now = asyncio.Event()
        self._drain_now.set()

    def metrics(self) -> EngineMetrics:
        """This engine's counters and its live sessions' counts, for /metrics."""
        return snapshot(self.counters, [s.stats() for s in self.live_sessions()], self.last_load.loop_lag_ms)

    def live_sessions(self) -> list[Session]:
        return [s for s in self.sessions.values() if s is not None and not s.closed]

    # --- load -------------------------------------------------------------------------------------

    def start_load_sampler(self) -> None:
        """Measure this process's CPU and event-loop lag every LOAD_SAMPLE_S (on the loop:
        a late timer is the lag), and watch the loop for stalls (runtime/media/stall_guard.py)."""
        if self._sampler is None:
            self._sampler = asyncio.get_running_loop().create_task(sample_load(self))
            self.stall_guard.start()

    def load(self) -> EngineLoad:
        sessions = len(self.live_sessions())
        if sessions != self.last_load.sessions:
            self.last_load = replace(self.last_load, sessions=sessions)
        return self.last_load

    # --- lifecycle -------------------------------------------------------------------------------

    def start_heartbeat(self) -> None:
        """Beat from start-up on a thread of its own (the front: see runtime/media/heartbeat.py)."""
        self._heartbeat.start_thread()

    def start_heartbeat_task(self) -> None:
        """Beat as a task on this loop (a media process, an async Ray actor)."""
        self._heartbeat.start_task()

    def leased_sessions(self) -> dict[str, Session]:
        """Its sessions by lease id, for the heartbeat: a copy made in one C call, since the
        loop's thread adds and removes sessions meanwhile."""
        return {s.lease_id: s for s in list(self.sessions.values()) if s is not None}

    async def session_ended(self, session: Session) -> None:
        key = self.keys.get(session.webrtc_id, "")
        if session.counted:  # every session counted as started, WebRTC or WebSocket, once
            self.counters.session_ended(session.stats(), session.end_reason or EndReason.OTHER)
        if session.admission is not None:
            session.admission.ended()
        if self.sessions.get(session.webrtc_id) is session:
            self.sessions.pop(session.webrtc_id, None)
            self.keys.pop(session.webrtc_id, None)
        for kind, queue in (
            (OutputsKind.ADDITIONAL, session.outputs),
            (OutputsKind.STREAM, session.stream_outputs),
        ):
            if not queue.empty():
                # the page fetches outputs after the fact: keep them a little while
                ended = (session.webrtc_id, kind)
                self._ended_outputs[ended] = (key, queue)
                later = asyncio.get_running_loop().call_later
                later(OUTPUTS_GRACE_S, self._ended_outputs.pop, ended, None)
        try:
            await asyncio.wait_for(self.scheduler.release.remote(session.lease_id, session.worker_ok), C.RAY_CALL_TIMEOUT_S)
        except Exception as exc:
            # the lease expires with this gateway's heartbeat if the scheduler missed this
            log.warning("session %s: release failed: %s", session.webrtc_id, exc)

    async def aclose(self) -> None:
        """End every session, give back every lease, stop beating. Safe to call twice."""
        if self._sampler is not None:
            self._sampler.cancel()
        self._sampler = None
        await self.stall_guard.aclose()
        self.half_open.cancel()
        sessions = [s for s in self.sessions.values() if s is not None]
        await asyncio.gather(*(s.aclose(EndReason.SHUTDOWN, "gateway shutting down") for s in sessions), return_exceptions=True)
        await self._heartbeat.aclose()  # before forget_gateway: see Heartbeat.aclose
        if self.scheduler is not None:
            try:
                await asyncio.wait_for(self.scheduler.forget_gateway.remote(self.gateway_id), C.RAY_CALL_TIMEOUT_S)
            except Exception as exc:
                log.warning("scheduler did not take the gateway's shutdown: %s", exc)

    def sessions_view(self) -> list[SessionView]:
        pid = os.getpid()
        return [SessionView(s.event.event_id, s.worker_pid, s.lease.node_id, s.transport, pid, s.video_codec) for s in self.live_sessions()]

