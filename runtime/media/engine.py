"""The media engine: one process's sessions, their leases, and its heartbeat.

A media engine answers offers, holds the peer connections (runtime/media/session.py), leases
workers from the scheduler and gives them back. It runs either inside the app's own process
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
import hmac
import logging
import math
import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from runtime import constants as C
from runtime.config import Config
from runtime.control.leases import LeaseGrant, LeaseQueued
from runtime.control.messages import HeartbeatAnswer
from runtime.errors import HTTPError
from runtime.guard.limits import AddressLimits, Admission, check_candidate_address, client_key
from runtime.guard.sdp_check import check_offer_sdp
from runtime.media.session import OUTPUTS_QUEUE_MAX, Session, WorkerGone
from runtime.ops.metrics import EngineCounters, EngineMetrics, snapshot
from runtime.ops.shm_check import geometry_for
from workers.link.wire import OUTPUTS_ADDITIONAL, OUTPUTS_STREAM, Args, WireError
from workers.process.loader import StreamOutputs

log = logging.getLogger("rtcpool.engine")

WEBRTC_ID_RE = re.compile(rf"[A-Za-z0-9_.:-]{{1,{C.MAX_WEBRTC_ID_CHARS}}}")  # fullmatch: "$" takes a final newline
OUTPUTS_GRACE_S = 30.0  # a session's unfetched AdditionalOutputs are kept this long after it ends
LOAD_SAMPLE_S = 1.0  # how often an engine measures its own CPU and event-loop lag
HALF_OPEN_GRACE_S = 5.0  # an answered offer that has not connected by then may give its slot to a newcomer
UNLIMITED_OFFERS_PER_MIN = 10**9  # an engine does not rate-limit: its front does, seeing every offer
SESSION_KEY_BYTES = 24  # random bytes of a session key (192 bits; base64url: 32 characters)


@dataclass
class StreamEvent:
    """A stream event: its media shape and limits, and (in the front) its handler."""

    event_id: str
    handler: Any = None
    mode: str = "send-receive"
    modality: str = "video"
    concurrency_limit: int | None = 1
    time_limit: float | None = None
    initial_args: list[Any] = field(default_factory=list)
    index: int = 0
    stream_every: float | None = None
    outputs: StreamOutputs = field(default_factory=StreamOutputs)
    # a full stream's waiting room: None = the config's queue section
    queue: bool = True
    max_queue: int | None = None
    queue_timeout_s: float | None = None

    @property
    def has_video(self) -> bool:
        return self.modality in ("video", "audio-video")

    @property
    def has_audio(self) -> bool:
        return self.modality in ("audio", "audio-video")

    def media_only(self) -> StreamEvent:
        """This event without its handler: what a media process is sent (by Ray, so no
        user object travels; the workers load the handler themselves)."""
        return StreamEvent(
            self.event_id,
            None,
            self.mode,
            self.modality,
            self.concurrency_limit,
            self.time_limit,
            list(self.initial_args),
            self.index,
            self.stream_every,
            StreamOutputs(),
            self.queue,
            self.max_queue,
            self.queue_timeout_s,
        )


SessionMaker = Callable[[StreamEvent, LeaseGrant], Session]  # a session for a lease, not started
SessionStarter = Callable[[Session], Awaitable[dict[str, Any]]]  # starts it: the client's answer


@dataclass(frozen=True)
class EngineLoad:
    """What an engine reports for placement and `rtcpool status`."""

    engine_id: str
    pid: int
    node_id: str
    sessions: int
    cpu_percent: float  # of one core, over the last LOAD_SAMPLE_S
    loop_lag_ms: float  # how late a LOAD_SAMPLE_S timer fired, last sample

    def score(self) -> float:
        """Lower is less loaded: sessions, plus CPU in units of what one session costs.
        A 640x480@30 video session costs a media process ~20-30% of a core (issue 10's
        measurement), so CPU_PER_SESSION_PERCENT converts CPU to sessions; a lagging loop
        counts as loaded whatever its session count."""
        return self.sessions + self.cpu_percent / CPU_PER_SESSION_PERCENT + self.loop_lag_ms / LAG_PER_SESSION_MS


CPU_PER_SESSION_PERCENT = 25.0  # CPU% of one core a video session costs a media process, for placement
LAG_PER_SESSION_MS = 20.0  # event-loop lag counted as one more session, for placement


def check_id(webrtc_id: Any) -> str:
    if not isinstance(webrtc_id, str) or not WEBRTC_ID_RE.fullmatch(webrtc_id):
        raise HTTPError(400, "bad_webrtc_id", f"'webrtc_id' must be 1-{C.MAX_WEBRTC_ID_CHARS} characters of [A-Za-z0-9_.:-]")
    return webrtc_id


def _check_key(config: Config, expected: str, key: Any) -> None:
    if not config.gateway.require_session_key:
        return
    if not isinstance(key, str) or not key:
        raise HTTPError(403, "session_key_required", "send the session's key (the answer's 'session_key') with every request about it")
    # constant time: a key compared byte by byte would leak its prefix to a patient prober
    if not hmac.compare_digest(expected.encode(), key.encode("utf-8", "replace")):
        raise HTTPError(403, "bad_session_key", "the session key does not match the session")


def strip_forbidden_candidates(sdp: str, allow_loopback: bool) -> str:
    """The offer without its ICE candidates to addresses the gateway must not probe (see
    check_candidate_address): candidates in the SDP are trickled ones by another name."""
    if "a=candidate:" not in sdp:
        return sdp
    kept = []
    for line in sdp.splitlines(keepends=True):
        if line.startswith("a=candidate:"):
            try:
                check_candidate_address(line[2:].strip(), allow_loopback=allow_loopback)
            except HTTPError:
                continue
        kept.append(line)
    return "".join(kept)


def queued_answer(webrtc_id: str, place: LeaseQueued) -> dict[str, Any]:
    """The 202 body of an offer that waits in its stream's line (runtime/control/waiting_room.py)."""
    return {
        "status": "queued",
        "webrtc_id": webrtc_id,
        "queue": {
            "ticket": place.ticket,
            "position": place.position,
            "size": place.size,
            "eta_s": place.eta_s,
            "updates": QUEUE_UPDATES_ROUTE,
        },
    }


