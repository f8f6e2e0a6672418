"""The gateway: one per app process, its stream events, its engines, its start and stop.

It is framework-agnostic: :meth:`Gateway.mount` adds its routes (runtime/front/routes.py)
to any FastAPI app (the Gradio app included), at the app's root.

An offer for a full stream that queues is answered 202 with a place in the stream's line
(runtime/control/waiting_room.py, kept by the scheduler for the whole deployment); the client follows
it and posts the same offer again with its ticket when admitted.

Where media runs is ``gateway.processes``: with 1 the app's process holds the sessions itself
(a :class:`runtime.media.engine.MediaEngine` on the app's event loop); with N >= 2 it starts N media
processes on its node (runtime/front/supervisor.py), places each offer on the least loaded one
and keeps signalling only. Per-session requests reach the engine that holds the session
wherever it is (runtime/front/engines.py): this process, one of its media processes, or a
media process another gateway of the deployment started (the scheduler's session directory
says which), so a plain load balancer in front of several gateways needs no stickiness.

Handlers never run here: an engine leases a worker from the scheduler for each session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import uuid
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from runtime import constants as C
from runtime.config import Config
from runtime.config_loader import load_config
from runtime.control.scheduler import get_scheduler
from runtime.errors import ErrorCode, Refused
from runtime.front import streams
from runtime.front.engines import SSE_KEEPALIVE_S, EngineHandle, LocalEngine, RemoteEngine, forward
from runtime.front.queue_follower import QueueFollower
from runtime.front.ray_start import connect_ray
from runtime.front.routes import check_ticket, mount_routes
from runtime.front.supervisor import MediaSlot, MediaSupervisor
from runtime.front.twilio import CallTokens, log_webhook_mode
from runtime.guard.auth import AuthGrant, gradio_app_of, gradio_auth_enabled, gradio_user
from runtime.guard.limits import AddressLimits, AddressRate
from runtime.media.engine import MediaEngine
from runtime.media.ice import pin_host_addresses
from runtime.media.offers import check_id, check_sdp, draining_error, key_digest
from runtime.media.session import Session
from runtime.media.session_view import SessionView
from runtime.media.stream_event import StreamEvent
from runtime.ops import drain, logs, shm_janitor
from runtime.ops.metrics import render
from runtime.ops.shm_check import require_shm
from workers.link.shape import Transport
from workers.link.wire import OutputsKind
from workers.process.loader import StreamOutputs

log = logging.getLogger("rtcpool.gateway")

UNBOUNDED_HOLDS = 10**9  # the front's offer-rate limiter holds nothing: the engines count holds
READY_TIMEOUT_S = 2.0  # /webrtc/ready: the scheduler answers by then, or the gateway is not ready
DRAIN_MARGIN_S = C.END_STREAM_GRACE_S + C.CLOSE_ACK_TIMEOUT_S + 2 * C.RAY_CALL_TIMEOUT_S  # after a drain's deadline, its sessions' closes


class Gateway:
    def __init__(self, config: Config | None = None) -> None:
        self.config = config or load_config()
        self.gateway_id = f"gw-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.events: dict[str, StreamEvent] = {}
        # the engine of this process: it holds the sessions with processes: 1; with media
        # processes it holds none, and its heartbeat keeps the front's hold on its pools
        self.engine = MediaEngine(self.config, self.gateway_id)
        self.local = LocalEngine(self.engine)
        self.processes = self.config.gateway.media_processes()
        self.supervisor = MediaSupervisor(self.config, self.gateway_id, lambda: self.scheduler, self._media_events)
        self.scheduler: Any = None
        self.node_id = ""
        self._started = False
        self._start_lock = threading.Lock()
        # who may use the routes, and how fast one address may post offers (its pending
        # offers and sessions are counted by the engine that holds them)
        self.auth = self.config.gateway.signalling_auth(self.config.telephone.public_url)
        lc = self.config.gateway.limits
        # requests about a session, per address, before any Ray call (the session directory)
        self.session_requests = AddressRate(
            lc.session_requests_per_address_per_s, lc.session_request_burst_per_address,
            code=ErrorCode.SESSION_REQUEST_RATE_LIMITED, what="requests about sessions",
            exempt_loopback=lc.exempt_loopback, max_tracked=lc.max_tracked_addresses,
        )  # fmt: skip
        self.offer_rate = AddressLimits(
            UNBOUNDED_HOLDS, UNBOUNDED_HOLDS, lc.max_offers_per_address_per_min,
            exempt_loopback=lc.exempt_loopback, max_tracked=lc.max_tracked_addresses,
        )  # fmt: skip
        # the event loop the routes run on (the sessions of processes: 1 live there): a
        # drain started by a signal runs on it
        self.loop: asyncio.AbstractEventLoop | None = None
        # the queued clients' updates streams, from one long poll of the scheduler
        qc = self.config.queue
        self.queue = QueueFollower(
            lambda: self.scheduler, qc.max_update_streams_per_ticket, qc.max_update_streams_per_address,
            exempt_loopback=lc.exempt_loopback,
        )  # fmt: skip
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False  # aclose() has begun
        self.call_tokens = CallTokens.from_config(self.config)  # Twilio media streams announced by /telephone/incoming

    # the engine's state, as the gateway had it before media processes (tests, benchmarks)
    @property
    def sessions(self) -> dict[str, Session]:
        return self.engine.sessions

    @property
    def geometry(self) -> Any:
        return self.engine.geometry

    @property
    def in_app(self) -> bool:
        """Whether this process carries the media itself (gateway.processes: 1)."""
        return self.processes == 1

    @property
    def media(self) -> list[MediaSlot]:
        """This front's media processes (none with gateway.processes: 1)."""
        return self.supervisor.slots

    @property
    def inbox(self) -> Any:
        """processes: 1 on a cluster: the actor other gateways reach this process's sessions by."""
        return self.local.inbox

    # --- set-up ------------------------------------------------------------------------------

    def add_stream(
        self,
        handler: Any,
        *,
        mode: str = "send-receive",
        modality: str = "video",
        concurrency_limit: int | None = 1,
        time_limit: float | None = None,
        initial_args: list[Any] | None = None,
        event_id: str | None = None,
        stream_every: float | None = None,
        outputs: StreamOutputs | None = None,
        queue: bool = True,
        max_queue: int | None = None,
        queue_timeout_s: float | None = None,
    ) -> StreamEvent:
        """Register a stream event.

        ``queue`` (default True, as in Gradio): an offer for the stream when it is full waits
        in its line (answered 202 with a place, admitted in order as slots free) instead of
        429 + Retry-After; ``max_queue`` bounds the line (Gradio's ``max_size``; None: the
        config's ``queue.max_size``), ``queue_timeout_s`` how long one may wait. ``stream_every`` (seconds): a plain function takes input
        at most this often -- the newest video frame, or audio in chunks of exactly this
        length; a StreamHandler gets every frame regardless (its receive() is its input).
        ``outputs``: how a plain function's result maps onto the stream's outputs (Gradio's
        ``.stream(outputs=...)``; default: the result is the media)."""
        event = streams.make_event(
            self.config, self.events, handler, mode=mode, modality=modality,
            concurrency_limit=concurrency_limit, time_limit=time_limit, initial_args=initial_args,
            event_id=event_id, stream_every=stream_every, outputs=outputs, queue=queue,
            max_queue=max_queue, queue_timeout_s=queue_timeout_s,
        )  # fmt: skip
        self.events[event.event_id] = event
        if self._started:
            self._register(event)
            self.supervisor.send_events()
        return event

    def _media_events(self) -> list[StreamEvent]:
        return [e.media_only() for e in self.events.values()]

    def start(self) -> None:
        """Connect to (or start) Ray, register every stream event, start the media processes.
        Idempotent; blocking."""
        with self._start_lock:
            if self._started:
                return
            logs.configure(self.config.gateway.log_format)
            pin_host_addresses(self.config.gateway.ice_host_addresses)
            rc = self.config.ray
            if self.auth.hosts is not None and self.auth.hosts.any:
                log.warning(
                    "gateway.allowed_hosts has '*': requests naming any host are served, so a "
                    "DNS-rebinding page can reach this server through a visitor's browser"
                )
            if not self.config.gateway.require_session_key:
                log.warning(
                    "gateway.require_session_key is false: anyone who learns a session's webrtc_id "
                    "can send it input, read its outputs and close it"
                )
            log_webhook_mode(self.config)  # phone calls off, or taking unsigned webhooks: said once
            self.node_id = connect_ray(self.config)
            # segments that killed rtcpool processes left behind count against /dev/shm: gone
            # before it is checked, and swept again while this process runs
            shm_janitor.start_janitor(self.config.gateway.shm_janitor_interval_s)
            # after ray.init (its object store may share /dev/shm): a full /dev/shm kills a
            # session with SIGBUS mid-frame, so say it now, with what to change
            require_shm(self.config, self._most_sessions())
            self.scheduler = get_scheduler(detached=rc.detached_scheduler, namespace=rc.namespace)
            self._register_all()
            self._warn_unknown_streams()
            eng = self.engine
            eng.scheduler, eng.node_id = self.scheduler, self.node_id
            eng.events = self.events
            eng.on_unknown_event = self._register_again
            eng.on_scheduler_died = self._replace_scheduler
            eng.start_heartbeat()
            if not self.in_app:
                self.supervisor.start(self.processes, self.node_id)
            elif not rc.embedded:
                self.local.start_inbox(self.scheduler, self.gateway_id, self.node_id)
            self._started = True
            drain.register(self)  # SIGTERM drains it from now on

    def _replace_scheduler(self, dead: Any) -> None:
        """The scheduler actor died (its node or process): find or start a new one and
        register this gateway's streams with it. Leases of the dead one are unknown to the
        new one, so the heartbeat ends their sessions, as for any reclaimed lease: the new
        scheduler could not count them against concurrency_limit. Blocking."""
        with self._start_lock:
            if self.scheduler is not dead:
                return  # another caller replaced it already
            rc = self.config.ray
            log.warning("the scheduler died: starting a new one, registering %d stream(s) again", len(self.events))
            self.scheduler = self.engine.scheduler = get_scheduler(
                detached=rc.detached_scheduler, namespace=rc.namespace, replace=True
            )
            for event in self.events.values():
                self._register(event)

    def _register_all(self) -> None:
        """Register every stream at start-up. The scheduler handle this process holds may be
        of one that died since (an earlier app of this process saw it die, or its node went):
        then a new one is found or started, once (CI-found: every later app of a test process
        failed to start)."""
        from ray.exceptions import ActorDiedError

        rc = self.config.ray
        try:
            for event in self.events.values():
                self._register(event)
        except ActorDiedError:
            log.warning("the scheduler this process knew is gone: starting a new one")
            self.scheduler = get_scheduler(detached=rc.detached_scheduler, namespace=rc.namespace, replace=True)
            for event in self.events.values():
                self._register(event)

    def _register_again(self, event_id: str) -> None:
        # dropped while this gateway was taken for gone (silent past the TTL)
        event = self.events.get(event_id)
        if event is not None:
            log.warning("the scheduler forgot stream event %r: registering it again", event_id)
            try:
                self._register(event)
            except Exception as exc:
                log.warning("registering %r again failed: %s", event_id, exc)

    def _warn_unknown_streams(self) -> None:
        """``streams.<id>`` keys that match no stream event are most likely a typo or an id
        that changed: say so at start. A warning, not an error: one config file may serve
        several apps, and a stream may be added after start()."""
        unknown = streams.unknown_stream_overrides(self.config, self.events)
        if unknown:
            log.warning(
                "config streams.%s: no stream event has that id (this app's: %s); its settings apply to nothing",
                ", streams.".join(unknown),
                ", ".join(sorted(self.events)) or "none",
            )

    def _register(self, event: StreamEvent) -> None:
        import ray

        spec = streams.event_spec(self.config, event)
        answer = ray.get(self.scheduler.register.remote(spec, self.gateway_id), timeout=C.REGISTER_TIMEOUT_S)
        if answer.warning:
            log.warning("%s", answer.warning)

    def wait_warm(self, timeout: float = C.WORKER_START_TIMEOUT_S) -> None:
        """Block until every event's pre-warmed workers are ready (tests, benchmarks, CLI)."""
        import ray

        refs = [self.scheduler.wait_warm.remote(eid, timeout) for eid in self.events]
        ray.get(refs, timeout=timeout + C.RAY_CALL_TIMEOUT_S)

    def _most_sessions(self) -> int:
        """The sessions this host may hold at once: each stream's limit, or its pool's size."""
        pool = self.config.pool.max_workers
        return sum(e.concurrency_limit or pool for e in self.events.values())

    def mount(self, app: Any) -> None:
        """Add the signalling routes to a FastAPI (or Gradio) app, at its root."""
        mount_routes(app, self)

    # --- signalling ----------------------------------------------------------------------------

    async def check_access(self, request: Any) -> AuthGrant:
        """Who may use a signalling route (gateway.auth, gateway.allowed_origins): the Origin
        first, then the credentials. Routes on a Gradio app launched with ``auth=`` take
        that app's login whatever the mode, as Gradio's own routes do."""
        grant = await self.auth.check_request(request, stream_id=None)  # the offer's stream: handle_offer
        if self.auth.mode == "none":
            app = gradio_app_of(request)
            if app is not None and gradio_auth_enabled(app) and await gradio_user(request, app) is None:
                raise Refused(ErrorCode.AUTH_REQUIRED, "log in to the app first (its Gradio login)")
        return grant

    def count_offer(self, outcome: str, status: int | None = None) -> None:
        """An offer answered, queued or refused (the /metrics offer outcomes)."""
        self.engine.counters.offer_outcome(outcome, status)

    def pick_event(self, stream_id: Any) -> StreamEvent:
        return streams.pick_event(self.events, stream_id)

    async def handle_offer(self, body: dict[str, Any], key: Any = None, client: str | None = None, grant: AuthGrant | None = None) -> dict[str, Any]:
        """An offer, or a trickled ICE candidate for a session (with its ``key``)."""
        kind = body.get("type")
        if kind == "ice-candidate":
            self.session_requests.take(client)
            webrtc_id = check_id(body.get("webrtc_id"))
            await (await self.engine_for(webrtc_id)).candidate(webrtc_id, key, body.get("candidate"))
            return {"status": "success"}
        if kind != "offer":
            raise Refused(ErrorCode.BAD_REQUEST, "'type' must be 'offer' or 'ice-candidate'")
        if self.draining:
            raise draining_error()
        self.offer_rate.admit_offer(client).ended()  # counts against its rate, holds nothing
        webrtc_id = check_id(body.get("webrtc_id"))
        event = self.pick_event(body.get("stream_id"))
        queue = body.get("queue", True)
        if not isinstance(queue, bool):
            raise Refused(ErrorCode.BAD_REQUEST, "'queue' must be true or false")
        ticket = body.get("queue_ticket")
        if ticket is not None:
            ticket = check_ticket(ticket)
        claims = grant.claims if grant is not None else None
        if claims is not None and claims.stream_id is not None and claims.stream_id != event.event_id:
            raise Refused(ErrorCode.TOKEN_WRONG_STREAM, "this join token is for another stream")
        sdp = check_sdp(body.get("sdp"), event, self.config.gateway.max_offer_bytes, self.config.gateway.video_codecs)
        if "session_key" in body:
            # a resume: the client's own session again, proved by its key (docs/failover.md)
            return await self._resume(event, webrtc_id, sdp, body["session_key"], client)
        if not self._started:
            if self.in_app:
                # reserve the id before Ray's start-up: a second offer with it meanwhile is
                # a duplicate, and a close for it finds it pending rather than unknown
                if webrtc_id in self.engine.sessions:
                    raise Refused(ErrorCode.DUPLICATE_WEBRTC_ID, f"a session {webrtc_id!r} is already active")
                self.engine.sessions[webrtc_id] = None  # type: ignore[assignment]
                try:
                    await asyncio.get_running_loop().run_in_executor(None, self.start)
                finally:
                    if self.engine.sessions.get(webrtc_id) is None:
                        self.engine.sessions.pop(webrtc_id, None)
            else:
                await asyncio.get_running_loop().run_in_executor(None, self.start)
        if self.in_app:
            return await self.local.offer(event.event_id, webrtc_id, sdp, client, queue, ticket)
        return await self.supervisor.offer(event.event_id, webrtc_id, sdp, client, queue, ticket)

    async def _resume(self, event: StreamEvent, webrtc_id: str, sdp: str, key: Any, client: str | None) -> dict[str, Any]:
        if not isinstance(key, str) or not key:
            raise Refused(ErrorCode.SESSION_KEY_REQUIRED, "a resume offer carries its session's key ('session_key')")
        if not self._started:
            raise Refused(ErrorCode.NOT_RESUMABLE, f"no session {webrtc_id!r} to resume")
        if self.in_app:
            return await self.local.resume(event.event_id, webrtc_id, sdp, key, client)
        return await self.supervisor.resume(event.event_id, webrtc_id, sdp, key, client)

    async def open_websocket(
        self,
        event: StreamEvent,
        webrtc_id: str,
        client: str | None,
        client_kind: Transport,
        send_text: Callable[[str], Awaitable[None]],
        queue: bool,
        ticket: str | None,
    ) -> dict[str, Any]:
        """A WebSocket audio client's session (runtime/front/websocket_routes.py), in this process's
        engine whatever gateway.processes says: its socket is here, and mu-law audio is too
        little work to hand on. Limits, line and answers as :meth:`handle_offer`'s."""
        if self.draining:
            raise draining_error()
        self.offer_rate.admit_offer(client).ended()
        if not self._started:
            await asyncio.get_running_loop().run_in_executor(None, self.start)
        if self.in_app:
            self.local.serve_inbox()
        return await self.engine.open_websocket(event.event_id, webrtc_id, client, client_kind, send_text, queue, ticket)

    # --- per-session requests, wherever the session is ----------------------------------------------

    async def engine_for(self, webrtc_id: str) -> EngineHandle:
        """The engine that holds a session: this process's, one of its media processes, or
        a media process of another gateway (from the scheduler's session directory)."""
        if webrtc_id in self.engine.sessions:
            return self.local
        slot = self.supervisor.placed.get(webrtc_id)
        if slot is not None:
            return slot.engine
        if self.scheduler is None or (self.in_app and self.config.ray.embedded):
            # not started, or the only gateway of its own Ray with the media in this process:
            # a session not here is nowhere, said without asking the directory
            raise Refused(ErrorCode.UNKNOWN_WEBRTC_ID, f"no session {webrtc_id!r}")
        try:
            found = await asyncio.wait_for(self.scheduler.locate.remote(webrtc_id), C.RAY_CALL_TIMEOUT_S)
        except Exception as exc:
            raise Refused(ErrorCode.SCHEDULER_UNAVAILABLE, f"the session directory did not answer: {exc}") from exc
        if found is None or found.gateway_id == self.gateway_id:
            raise Refused(ErrorCode.UNKNOWN_WEBRTC_ID, f"no session {webrtc_id!r}")
        if found.media is None:
            # an app process under its own embedded Ray has no inbox; kept for safety
            raise Refused(
                ErrorCode.SESSION_ELSEWHERE,
                f"session {webrtc_id!r} is held inside another gateway's process, which this one cannot reach",
            )
        return RemoteEngine(found.media)

    # Every per-session call takes the session's ``key`` (the answer's session_key) and is
    # checked by the engine that holds the session, wherever the request came in.

    async def aset_args(self, webrtc_id: str, key: Any, args: list[Any]) -> None:
        await (await self.engine_for(webrtc_id)).set_args(webrtc_id, key, args)

    async def anext_output(self, webrtc_id: str, key: Any, kind: OutputsKind = OutputsKind.ADDITIONAL) -> list[Any] | None:
        """The oldest outputs of a session not yet fetched (None: none waiting), wherever
        the session is (see MediaEngine.next_output). Refused 404/403 as the routes."""
        try:
            owner = await self.engine_for(webrtc_id)
        except Refused:
            return self.engine.next_output(webrtc_id, key, kind)  # an ended session's, kept a while here
        return await owner.next_output(webrtc_id, key, kind)

    def next_output(self, webrtc_id: str, key: Any, kind: OutputsKind = OutputsKind.ADDITIONAL) -> list[Any] | None:
        """This process's sessions only (gateway.processes: 1); see anext_output."""
        return self.engine.next_output(webrtc_id, key, kind)

    async def close_session(self, webrtc_id: str, key: Any) -> None:
        """End a session because its client hung up (see MediaEngine.close_session); a
        session held for its resume (its media process died) is given up for good."""
        try:
            await (await self.engine_for(webrtc_id)).close_session(webrtc_id, key)
        except Refused as err:
            # (its media process may have died since this front placed it: "unknown" too)
            if err.code != ErrorCode.UNKNOWN_WEBRTC_ID or not await self._abandon_held(webrtc_id, key):
                raise

    async def _abandon_held(self, webrtc_id: str, key: Any) -> bool:
        if self.scheduler is None or not isinstance(key, str) or not key:
            return False
        if self.in_app and self.config.ray.embedded:
            return False  # no media process of its own: nothing is ever held (and no look-up per unknown id)
        try:
            return bool(await asyncio.wait_for(self.scheduler.abandon.remote(webrtc_id, key_digest(key)), C.RAY_CALL_TIMEOUT_S))
        except Exception as exc:
            log.warning("the scheduler did not take a hang-up of a held session: %s", exc)
            return False

    async def output_stream(self, webrtc_id: str, key: Any) -> AsyncIterator[list[Any] | None]:
        """An async iterator of a session's AdditionalOutputs for one SSE reader: a list of
        values each, or None every SSE_KEEPALIVE_S while there are none."""
        return await (await self.engine_for(webrtc_id)).outputs(webrtc_id, key)

    # --- the waiting room ------------------------------------------------------------------------

    async def queue_stream(self, secret: str, webrtc_id: str, client: str | None = None) -> AsyncGenerator[dict[str, Any] | None, None]:
        """A queued client's updates: its place in line (QueueView.to_json) now and on every
        change, None as keep-alive, ending once it is admitted or gone. A stream that closes
        while the client still waits (a closed tab) takes it out of the line. Streams per
        ticket and per ``client`` address are bounded (429 too_many_queue_streams)."""
        if self.scheduler is None:  # not started: no line has anyone in it
            raise Refused(ErrorCode.UNKNOWN_QUEUE_TICKET, "no such queue ticket")
        holds = self.queue.admit(secret, client)
        try:
            try:
                first = await self.queue.first_view(secret, webrtc_id)
            except Exception as exc:
                raise Refused(ErrorCode.SCHEDULER_UNAVAILABLE, f"the scheduler did not answer: {exc}") from exc
            if first.get("reason") == "unknown_ticket":
                raise Refused(ErrorCode.UNKNOWN_QUEUE_TICKET, "no such queue ticket for this session")
        except BaseException:
            holds.release()
            raise

        async def stream() -> AsyncGenerator[dict[str, Any] | None, None]:
            last = first
            try:
                async for view in self.queue.updates(secret, webrtc_id, first, SSE_KEEPALIVE_S):
                    if view is not None:
                        last = view
                    yield view
            finally:
                holds.release()
                # the client went away while it waited (not this gateway: a drain or a
                # shutdown closes the stream, and the client follows on through another)
                if last["state"] == "waiting" and not self.draining and not self._closing:
                    task = asyncio.get_running_loop().create_task(self._leave_quietly(secret, webrtc_id))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)

        updates = stream()
        weakref.finalize(updates, holds.release)  # a response that never started its stream
        return updates

    async def _leave_quietly(self, secret: str, webrtc_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.leave_queue(secret, webrtc_id)

    async def leave_queue(self, secret: str, webrtc_id: str) -> None:
        if self.scheduler is None:
            raise Refused(ErrorCode.UNKNOWN_QUEUE_TICKET, "no such queue ticket")
        try:
            left = await asyncio.wait_for(self.scheduler.leave.remote(secret, webrtc_id), C.RAY_CALL_TIMEOUT_S)
        except Exception as exc:
            raise Refused(ErrorCode.SCHEDULER_UNAVAILABLE, f"the scheduler did not answer: {exc}") from exc
        if not left:
            raise Refused(ErrorCode.UNKNOWN_QUEUE_TICKET, "no such queue ticket for this session (or it already left)")

    # --- views over every engine ---------------------------------------------------------------

    def check_session_request(self, request: Any) -> None:
        """Charge a request about a session (close, input, outputs; candidates in
        handle_offer) to its address's rate, before it costs a Ray call: Refused 429
        ``session_request_rate_limited``."""
        self.session_requests.take(request.client.host if request.client else None)

    async def sessions_view(self, internals: bool = True) -> list[SessionView]:
        """The live sessions of this gateway and its media processes (no webrtc_id: it is
        the key to a session's inputs and outputs). ``internals`` False: none at all (an
        ordinary client is told nothing of other users' sessions, GET /webrtc/sessions)."""
        if not internals:
            return []
        view = self.engine.sessions_view()
        for views in await self.supervisor.ask_each("sessions_view"):
            view += views
        return view

    async def readiness(self) -> list[str]:
        """What keeps this gateway from taking new users (empty: ready): draining, not
        started, Ray or the scheduler unreachable, a stream whose pool cannot place a worker,
        no media process running, a media process whose event loop is stalled."""
        if self.draining:
            return ["draining"]
        if not self._started:
            return ["not started (the first offer, or the app's start-up, starts it)"]
        try:
            status = await asyncio.wait_for(self.scheduler.status.remote(), READY_TIMEOUT_S)
        except Exception as exc:
            return [f"scheduler unreachable: {type(exc).__name__}"]
        problems = []
        for eid in self.events:
            pool = status.events.get(eid)
            if pool is None:
                problems.append(f"stream {eid!r} is not registered with the scheduler")
            elif pool.unplaceable:
                problems.append(f"stream {eid!r}: {pool.unplaceable}")
        if not self.in_app and not self.media:
            problems.append("no media process is running")
        if not self.in_app:
            problems += await self.supervisor.stalled(READY_TIMEOUT_S)
        return problems

    async def metrics_text(self) -> tuple[bytes, str]:
        """GET /metrics: this process's engine, every media process's, and the scheduler's
        pools (None when it does not answer: the rest is still worth scraping)."""
        engines = [self.engine.metrics(), *await self.supervisor.ask_each("metrics")]
        status = None
        if self.scheduler is not None:
            with contextlib.suppress(Exception):
                status = await asyncio.wait_for(self.scheduler.status.remote(), READY_TIMEOUT_S)
        return render(engines, status)

    # --- draining and the end ------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self.engine.draining

    async def adrain(self, timeout_s: float | None = None) -> None:
        """Stop taking offers (503 + Retry-After), tell every client, let sessions run up to
        ``timeout_s`` (gateway.drain_timeout_s), then end the rest; here and in every media
        process. The routes keep serving the live sessions meanwhile."""
        timeout = self.config.gateway.drain_timeout_s if timeout_s is None else timeout_s
        self.engine.draining = True
        log.info("draining: no new offers; live sessions may run %.0f s more", timeout)
        calls = [self.engine.adrain(timeout)]
        calls += [forward(slot.actor.drain.remote(timeout), timeout + DRAIN_MARGIN_S) for slot in list(self.media)]
        for result in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(result, BaseException):
                log.warning("a media process did not drain: %s", result)

    async def adrain_now(self) -> None:
        """Cut a drain's wait short: the live sessions are ended now (still cleanly)."""
        self.engine.drain_now()
        await self.supervisor.ask_each("drain_now")

    async def aclose(self, drop_pools: bool = False) -> None:
        """End every session and give back every lease. Safe to call twice.
        ``drop_pools``: also kill this app's idle workers (when no other gateway serves it)."""
        drain.unregister(self)
        self._closing = True
        await self.queue.aclose()
        await self.supervisor.aclose()
        await self.engine.aclose()
        self.local.close_inbox()
        if self.scheduler is not None and drop_pools:
            try:
                for eid in self.events:
                    await asyncio.wait_for(self.scheduler.unregister.remote(eid), C.RAY_CALL_TIMEOUT_S)
            except Exception as exc:
                log.warning("scheduler did not take the gateway's shutdown: %s", exc)