QUEUE_UPDATES_ROUTE = "/webrtc/queue"  # where a queued client follows its place (server-sent events)


def draining_error() -> HTTPError:
    # 503 + Retry-After: a load balancer (or the page's retry) sends the user elsewhere
    return HTTPError(
        503,
        "draining",
        "this server is restarting and takes no new streams; try again",
        headers={"Retry-After": str(C.DRAIN_RETRY_AFTER_S)},
        meta={"retry_after": C.DRAIN_RETRY_AFTER_S},
    )


HANDLE_SEP = "/"  # in neither a webrtc_id ([A-Za-z0-9_.:-]) nor a key (base64url)


def split_handle(value: Any) -> tuple[str, str | None]:
    """A session's handle, as the Gradio component's value carries it: ``webrtc_id/key``
    (a bare id, from a client that has no key, gives key None)."""
    if not isinstance(value, str):
        return "", None
    webrtc_id, sep, key = value.partition(HANDLE_SEP)
    return webrtc_id, (key if sep else None)


def check_sdp(sdp: Any, event: StreamEvent, max_bytes: int) -> str:
    """The offer parsed and checked (runtime/guard/sdp_check.py) before any lease or worker is
    taken, and with a section for each kind of media the stream carries."""
    summary = check_offer_sdp(sdp, max_bytes=max_bytes)
    wanted = {"video"} if event.has_video else set()
    wanted |= {"audio"} if event.has_audio else set()
    missing = sorted(wanted - set(summary.kinds))
    if missing:
        raise HTTPError(400, "offer_lacks_media", f"stream {event.event_id!r} carries {event.modality}: the offer has no {' or '.join(missing)} section")
    assert isinstance(sdp, str)
    return sdp


class MediaEngine:
    """The sessions of one process. ``scheduler`` is the deployment's scheduler handle;
    ``on_unknown_event`` is called (from the heartbeat thread) for an event the scheduler
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
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()
        # each session's key (pending offers too): the server's secret its client proves
        # every later request with; the client's webrtc_id is only a name
        self.keys: dict[str, str] = {}
        # unfetched outputs of ended sessions, by (webrtc_id, kind), with the session's key
        self._ended_outputs: dict[tuple[str, str], tuple[str, asyncio.Queue[list[Any]]]] = {}
        self._load = EngineLoad(self.gateway_id, os.getpid(), "", 0, 0.0, 0.0)
        self._sampler: asyncio.Task[None] | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self.counters = EngineCounters(process=self.gateway_id)  # /metrics
        self.draining = False  # no new offers: see adrain()
        # pending offers and live sessions per client address; the front limits the rate
        lc = config.gateway.limits
        self.address_limits = AddressLimits(
            lc.max_pending_offers_per_address, lc.max_sessions_per_address, UNLIMITED_OFFERS_PER_MIN,
            exempt_loopback=lc.exempt_loopback, max_tracked=lc.max_tracked_addresses,
        )  # fmt: skip
        self._drain_now: asyncio.Event | None = None
        # streams with a timer that displaces a half-open session for the line (see
        # _displace_when_stale), and those timers
        self._displacing: set[str] = set()
        self._timers: set[asyncio.Task[None]] = set()

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
            try:
                answer = await session.start(sdp, "offer")
            except WorkerGone:
                raise
            except Exception as exc:
                await session.aclose(f"offer failed: {exc}")
                raise HTTPError(400, "bad_sdp", f"the offer could not be answered: {exc}") from exc
            return {"sdp": answer.sdp, "type": answer.type}

        def make(event: StreamEvent, lease: LeaseGrant) -> Session:
            return Session(self, event, webrtc_id, lease)

        return await self._open(event_id, webrtc_id, client, queue, ticket, make, begin)

    async def open_websocket(
        self,
        event_id: str,
        webrtc_id: str,
        client: str | None,
        client_kind: str,
        send_text: Callable[[str], Awaitable[None]],
        queue: bool = False,
        ticket: str | None = None,
    ) -> dict[str, Any]:
        """A session for a WebSocket audio client (runtime/media/ws_session.py), with the same
        lease, limits and line as an offer: the answer has ``session`` (the live
        WebSocketSession) and ``session_key``, or is a queued answer."""
        from runtime.media.ws_session import WebSocketSession

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
            raise HTTPError(404, "unknown_stream", f"no stream {event_id!r} (GET /webrtc/streams)")
        if self.draining:
            raise draining_error()
        if webrtc_id in self.sessions:
            raise HTTPError(409, "duplicate_webrtc_id", f"a session {webrtc_id!r} is already active")
        admission = self.address_limits.admit_offer(client)
        self.sessions[webrtc_id] = None  # type: ignore[assignment]
        key = self.keys[webrtc_id] = secrets.token_urlsafe(SESSION_KEY_BYTES)
        try:
            answer = await self._open_session(event, webrtc_id, admission, client, queue, ticket, make, begin)
            if answer.get("status") == "queued":
                return answer
            return {**answer, "session_key": key}
        finally:
            if self.sessions.get(webrtc_id) is None:
                admission.ended()
                self.sessions.pop(webrtc_id, None)
                if self.keys.get(webrtc_id) == key:
                    del self.keys[webrtc_id]

    def authorize(self, webrtc_id: str, key: Any) -> None:
        """Refuse a request about a session that does not present the session's key: 404
        for no such session (pending offers included), 403 for a missing or wrong key. With
        ``gateway.require_session_key: false`` the id alone is enough (fastrtc clients)."""
        expected = self.keys.get(webrtc_id)
        if expected is None:
            raise HTTPError(404, "unknown_webrtc_id", f"no session {webrtc_id!r}")
        _check_key(self.config, expected, key)

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
    ) -> dict[str, Any]:
        known = client_key(address)
        client = known.key
        # the line counts tickets per address, but not those the limits exempt (loopback)
        line_client = "" if known.loopback and self.config.gateway.limits.exempt_loopback else client
        for attempt in range(2):  # one retry: an idle worker may have died since the lease
            try:
                lease = await self._acquire(event, webrtc_id, queue, ticket, line_client)
            except HTTPError as err:
                if err.error != "concurrency_limit_reached" or not await self._displace_half_open(event, client):
                    raise
                lease = await self._acquire(event, webrtc_id, queue, ticket, line_client)
            if isinstance(lease, LeaseQueued):
                # a half-open session of another client holds a slot the line needs: its
                # end admits the head of the line (maybe this one)
                if not await self._displace_half_open(event, client):
                    self._displace_when_stale(event, client)
                return queued_answer(webrtc_id, lease)
            ticket = None  # a retry (the worker died) is a new offer: the held slot was taken
            session = make(event, lease)
            session.admission = admission
            session.client = client
            try:
                answer = await begin(session)
            except WorkerGone as exc:
                log.warning("session %s: %s", webrtc_id, exc)
                await session.aclose("worker unavailable")
                if attempt == 0:
                    continue
                raise HTTPError(503, "worker_unavailable", str(exc)) from exc
            self.sessions[webrtc_id] = session
            self.counters.session_started(event.event_id)
            session.log_start()
            return answer
        raise AssertionError("unreachable")

    async def _displace_half_open(self, event: StreamEvent, client: str) -> bool:
        """A full stream, and a newcomer: end the oldest session of another client address
        that was answered HALF_OPEN_GRACE_S ago or more and never connected (a half-open
        offer: its client never completed ICE). A client that posts offers and never
        connects would otherwise hold a concurrency_limit=1 stream shut until each offer's
        connect timeout, again and again. True if one was ended (its slot is back)."""
        now = time.monotonic()
        stale = [
            s for s in self.live_sessions()
            if s.event.event_id == event.event_id and s.connected_at is None and s.client != client
            and now - s.created_at >= HALF_OPEN_GRACE_S
        ]  # fmt: skip
        if not stale:
            return False
        victim = min(stale, key=lambda s: s.created_at)
        log.warning("session %s: ended half-open (no ICE after %.1f s) for a newcomer to the full stream %s", victim.webrtc_id, now - victim.created_at, event.event_id)
        await victim.aclose("half-open: displaced by a newcomer to the full stream")
        return True

    def _displace_when_stale(self, event: StreamEvent, client: str) -> None:
        """Someone waits in line: the youngest half-open session of another address that is
        not stale yet is displaced once it is (one timer per engine and stream at a time)."""
        young = [
            s.created_at for s in self.live_sessions()
            if s.event.event_id == event.event_id and s.connected_at is None and s.client != client
        ]  # fmt: skip
        if not young or event.event_id in self._displacing:
            return
        delay = max(0.0, min(young) + HALF_OPEN_GRACE_S - time.monotonic())

        async def later() -> None:
            try:
                await asyncio.sleep(delay)
                await self._displace_half_open(event, client)
            finally:
                self._displacing.discard(event.event_id)

        self._displacing.add(event.event_id)
        task = asyncio.get_running_loop().create_task(later())
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    async def _acquire(
        self, event: StreamEvent, webrtc_id: str, queue: bool = False, ticket: str | None = None, client: str = ""
    ) -> LeaseGrant | LeaseQueued:
        from ray.exceptions import ActorDiedError

        for attempt in range(2):  # once more with a new scheduler, if the one held has died
            scheduler = self.scheduler
            try:
                lease = await asyncio.wait_for(
                    scheduler.acquire.remote(
                        event.event_id, self.gateway_id, webrtc_id, self.node_id, ticket=ticket, queue=queue, client=client
                    ),
                    C.LEASE_TIMEOUT_S + C.RAY_CALL_TIMEOUT_S,
                )
                break
            except ActorDiedError as exc:
                if attempt:
                    raise HTTPError(503, "scheduler_unavailable", f"the scheduler did not answer: {exc}") from exc
                await asyncio.get_running_loop().run_in_executor(None, self.scheduler_died, scheduler)
            except Exception as exc:
                raise HTTPError(503, "scheduler_unavailable", f"the scheduler did not answer: {exc}") from exc
        if isinstance(lease, (LeaseGrant, LeaseQueued)):
            return lease
        if lease.error in ("concurrency_limit_reached", "queue_full", "too_many_queued"):
            retry = str(lease.retry_after or C.RETRY_AFTER_S)
            meta = {"limit": lease.limit, "retry_after": int(retry)}
            if lease.queue_size is not None:
                meta["queue_size"] = lease.queue_size
            first = (
                f"this stream serves at most {lease.limit} session(s) at once"
                if lease.error == "concurrency_limit_reached"
                else lease.message
            )
            raise HTTPError(429, lease.error, f"{first}; retry in {retry} s", headers={"Retry-After": retry}, meta=meta)
        if lease.error == "queue_ticket_gone":
            raise HTTPError(410, "queue_ticket_gone", lease.message)
        if lease.error == "duplicate_webrtc_id":
            raise HTTPError(409, "duplicate_webrtc_id", lease.message)
        raise HTTPError(503, lease.error, lease.message or "no worker available")

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
        if session is None or session.pc is None:
            raise HTTPError(404, "unknown_webrtc_id", f"no session {webrtc_id!r}")
        if cand is None:
            return  # end of candidates
        text = cand.get("candidate") if isinstance(cand, dict) else cand
        if not text:
            return
        if not isinstance(text, str):
            raise HTTPError(400, "bad_candidate", "'candidate' must be an SDP candidate attribute")
        session.candidates.take()
        # no candidates to link-local/metadata (169.254.0.0/16), multicast or (outside the
        # local config) loopback addresses: the gateway would send STUN checks there
        check_candidate_address(text, allow_loopback=self.config.gateway.limits.allow_loopback_candidates)
        try:
            ice = candidate_from_sdp(text.split(":", 1)[1] if text.startswith("candidate:") else text)
            if isinstance(cand, dict):
                ice.sdpMid = cand.get("sdpMid")
                ice.sdpMLineIndex = cand.get("sdpMLineIndex")
            await session.pc.addIceCandidate(ice)
        except Exception as exc:
            raise HTTPError(400, "bad_candidate", f"cannot parse ICE candidate: {exc}") from exc

    def next_output(self, webrtc_id: str, key: Any, kind: str = OUTPUTS_ADDITIONAL) -> list[Any] | None:
        """The oldest outputs of a session not yet fetched (None: none waiting): its
        AdditionalOutputs, or with ``kind=OUTPUTS_STREAM`` the values its function returned
        for the stream's other outputs. A session's unfetched outputs outlive it by
        OUTPUTS_GRACE_S. Raises 403 for a wrong key, 404 for no such session."""
        session = self.sessions.get(webrtc_id)
        queue: asyncio.Queue[list[Any]] | None
        if session is not None:
            self.authorize(webrtc_id, key)
            queue = session.stream_outputs if kind == OUTPUTS_STREAM else session.outputs
        else:
            ended = self._ended_outputs.get((webrtc_id, kind))
            if ended is None:
                if webrtc_id in self.keys:  # an offer being answered: no outputs yet
                    self.authorize(webrtc_id, key)
                    return None
                raise HTTPError(404, "unknown_webrtc_id", f"no session {webrtc_id!r}")
            _check_key(self.config, ended[0], key)
            queue = ended[1]
        if queue.empty():
            return None
        return queue.get_nowait()

    def set_args(self, webrtc_id: str, key: Any, args: list[Any]) -> None:
        self.authorize(webrtc_id, key)
        session = self.sessions.get(webrtc_id)
        if session is None:
            raise HTTPError(404, "unknown_webrtc_id", f"no session {webrtc_id!r}")
        if not session.input_rate.take():
            retry = max(1, math.ceil(session.input_rate.retry_after()))
            raise HTTPError(429, "input_rate_limited", "too many input posts for this session", headers={"Retry-After": str(retry)})
        try:
            Args(list(args)).encode()  # what the worker is sent: refused here, not after a 200
        except (TypeError, ValueError, OverflowError, WireError) as exc:
            raise HTTPError(400, "bad_request", f"'args' holds a value the worker cannot receive: {str(exc)[:200]}") from None
        session.set_args(args)

    def subscribe(self, webrtc_id: str, key: Any) -> tuple[Session, asyncio.Queue[list[Any]]]:
        """A queue of its own for an outputs (SSE) reader of a live session."""
        self.authorize(webrtc_id, key)
        session = self.sessions.get(webrtc_id)
        if session is None:
            raise HTTPError(404, "unknown_webrtc_id", f"no session {webrtc_id!r}")
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
                session.close_soon("the client hung up")
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
        await session.aclose("the server is draining")

    def drain_now(self) -> None:
        """End a drain's wait at once (a second SIGTERM, or SIGINT)."""
        self.draining = True
        if self._drain_now is None:
            self._drain_now = asyncio.Event()
        self._drain_now.set()

    def metrics(self) -> EngineMetrics:
        """This engine's counters and its live sessions' counts, for /metrics."""
        return snapshot(self.counters, [s.stats() for s in self.live_sessions()], self._load.loop_lag_ms)

    def live_sessions(self) -> list[Session]:
        return [s for s in self.sessions.values() if s is not None and not s.closed]

    # --- load -------------------------------------------------------------------------------------

    def start_load_sampler(self) -> None:
        """Measure this process's CPU and event-loop lag every LOAD_SAMPLE_S (on the loop:
        a late timer is the lag)."""
        if self._sampler is None:
            self._sampler = asyncio.get_running_loop().create_task(self._sample_load())

    async def _sample_load(self) -> None:
        cpu0, t0 = time.process_time(), time.monotonic()
        while True:
            await asyncio.sleep(LOAD_SAMPLE_S)
            cpu1, t1 = time.process_time(), time.monotonic()
            lag = max(0.0, t1 - t0 - LOAD_SAMPLE_S)
            self._load = EngineLoad(
                self.gateway_id,
                os.getpid(),
                self.node_id,
                len(self.live_sessions()),
                round(100.0 * (cpu1 - cpu0) / max(t1 - t0, 1e-6), 1),
                round(1000.0 * lag, 1),
            )
            cpu0, t0 = cpu1, t1

    def load(self) -> EngineLoad:
        sessions = len(self.live_sessions())
        if sessions != self._load.sessions:
            self._load = EngineLoad(**{**vars(self._load), "sessions": sessions})
        return self._load

    # --- lifecycle -------------------------------------------------------------------------------

    def start_heartbeat(self) -> None:
        """Beat from start-up, not from the first offer: the scheduler keeps a gateway's pools
        while it beats (a detached scheduler drops pools whose gateways are all gone). A
        thread, not a task: start() runs before any event loop of the app exists (the CLI,
        Gradio's launch()), and a beat is one small Ray call every HEARTBEAT_S."""
        if self._heartbeat is None or not self._heartbeat.is_alive():
            self._heartbeat_stop.clear()
            self._heartbeat = threading.Thread(target=self._heartbeat_run, name="rtcpool-heartbeat", daemon=True)
            self._heartbeat.start()

    def _heartbeat_run(self) -> None:
        import ray
        from ray.exceptions import ActorDiedError

        while not self._heartbeat_stop.wait(C.HEARTBEAT_S):
            live, scheduler = self._live_leases(), self.scheduler
            try:
                answer = ray.get(self._beat(scheduler, live), timeout=C.RAY_CALL_TIMEOUT_S)
            except ActorDiedError:
                if not self._heartbeat_stop.is_set():
                    with contextlib.suppress(Exception):  # tried again at the next beat
                        self.scheduler_died(scheduler)
                continue
            except Exception as exc:
                log.warning("scheduler heartbeat failed: %s", exc)
                continue
            self._take_answer(answer, live)

    def start_heartbeat_task(self) -> None:
        """The heartbeat as a task on this loop, for an engine inside an async Ray actor
        (a media process): there a blocking ray.get, even on a thread, is flagged by Ray."""
        if self._beat_task is None:
            self._beat_task = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    async def _heartbeat_loop(self) -> None:
        from ray.exceptions import ActorDiedError

        while True:
            await asyncio.sleep(C.HEARTBEAT_S)
            live, scheduler = self._live_leases(), self.scheduler
            try:
                answer = await asyncio.wait_for(self._beat(scheduler, live), C.RAY_CALL_TIMEOUT_S)
            except ActorDiedError:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.scheduler_died, scheduler)
                continue
            except Exception as exc:
                log.warning("scheduler heartbeat failed: %s", exc)
                continue
            self._take_answer(answer, live)

    def _live_leases(self) -> dict[str, Session]:
        # a copy made in one C call: the loop thread adds and removes sessions meanwhile
        return {s.lease_id: s for s in list(self.sessions.values()) if s is not None}

    def _beat(self, scheduler: Any, live: dict[str, Session]) -> Any:
        return scheduler.heartbeat.remote(
            self.gateway_id,
            list(live),
            list(self.events),
            {lid: s.transport for lid, s in live.items()},
            vars(self.load()),
        )

    def _take_answer(self, answer: HeartbeatAnswer, live: dict[str, Session]) -> None:
        for lease_id in answer.gone:
            session = live.get(lease_id)
            if session is not None:
                with contextlib.suppress(RuntimeError):  # its loop has closed: nothing to end
                    session.loop.call_soon_threadsafe(self._end_reclaimed, session)
        for event_id in answer.unknown_events:
            # dropped while this gateway was taken for gone (silent past the TTL)
            if self.on_unknown_event is not None and not self._heartbeat_stop.is_set():
                self.on_unknown_event(event_id)

    def _end_reclaimed(self, session: Session) -> None:
        session.send_client("end_stream", {"reason": "lease_reclaimed"})
        session.close_soon("the scheduler reclaimed the lease", delay=C.END_STREAM_GRACE_S)

    def stop_heartbeat(self) -> threading.Thread | None:
        thread, self._heartbeat = self._heartbeat, None
        self._heartbeat_stop.set()
        return thread

    async def session_ended(self, session: Session) -> None:
        key = self.keys.get(session.webrtc_id, "")
        if session.pc is not None and session.lease_id:
            self.counters.session_ended(session.stats(), session.end_reason)
        if session.admission is not None:
            session.admission.ended()
        if self.sessions.get(session.webrtc_id) is session:
            self.sessions.pop(session.webrtc_id, None)
            self.keys.pop(session.webrtc_id, None)
        for kind, queue in (
            (OUTPUTS_ADDITIONAL, session.outputs),
            (OUTPUTS_STREAM, session.stream_outputs),
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
        for task in (self._sampler, self._beat_task, *self._timers):
            if task is not None:
                task.cancel()
        self._sampler = self._beat_task = None
        sessions = [s for s in self.sessions.values() if s is not None]
        await asyncio.gather(*(s.aclose("gateway shutting down") for s in sessions), return_exceptions=True)
        beating = self.stop_heartbeat()
        if beating is not None:
            # a beat after forget_gateway would make this gateway known again
            await asyncio.to_thread(beating.join, C.RAY_CALL_TIMEOUT_S)
        if self.scheduler is not None:
            try:
                await asyncio.wait_for(self.scheduler.forget_gateway.remote(self.gateway_id), C.RAY_CALL_TIMEOUT_S)
            except Exception as exc:
                log.warning("scheduler did not take the gateway's shutdown: %s", exc)

    def status(self) -> dict[str, Any]:
        return {
            sid: {"worker_pid": s.worker_pid, "frames_in": s.frames_in, "frames_out": s.frames_out, "channel": vars(s.channel.stats) if s.channel else None}
            for sid, s in self.sessions.items()
            if s is not None
        }

    def sessions_view(self) -> list[dict[str, Any]]:
        # no webrtc_id: it is the key to a session's inputs and outputs
        return [
            {"event_id": s.event.event_id, "worker_pid": s.worker_pid, "worker_node_id": s.lease.node_id, "transport": s.transport, "media_pid": os.getpid()}
            for s in self.live_sessions()
        ]

