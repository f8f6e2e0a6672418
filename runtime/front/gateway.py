"""The gateway's front: signalling routes, stream registrations, and placement.

One ``Gateway`` per app process. It is framework-agnostic: :meth:`Gateway.mount` adds its
routes to any FastAPI app (the Gradio app included), at the app's root:

* ``POST /webrtc/offer`` -- fastrtc's offer and trickle-candidate body;
* ``GET  /webrtc/streams`` -- the stream events this app serves;
* ``GET  /webrtc/sessions`` -- the live sessions of this gateway (no ids: they are keys);
* ``POST /webrtc/input`` -- set a session's additional inputs (apps without Gradio);
* ``POST /webrtc/close`` -- the client hangs up: ``{"webrtc_id"}`` ends that session;
* ``GET  /webrtc/outputs?webrtc_id=`` -- server-sent events with its AdditionalOutputs;
* ``GET  /webrtc/queue?webrtc_id=`` -- a queued offer's place in line, as server-sent events
  (the ticket in ``X-Queue-Ticket``); ``POST /webrtc/queue/leave`` -- leave the line.

An offer for a full stream that queues is answered 202 with a place in the stream's line
(runtime/control/waiting_room.py, kept by the scheduler for the whole deployment); the client follows
it and posts the same offer again with its ticket when admitted.

Where media runs is ``gateway.processes``: with 1 the app's process holds the sessions itself
(a :class:`runtime.media.engine.MediaEngine` on the app's event loop); with N >= 2 it starts N media
processes on its node (runtime/media/media_process.py), places each offer on the least loaded one
and keeps signalling only. Per-session requests reach the engine that holds the session
wherever it is: this process, one of its media processes, or a media process another gateway
of the deployment started (the scheduler's session directory says which), so a plain
load balancer in front of several gateways needs no stickiness.

Handlers never run here: an engine leases a worker from the scheduler for each session.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from runtime import constants as C
from runtime.config import Config, load_config
from runtime.control.scheduler import EventSpec, PoolSpec, get_scheduler
from runtime.errors import HTTPError, Refusal
from runtime.front.queue_follower import QueueFollower
from runtime.guard import safejson
from runtime.guard.auth import AuthGrant, gradio_app_of, gradio_auth_enabled, gradio_user
from runtime.guard.limits import AddressLimits
from runtime.media.engine import (
    EngineLoad,
    MediaEngine,
    StreamEvent,
    check_id,
    check_sdp,
    draining_error,
)
from runtime.media.ice import pin_host_addresses
from runtime.media.session import Session
from runtime.ops import drain, logs
from runtime.ops.metrics import render
from runtime.ops.shm_check import require_shm
from workers.handlers import StreamHandlerBase, VideoStreamHandler
from workers.link.wire import OUTPUTS_ADDITIONAL
from workers.process.loader import StreamOutputs, app_file_of, make_spec

log = logging.getLogger("rtcpool.gateway")

MODES = ("send-receive", "send", "receive")
MODALITIES = ("video", "audio", "audio-video")
SESSION_KEY_HEADER = "x-session-key"  # where a GET (the outputs stream) carries the session key
QUEUE_TICKET_HEADER = "x-queue-ticket"  # where the updates stream's GET carries the queue ticket
MAX_TICKET_CHARS = 64  # a queue ticket is 32 characters; anything longer is not one
SSE_KEEPALIVE_S = 15.0  # comment line on an idle outputs stream, so proxies keep it open
PLACED_CACHE_MAX = 4096  # sessions whose media process this front remembers (else: the directory)
UNBOUNDED_HOLDS = 10**9  # the front's offer-rate limiter holds nothing: the engines count holds
READY_TIMEOUT_S = 2.0  # /webrtc/ready: the scheduler answers by then, or the gateway is not ready
DRAIN_MARGIN_S = C.END_STREAM_GRACE_S + C.CLOSE_ACK_TIMEOUT_S + 2 * C.RAY_CALL_TIMEOUT_S  # after a drain's deadline, its sessions' closes
FORWARD_TIMEOUT_S = C.RAY_CALL_TIMEOUT_S  # a forwarded per-session call not answered by then fails
OFFER_FORWARD_TIMEOUT_S = C.LEASE_TIMEOUT_S + C.RAY_CALL_TIMEOUT_S + C.WORKER_CONNECT_TIMEOUT_S + C.RAY_CALL_TIMEOUT_S

__all__ = ["Gateway", "HTTPError", "StreamEvent", "MODES", "MODALITIES", "check_stream_options"]


def check_stream_options(handler: Any, stream_every: Any, outputs: StreamOutputs | None) -> None:
    """Refuse, at registration, what a stream event cannot run: ``stream_every`` must be a
    positive number of seconds (or None); a StreamHandler's ``emit()`` gives the stream's
    media only, so its other components are updated with AdditionalOutputs instead."""
    if stream_every is not None and (
        isinstance(stream_every, bool)
        or not isinstance(stream_every, (int, float))
        or not math.isfinite(stream_every)
        or stream_every <= 0
    ):
        raise ValueError(
            f"stream_every must be a positive number of seconds or None, got {stream_every!r}"
        )
    if outputs is not None and outputs.mapped and isinstance(handler, StreamHandlerBase):
        raise ValueError(
            f"{type(handler).__name__} is a StreamHandler: its emit() gives the stream's media, so its "
            "only output is the WebRTC component; update other components by yielding "
            "AdditionalOutputs (.on_additional_outputs)"
        )


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


OWN_ROUTE_PREFIXES = ("/webrtc/", "/websocket/", "/telephone/")  # ahead of an app's catch-alls


class Gateway:
    def __init__(self, config: Config | None = None) -> None:
        self.config = config or load_config()
        self.gateway_id = f"gw-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.events: dict[str, StreamEvent] = {}
        # the engine of this process: it holds the sessions with processes: 1; with media
        # processes it holds none, and its heartbeat keeps the front's hold on its pools
        self.engine = MediaEngine(self.config, self.gateway_id)
        self.processes = self.config.gateway.media_processes()
        self.media: list[MediaSlot] = []
        self._placed: collections.OrderedDict[str, MediaSlot] = collections.OrderedDict()
        self.scheduler: Any = None
        self.node_id = ""
        self._started = False
        self._start_lock = threading.Lock()
        self._media_lock = threading.Lock()
        self._supervisor: threading.Thread | None = None
        self._supervisor_stop = threading.Event()
        # processes: 1 on a cluster: the inbox other gateways reach this process's sessions by
        self.inbox: Any = None
        self._inbox_task: asyncio.Task[None] | None = None
        self._inbox_stop: asyncio.Event | None = None
        # who may use the routes, and how fast one address may post offers (its pending
        # offers and sessions are counted by the engine that holds them)
        self.auth = self.config.gateway.signalling_auth()
        lc = self.config.gateway.limits
        self.offer_rate = AddressLimits(
            UNBOUNDED_HOLDS, UNBOUNDED_HOLDS, lc.max_offers_per_address_per_min,
            exempt_loopback=lc.exempt_loopback, max_tracked=lc.max_tracked_addresses,
        )  # fmt: skip
        # the event loop the routes run on (the sessions of processes: 1 live there): a
        # drain started by a signal runs on it
        self.loop: asyncio.AbstractEventLoop | None = None
        # the queued clients' updates streams, from one long poll of the scheduler
        self.queue = QueueFollower(lambda: self.scheduler)
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False  # aclose() has begun
        from runtime.front.websocket_routes import CallTokens

        self.call_tokens = CallTokens()  # Twilio media streams announced by /telephone/incoming

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
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        if concurrency_limit is not None and concurrency_limit < 1:
            raise ValueError("concurrency_limit must be None or at least 1")
        if max_queue is not None and (isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0):
            raise ValueError("max_queue must be None or a whole number >= 0")
        if queue_timeout_s is not None and not queue_timeout_s > 0:
            raise ValueError("queue_timeout_s must be None or > 0 seconds")
        check_stream_options(handler, stream_every, outputs)
        if isinstance(handler, VideoStreamHandler) and modality != "video":
            raise ValueError(f"a VideoStreamHandler handles video: the stream's modality must be 'video', got {modality!r}")
        event_id = event_id or f"stream-{len(self.events)}"
        # a worker that recovers the handler by re-importing its file counts that file's
        # registrations only (workers/process/loader.py)
        app_file = app_file_of(handler)
        index = sum(1 for e in self.events.values() if app_file_of(e.handler) == app_file)
        if event_id in self.events:
            raise ValueError(f"stream id {event_id!r} is registered twice")
        override = self.config.streams.get(event_id)
        if override is not None:
            concurrency_limit = override.concurrency_limit or concurrency_limit
            time_limit = override.time_limit or time_limit
            queue = queue if override.queue is None else override.queue
            max_queue = max_queue if override.max_queue is None else override.max_queue
            queue_timeout_s = override.queue_timeout_s or queue_timeout_s
        event = StreamEvent(
            event_id,
            handler,
            mode,
            modality,
            concurrency_limit,
            time_limit,
            list(initial_args or []),
            index,
            None if stream_every is None else float(stream_every),
            outputs or StreamOutputs(),
            bool(queue),
            max_queue,
            queue_timeout_s,
        )
        self.events[event_id] = event
        if self._started:
            self._register(event)
            self._send_events()
        return event

    def start(self) -> None:
        """Connect to (or start) Ray, register every stream event, start the media processes.
        Idempotent; blocking."""
        with self._start_lock:
            if self._started:
                return
            import ray

            logs.configure(self.config.gateway.log_format)
            pin_host_addresses(self.config.gateway.ice_host_addresses)
            rc = self.config.ray
            if not self.config.gateway.require_session_key:
                log.warning(
                    "gateway.require_session_key is false: anyone who learns a session's webrtc_id "
                    "can send it input, read its outputs and close it"
                )
            if not ray.is_initialized():
                if rc.embedded:
                    # a Ray of our own, on this host only: nobody else to keep out. A cluster
                    # keeps Ray's token auth (docs/deployment.md gives gateways the token)
                    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
                # the embedded default passes address="local": Ray would otherwise join the
                # cluster RAY_ADDRESS or the latest `ray start` on this host names
                ray.init(**rc.init_kwargs(), log_to_driver=True)
            self.node_id = ray.get_runtime_context().get_node_id()
            # after ray.init (its object store may share /dev/shm): a full /dev/shm kills a
            # session with SIGBUS mid-frame, so say it now, with what to change
            require_shm(self.config, self._most_sessions())
            self.scheduler = get_scheduler(detached=rc.detached_scheduler, namespace=rc.namespace)
            for event in self.events.values():
                self._register(event)
            self._warn_unknown_streams()
            eng = self.engine
            eng.scheduler, eng.node_id = self.scheduler, self.node_id
            eng.events = self.events
            eng.on_unknown_event = self._register_again
            eng.on_scheduler_died = self._replace_scheduler
            eng.start_heartbeat()
            if not self.in_app:
                self._start_media()
            elif not rc.embedded:
                self._start_inbox()
            self._started = True
            drain.register(self)  # SIGTERM drains it from now on

    def _start_inbox(self) -> None:
        """Other gateways of a cluster forward this process's sessions' requests through an
        inbox actor (runtime/media/inbox.py); under the embedded local Ray there are none."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from runtime.media.inbox import InboxActor

        self.inbox = InboxActor.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(self.node_id, soft=True),
        ).remote()
        ray.get(
            self.scheduler.register_media.remote(self.gateway_id, self.inbox, self.gateway_id, self.node_id, os.getpid(), True),
            timeout=C.RAY_CALL_TIMEOUT_S,
        )

    def _serve_inbox(self) -> None:
        """Answer the inbox on this (the serving) loop: the sessions live here. Started at
        the first offer, since start() may run before the app's loop exists."""
        if self.inbox is None or self._inbox_task is not None:
            return
        from runtime.media.inbox import serve_inbox
        from runtime.media.media_process import EngineCalls

        self._inbox_stop = asyncio.Event()
        self._inbox_task = asyncio.get_running_loop().create_task(
            serve_inbox(self.inbox, EngineCalls(self.engine), self._inbox_stop)
        )

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
        unknown = sorted(set(self.config.streams) - set(self.events))
        if unknown:
            log.warning(
                "config streams.%s: no stream event has that id (this app's: %s); its settings apply to nothing",
                ", streams.".join(unknown),
                ", ".join(sorted(self.events)) or "none",
            )

    def _register(self, event: StreamEvent) -> None:
        import ray

        pool = self.config.pool
        override = self.config.streams.get(event.event_id)
        if override is not None and override.pool is not None:
            pool = override.pool
        spec = EventSpec(
            event_id=event.event_id,
            handler=make_spec(
                event.handler, event.index, stream_every=event.stream_every, outputs=event.outputs
            ),
            concurrency_limit=event.concurrency_limit,
            time_limit=event.time_limit,
            pool=PoolSpec(**pool.model_dump()),
            # under the embedded local Ray no other host reaches a worker: its TCP listener
            # (used only when gateway.transport forces tcp) stays on loopback
            worker_tcp_host="127.0.0.1" if self.config.ray.embedded else "",
            queue=event.queue,
            max_queue=event.max_queue if event.max_queue is not None else self.config.queue.max_size,
            queue_timeout_s=event.queue_timeout_s or self.config.queue.timeout_s,
            admit_hold_s=self.config.queue.admit_hold_s,
        )
        answer = ray.get(self.scheduler.register.remote(spec, self.gateway_id), timeout=C.RAY_CALL_TIMEOUT_S)
        if answer.warning:
            log.warning("%s", answer.warning)

    def wait_warm(self, timeout: float = C.WORKER_START_TIMEOUT_S) -> None:
        """Block until every event's pre-warmed workers are ready (tests, benchmarks, CLI)."""
        import ray

        refs = [self.scheduler.wait_warm.remote(eid, timeout) for eid in self.events]
        ray.get(refs, timeout=timeout + C.RAY_CALL_TIMEOUT_S)

    # --- media processes -----------------------------------------------------------------------

    def _start_media(self) -> None:
        """Start the media processes (blocking), then the thread that watches them."""
        slots = [self._launch_media(i) for i in range(self.processes)]
        for slot in slots:
            self._await_media(slot)
        self.media = slots
        log.info("%d media processes: pids %s", len(slots), ", ".join(str(s.load.pid) for s in slots))
        self._supervisor_stop.clear()
        self._supervisor = threading.Thread(target=self._supervise, name="rtcpool-media", daemon=True)
        self._supervisor.start()

    def _launch_media(self, index: int) -> MediaSlot:
        from runtime.media.media_process import start_media_process

        engine_id = f"{self.gateway_id}-m{index}-{uuid.uuid4().hex[:4]}"
        actor = start_media_process(self.config, engine_id, self.node_id)
        return MediaSlot(index, engine_id, actor, EngineLoad(engine_id, 0, self.node_id, 0, 0.0, 0.0))

    def _await_media(self, slot: MediaSlot) -> None:
        """Give a new media process the events and wait for it; tell the scheduler (which
        watches it from then on). A process that does not start in time is killed."""
        import ray

        events = [e.media_only() for e in self.events.values()]
        try:
            slot.load = ray.get(slot.actor.start.remote(events), timeout=C.MEDIA_START_TIMEOUT_S)
        except Exception:
            with contextlib.suppress(Exception):
                ray.kill(slot.actor, no_restart=True)
            raise
        ray.get(
            self.scheduler.register_media.remote(slot.engine_id, slot.actor, self.gateway_id, self.node_id, slot.load.pid),
            timeout=C.RAY_CALL_TIMEOUT_S,
        )

    def _send_events(self) -> None:
        """A stream added after start: the media processes learn it (blocking)."""
        import ray

        events = [e.media_only() for e in self.events.values()]
        refs = [s.actor.set_events.remote(events) for s in self.media]
        with contextlib.suppress(Exception):  # a dead one gets them when it is replaced
            ray.get(refs, timeout=C.RAY_CALL_TIMEOUT_S)

    def _supervise(self) -> None:
        """Read each media process's load every MEDIA_POLL_S; replace one that died. Its
        sessions are gone with it (the scheduler has given their leases back already);
        the others do not notice."""
        import ray
        from ray.exceptions import ActorDiedError, GetTimeoutError

        while not self._supervisor_stop.wait(C.MEDIA_POLL_S):
            for slot in list(self.media):
                try:
                    asked_at = time.monotonic()
                    slot.reading(ray.get(slot.actor.load.remote(), timeout=C.RAY_CALL_TIMEOUT_S), asked_at)
                except GetTimeoutError:
                    log.warning("media process %s (pid %s) did not report its load", slot.engine_id, slot.load.pid)
                except ActorDiedError as exc:
                    if self._supervisor_stop.is_set():
                        return
                    log.warning("media process %s (pid %s) died: %s; starting another", slot.engine_id, slot.load.pid, str(exc).splitlines()[0])
                    self._replace_media(slot)
                except Exception as exc:
                    log.warning("media process %s: %s", slot.engine_id, exc)

    def _replace_media(self, dead: MediaSlot) -> None:
        with self._media_lock:
            for key in [k for k, v in self._placed.items() if v is dead]:
                del self._placed[key]
            try:
                slot = self._launch_media(dead.index)
                self._await_media(slot)
            except Exception as exc:
                log.warning("starting a media process failed: %s; trying again at the next poll", exc)
                return
            self.media = [slot if s is dead else s for s in self.media]

    def _most_sessions(self) -> int:
        """The sessions this host may hold at once: each stream's limit, or its pool's size."""
        pool = self.config.pool.max_workers
        return sum(e.concurrency_limit or pool for e in self.events.values())

    def _least_loaded(self, webrtc_id: str) -> MediaSlot:
        if not self.media:
            raise HTTPError(503, "no_media_process", "no media process is running")
        slot = min(self.media, key=MediaSlot.score)
        slot.place(webrtc_id)
        return slot

    # --- routes ------------------------------------------------------------------------------

    def mount(self, app: Any) -> None:
        """Add the signalling routes to a FastAPI (or Gradio) app, at its root."""
        gw = self

        async def offer(request: Request) -> JSONResponse:
            gw.loop = asyncio.get_running_loop()
            candidate = False  # a trickled candidate is not an offer: not counted as one
            try:
                grant = await gw.check_access(request)
                body = await _read_json(request, gw.config.gateway.max_offer_bytes)
                candidate = body.get("type") == "ice-candidate"
                client = request.client.host if request.client else None
                result = await gw.handle_offer(body, _session_key(request, body), client, grant)
                queued = result.get("status") == "queued"
                if not candidate:
                    gw.engine.counters.offer_outcome("queued" if queued else "answered")
                return JSONResponse(result, status_code=202 if queued else 200)
            except HTTPError as err:
                if not candidate:
                    gw.engine.counters.offer_outcome(err.error, err.status)
                return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

        async def health() -> JSONResponse:
            # liveness: this process answers (a probe that fails restarts it)
            return JSONResponse({"status": "alive", "draining": gw.draining})

        async def ready() -> JSONResponse:
            # readiness: worth sending new users to (a probe that fails takes it out of rotation)
            gw.loop = asyncio.get_running_loop()
            problems = await gw.readiness()
            body = {"status": "ready" if not problems else "not_ready", "problems": problems}
            return JSONResponse(body, status_code=200 if not problems else 503)

        async def metrics() -> Response:
            # Prometheus text; counters the code keeps anyway, read now (no per-frame work)
            body, content_type = await gw.metrics_text()
            return Response(body, media_type=content_type)

        async def streams(request: Request) -> JSONResponse:
            try:
                await gw.check_access(request)
            except HTTPError as err:
                return JSONResponse(err.body(), status_code=err.status, headers=err.headers)
            return JSONResponse({"streams": [{"stream_id": e.event_id, "mode": e.mode, "modality": e.modality, "concurrency_limit": e.concurrency_limit, "time_limit": e.time_limit, "queue": e.queue} for e in gw.events.values()]})

        async def sessions(request: Request) -> JSONResponse:
            try:
                await gw.check_access(request)
            except HTTPError as err:
                return JSONResponse(err.body(), status_code=err.status, headers=err.headers)
            return JSONResponse(await gw.sessions_view())

        async def set_input(request: Request) -> JSONResponse:
            try:
                await gw.check_access(request)
                body = await _read_json(request, C.MAX_INPUT_BYTES)
                webrtc_id = body.get("webrtc_id")
                args = body.get("args")
                if not isinstance(args, list):
                    raise HTTPError(400, "bad_request", "'args' must be a list of the stream's input values")
                await gw.aset_args(check_id(webrtc_id), _session_key(request, body), args)
                return JSONResponse({"status": "success"})
            except HTTPError as err:
                return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

        async def close(request: Request) -> JSONResponse:
            # the client hangs up (the page's Stop): the slot is free now, not at a timeout
            try:
                await gw.check_access(request)
                body = await _read_json(request, C.MAX_INPUT_BYTES)
                await gw.close_session(check_id(body.get("webrtc_id")), _session_key(request, body))
                return JSONResponse({"status": "success"})
            except HTTPError as err:
                return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

        async def outputs(request: Request) -> Any:
            # the key comes in a header (GET) or the body (POST), never in the URL, which
            # proxies and access logs keep
            try:
                await gw.check_access(request)
                if "session_key" in request.query_params:
                    raise HTTPError(400, "session_key_in_url", "send the session key in the X-Session-Key header or a POST body, not the URL")
                if request.method == "POST":
                    body = await _read_json(request, C.MAX_INPUT_BYTES)
                    webrtc_id = body.get("webrtc_id")
                else:
                    body, webrtc_id = None, request.query_params.get("webrtc_id")
                stream = await gw.output_stream(check_id(webrtc_id), _session_key(request, body))
            except HTTPError as err:
                return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

            async def events() -> Any:
                async for values in stream:
                    if values is None:
                        yield ": keep-alive\n\n"
                    else:
                        yield f"event: output\ndata: {json.dumps(values, default=_jsonable)}\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        async def queue_updates(request: Request) -> Any:
            # the ticket comes in a header, never in the URL (proxies and access logs keep URLs)
            try:
                await gw.check_access(request)
                if "ticket" in request.query_params:
                    raise HTTPError(400, "ticket_in_url", "send the queue ticket in the X-Queue-Ticket header, not the URL")
                webrtc_id = check_id(request.query_params.get("webrtc_id"))
                stream = await gw.queue_stream(_check_ticket(request.headers.get(QUEUE_TICKET_HEADER)), webrtc_id)
            except HTTPError as err:
                return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

            async def events() -> Any:
                async for view in stream:
                    if view is None:
                        yield ": keep-alive\n\n"
                    else:
                        yield f"event: queue\ndata: {json.dumps(view)}\n\n"

            return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

        async def queue_leave(request: Request) -> JSONResponse:
            # Stop while queued, or the page going away (navigator.sendBeacon)
            try:
                await gw.check_access(request)
                body = await _read_json(request, C.MAX_INPUT_BYTES)
                await gw.leave_queue(_check_ticket(body.get("ticket")), check_id(body.get("webrtc_id")))
                return JSONResponse({"status": "success"})
            except HTTPError as err:
                return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

        app.add_api_route("/webrtc/offer", offer, methods=["POST"])
        app.add_api_route("/webrtc/queue", queue_updates, methods=["GET"])
        app.add_api_route("/webrtc/queue/leave", queue_leave, methods=["POST"])
        app.add_api_route("/webrtc/health", health, methods=["GET"])
        app.add_api_route("/metrics", metrics, methods=["GET"])
        app.add_api_route("/webrtc/ready", ready, methods=["GET"])
        app.add_api_route("/webrtc/streams", streams, methods=["GET"])
        app.add_api_route("/webrtc/sessions", sessions, methods=["GET"])
        app.add_api_route("/webrtc/input", set_input, methods=["POST"])
        app.add_api_route("/webrtc/close", close, methods=["POST"])
        app.add_api_route("/webrtc/outputs", outputs, methods=["GET", "POST"])
        from runtime.front.standalone import mount_standalone  # it imports this module
        from runtime.front.websocket_routes import mount_websocket_routes

        mount_standalone(app, gw)  # GET /webrtc/ui: the client's own page, for apps without Gradio
        mount_websocket_routes(app, gw)  # /websocket/offer, /telephone/*: audio beyond WebRTC
        # Routes added after start-up go last; Gradio's catch-alls must not shadow ours.
        routes = app.router.routes
        ours = [r for r in routes if getattr(r, "path", "").startswith(OWN_ROUTE_PREFIXES) or getattr(r, "path", "") == "/metrics"]
        for r in ours:
            routes.remove(r)
        routes[0:0] = ours

    # --- signalling ----------------------------------------------------------------------------

    async def check_access(self, request: Any) -> AuthGrant:
        """Who may use a signalling route (gateway.auth, gateway.allowed_origins): the Origin
        first, then the credentials. Routes on a Gradio app launched with ``auth=`` take
        that app's login whatever the mode, as Gradio's own routes do."""
        grant = await self.auth.check_request(request, stream_id=None)  # the offer's stream: handle_offer
        if self.auth.mode == "none":
            app = gradio_app_of(request)
            if app is not None and gradio_auth_enabled(app) and await gradio_user(request, app) is None:
                raise HTTPError(401, "auth_required", "log in to the app first (its Gradio login)")
        return grant

    async def handle_offer(self, body: dict[str, Any], key: Any = None, client: str | None = None, grant: AuthGrant | None = None) -> dict[str, Any]:
        """An offer, or a trickled ICE candidate for a session (with its ``key``)."""
        kind = body.get("type")
        if kind == "ice-candidate":
            webrtc_id = check_id(body.get("webrtc_id"))
            owner = await self._owner(webrtc_id)
            if isinstance(owner, MediaEngine):
                await owner.add_candidate(webrtc_id, key, body.get("candidate"))
            else:
                _raise(await self._call(owner.actor.candidate.remote(webrtc_id, key, body.get("candidate"))))
            return {"status": "success"}
        if kind != "offer":
            raise HTTPError(400, "bad_request", "'type' must be 'offer' or 'ice-candidate'")
        if self.draining:
            raise draining_error()
        self.offer_rate.admit_offer(client).ended()  # counts against its rate, holds nothing
        webrtc_id = check_id(body.get("webrtc_id"))
        event = self._pick_event(body.get("stream_id"))
        queue = body.get("queue", True)
        if not isinstance(queue, bool):
            raise HTTPError(400, "bad_request", "'queue' must be true or false")
        ticket = body.get("queue_ticket")
        if ticket is not None:
            ticket = _check_ticket(ticket)
        claims = grant.claims if grant is not None else None
        if claims is not None and claims.stream_id is not None and claims.stream_id != event.event_id:
            raise HTTPError(403, "token_wrong_stream", "this join token is for another stream")
        sdp = check_sdp(body.get("sdp"), event, self.config.gateway.max_offer_bytes)
        if not self._started:
            if self.in_app:
                # reserve the id before Ray's start-up: a second offer with it meanwhile is
                # a duplicate, and a close for it finds it pending rather than unknown
                if webrtc_id in self.engine.sessions:
                    raise HTTPError(409, "duplicate_webrtc_id", f"a session {webrtc_id!r} is already active")
                self.engine.sessions[webrtc_id] = None  # type: ignore[assignment]
                try:
                    await asyncio.get_running_loop().run_in_executor(None, self.start)
                finally:
                    if self.engine.sessions.get(webrtc_id) is None:
                        self.engine.sessions.pop(webrtc_id, None)
            else:
                await asyncio.get_running_loop().run_in_executor(None, self.start)
        if self.in_app:
            self._serve_inbox()
            return await self.engine.offer(event.event_id, webrtc_id, sdp, client, queue, ticket)
        if webrtc_id in self._placed:
            raise HTTPError(409, "duplicate_webrtc_id", f"a session {webrtc_id!r} is already active")
        slot = self._least_loaded(webrtc_id)
        # remembered before the call: a hang-up or a candidate for this offer meanwhile
        # goes to the process answering it
        self._remember(webrtc_id, slot)
        try:
            answer = await self._call(slot.actor.offer.remote(event.event_id, webrtc_id, sdp, client, queue, ticket), OFFER_FORWARD_TIMEOUT_S)
        except BaseException:
            slot.answered(webrtc_id, ok=False)
            self._placed.pop(webrtc_id, None)
            raise
        refused = isinstance(answer, Refusal)
        slot.answered(webrtc_id, ok=not refused)
        if refused or answer.get("status") == "queued":  # a waiting client is nowhere yet
            self._placed.pop(webrtc_id, None)
        if refused:
            raise answer.error_()
        return answer

    async def open_websocket(
        self,
        event: StreamEvent,
        webrtc_id: str,
        client: str | None,
        client_kind: str,
        send_text: Any,
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
            self._serve_inbox()
        return await self.engine.open_websocket(event.event_id, webrtc_id, client, client_kind, send_text, queue, ticket)

    def _remember(self, webrtc_id: str, slot: MediaSlot) -> None:
        self._placed[webrtc_id] = slot
        self._placed.move_to_end(webrtc_id)
        while len(self._placed) > PLACED_CACHE_MAX:
            self._placed.popitem(last=False)

    def _pick_event(self, stream_id: Any) -> StreamEvent:
        if stream_id is None:
            if len(self.events) == 1:
                return next(iter(self.events.values()))
            if not self.events:
                raise HTTPError(404, "no_streams", "this app has no stream events")
            raise HTTPError(400, "stream_id_required", f"this app has {len(self.events)} streams: pass 'stream_id' (GET /webrtc/streams)")
        if not isinstance(stream_id, str) or stream_id not in self.events:
            raise HTTPError(404, "unknown_stream", f"no stream {stream_id!r} (GET /webrtc/streams)")
        return self.events[stream_id]

    # --- per-session requests, wherever the session is ----------------------------------------------

    async def _owner(self, webrtc_id: str) -> MediaEngine | MediaSlot:
        """The engine that holds a session: this process's, one of its media processes, or
        a media process of another gateway (from the scheduler's session directory)."""
        if webrtc_id in self.engine.sessions:
            return self.engine
        slot = self._placed.get(webrtc_id)
        if slot is not None:
            return slot
        if self.scheduler is None:
            raise HTTPError(404, "unknown_webrtc_id", f"no session {webrtc_id!r}")
        try:
            found = await asyncio.wait_for(self.scheduler.locate.remote(webrtc_id), C.RAY_CALL_TIMEOUT_S)
        except Exception as exc:
            raise HTTPError(503, "scheduler_unavailable", f"the session directory did not answer: {exc}") from exc
        if found is None or found.gateway_id == self.gateway_id:
            raise HTTPError(404, "unknown_webrtc_id", f"no session {webrtc_id!r}")
        if found.media is None:
            # an app process under its own embedded Ray has no inbox; kept for safety
            raise HTTPError(
                421,
                "session_elsewhere",
                f"session {webrtc_id!r} is held inside another gateway's process, which this one cannot reach",
            )
        return MediaSlot(-1, found.gateway_id, found.media, EngineLoad(found.gateway_id, 0, "", 0, 0.0, 0.0))

    async def _call(self, ref: Any, timeout: float = FORWARD_TIMEOUT_S) -> Any:
        from ray.exceptions import ActorDiedError

        try:
            return await asyncio.wait_for(ref, timeout)
        except ActorDiedError as exc:
            raise HTTPError(404, "unknown_webrtc_id", "the session's media process has ended") from exc
        except TimeoutError as exc:
            raise HTTPError(504, "media_timeout", f"the session's media process did not answer within {timeout:.0f} s") from exc

    # Every per-session call takes the session's ``key`` (the answer's session_key) and is
    # checked by the engine that holds the session, wherever the request came in.

    async def aset_args(self, webrtc_id: str, key: Any, args: list[Any]) -> None:
        owner = await self._owner(webrtc_id)
        if isinstance(owner, MediaEngine):
            owner.set_args(webrtc_id, key, args)
        else:
            _raise(await self._call(owner.actor.set_args.remote(webrtc_id, key, args)))

    async def anext_output(self, webrtc_id: str, key: Any, kind: str = OUTPUTS_ADDITIONAL) -> list[Any] | None:
        """The oldest outputs of a session not yet fetched (None: none waiting), wherever
        the session is (see MediaEngine.next_output). HTTPError 404/403 as the routes."""
        try:
            owner = await self._owner(webrtc_id)
        except HTTPError:
            return self.engine.next_output(webrtc_id, key, kind)  # an ended session's, kept a while here
        if isinstance(owner, MediaEngine):
            return owner.next_output(webrtc_id, key, kind)
        result = await self._call(owner.actor.next_output.remote(webrtc_id, key, kind))
        _raise(result)
        return result

    def next_output(self, webrtc_id: str, key: Any, kind: str = OUTPUTS_ADDITIONAL) -> list[Any] | None:
        """This process's sessions only (gateway.processes: 1); see anext_output."""
        return self.engine.next_output(webrtc_id, key, kind)

    def set_args(self, webrtc_id: str, key: Any, args: list[Any]) -> None:
        """This process's sessions only (gateway.processes: 1); see aset_args."""
        self.engine.set_args(webrtc_id, key, args)

    async def close_session(self, webrtc_id: str, key: Any) -> None:
        """End a session because its client hung up (see MediaEngine.close_session)."""
        owner = await self._owner(webrtc_id)
        if isinstance(owner, MediaEngine):
            await owner.close_session(webrtc_id, key)
        else:
            _raise(await self._call(owner.actor.close_session.remote(webrtc_id, key), MediaEngine.HANGUP_WAIT_S + FORWARD_TIMEOUT_S))

    # --- the waiting room ------------------------------------------------------------------------

    async def queue_stream(self, secret: str, webrtc_id: str) -> Any:
        """A queued client's updates: its place in line (QueueView.to_json) now and on every
        change, None as keep-alive, ending once it is admitted or gone. A stream that closes
        while the client still waits (a closed tab) takes it out of the line."""
        if self.scheduler is None:  # not started: no line has anyone in it
            raise HTTPError(404, "unknown_queue_ticket", "no such queue ticket")
        try:
            first = await self.queue.first_view(secret, webrtc_id)
        except Exception as exc:
            raise HTTPError(503, "scheduler_unavailable", f"the scheduler did not answer: {exc}") from exc
        if first.get("reason") == "unknown_ticket":
            raise HTTPError(404, "unknown_queue_ticket", "no such queue ticket for this session")

        async def stream() -> Any:
            last = first
            try:
                async for view in self.queue.updates(secret, webrtc_id, first, SSE_KEEPALIVE_S):
                    if view is not None:
                        last = view
                    yield view
            finally:
                # the client went away while it waited (not this gateway: a drain or a
                # shutdown closes the stream, and the client follows on through another)
                if last["state"] == "waiting" and not self.draining and not self._closing:
                    task = asyncio.get_running_loop().create_task(self._leave_quietly(secret, webrtc_id))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)

        return stream()

    async def _leave_quietly(self, secret: str, webrtc_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.leave_queue(secret, webrtc_id)

    async def leave_queue(self, secret: str, webrtc_id: str) -> None:
        if self.scheduler is None:
            raise HTTPError(404, "unknown_queue_ticket", "no such queue ticket")
        try:
            left = await asyncio.wait_for(self.scheduler.leave.remote(secret, webrtc_id), C.RAY_CALL_TIMEOUT_S)
        except Exception as exc:
            raise HTTPError(503, "scheduler_unavailable", f"the scheduler did not answer: {exc}") from exc
        if not left:
            raise HTTPError(404, "unknown_queue_ticket", "no such queue ticket for this session (or it already left)")

    async def output_stream(self, webrtc_id: str, key: Any) -> Any:
        """An async iterator of a session's AdditionalOutputs for one SSE reader: a list of
        values each, or None every SSE_KEEPALIVE_S while there are none."""
        owner = await self._owner(webrtc_id)
        if isinstance(owner, MediaEngine):
            session, queue = owner.subscribe(webrtc_id, key)

            async def local() -> Any:
                try:
                    while not session.closed or not queue.empty():
                        try:
                            yield await asyncio.wait_for(queue.get(), SSE_KEEPALIVE_S)
                        except TimeoutError:
                            yield None
                finally:
                    owner.unsubscribe(session, queue)

            return local()
        sub = await self._call(owner.actor.subscribe.remote(webrtc_id, key))
        if isinstance(sub, Refusal):
            raise sub.error_()
        actor = owner.actor

        async def remote() -> Any:
            try:
                while True:
                    got, ended = await self._call(actor.wait_outputs.remote(sub, SSE_KEEPALIVE_S), SSE_KEEPALIVE_S + FORWARD_TIMEOUT_S)
                    for values in got:
                        yield values
                    if ended:
                        return
                    if not got:
                        yield None
            except HTTPError:
                return  # its media process ended: so did the session
            finally:
                with contextlib.suppress(Exception):
                    actor.unsubscribe.remote(sub)

        return remote()

    async def sessions_view(self) -> list[dict[str, Any]]:
        """The live sessions of this gateway and its media processes (no webrtc_id: it is
        the key to a session's inputs and outputs)."""
        view = self.engine.sessions_view()
        for slot in list(self.media):
            with contextlib.suppress(Exception):  # a dead one has no sessions
                view += await asyncio.wait_for(slot.actor.sessions_view.remote(), C.RAY_CALL_TIMEOUT_S)
        return view

    # --- readiness and draining ---------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self.engine.draining

    async def readiness(self) -> list[str]:
        """What keeps this gateway from taking new users (empty: ready): draining, not
        started, Ray or the scheduler unreachable, a stream whose pool cannot place a worker,
        no media process running."""
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
        return problems

    async def metrics_text(self) -> tuple[bytes, str]:
        """GET /metrics: this process's engine, every media process's, and the scheduler's
        pools (None when it does not answer: the rest is still worth scraping)."""
        engines = [self.engine.metrics()]
        for slot in list(self.media):
            with contextlib.suppress(Exception):  # a dead one has nothing to report
                engines.append(await asyncio.wait_for(slot.actor.metrics.remote(), C.RAY_CALL_TIMEOUT_S))
        status = None
        if self.scheduler is not None:
            with contextlib.suppress(Exception):
                status = await asyncio.wait_for(self.scheduler.status.remote(), READY_TIMEOUT_S)
        return render(engines, status)

    async def adrain(self, timeout_s: float | None = None) -> None:
        """Stop taking offers (503 + Retry-After), tell every client, let sessions run up to
        ``timeout_s`` (gateway.drain_timeout_s), then end the rest; here and in every media
        process. The routes keep serving the live sessions meanwhile."""
        timeout = self.config.gateway.drain_timeout_s if timeout_s is None else timeout_s
        self.engine.draining = True
        log.info("draining: no new offers; live sessions may run %.0f s more", timeout)
        calls = [self.engine.adrain(timeout)]
        calls += [self._call(slot.actor.drain.remote(timeout), timeout + DRAIN_MARGIN_S) for slot in list(self.media)]
        for result in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(result, BaseException):
                log.warning("a media process did not drain: %s", result)

    async def adrain_now(self) -> None:
        """Cut a drain's wait short: the live sessions are ended now (still cleanly)."""
        self.engine.drain_now()
        for slot in list(self.media):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(slot.actor.drain_now.remote(), C.RAY_CALL_TIMEOUT_S)

    # --- lifecycle -------------------------------------------------------------------------------

    async def aclose(self, drop_pools: bool = False) -> None:
        """End every session and give back every lease. Safe to call twice.
        ``drop_pools``: also kill this app's idle workers (when no other gateway serves it)."""
        import ray

        drain.unregister(self)
        self._closing = True
        await self.queue.aclose()
        self._supervisor_stop.set()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            await asyncio.to_thread(supervisor.join, C.RAY_CALL_TIMEOUT_S)
        media, self.media = self.media, []
        self._placed.clear()

        async def close_media(slot: MediaSlot) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(slot.actor.aclose.remote(), C.RAY_CALL_TIMEOUT_S + C.CLOSE_ACK_TIMEOUT_S)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.scheduler.forget_gateway.remote(slot.engine_id), C.RAY_CALL_TIMEOUT_S)
            with contextlib.suppress(Exception):
                ray.kill(slot.actor, no_restart=True)

        await asyncio.gather(*(close_media(s) for s in media))
        await self.engine.aclose()
        if self._inbox_stop is not None:
            self._inbox_stop.set()
        if self._inbox_task is not None:
            self._inbox_task.cancel()
            self._inbox_task = None
        inbox, self.inbox = self.inbox, None
        if inbox is not None:
            with contextlib.suppress(Exception):
                ray.kill(inbox, no_restart=True)
        if self.scheduler is not None and drop_pools:
            try:
                for eid in self.events:
                    await asyncio.wait_for(self.scheduler.unregister.remote(eid), C.RAY_CALL_TIMEOUT_S)
            except Exception as exc:
                log.warning("scheduler did not take the gateway's shutdown: %s", exc)

    async def status(self) -> dict[str, Any]:
        sessions = self.engine.status()
        for slot in list(self.media):
            with contextlib.suppress(Exception):
                sessions.update(await asyncio.wait_for(slot.actor.status.remote(), C.RAY_CALL_TIMEOUT_S))
        return {"gateway_id": self.gateway_id, "sessions": sessions, "media": [vars(s.load) for s in self.media]}


def _check_ticket(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise HTTPError(400, "queue_ticket_required", "send the queue ticket (the 202's queue.ticket)")
    if len(value) > MAX_TICKET_CHARS or not value.isascii():
        raise HTTPError(400, "bad_queue_ticket", "that is not a queue ticket")
    return value


def _raise(result: Any) -> None:
    if isinstance(result, Refusal):
        raise result.error_()


def _session_key(request: Any, body: dict[str, Any] | None) -> Any:
    """A request's session key: the body's ``session_key``, else the X-Session-Key header."""
    if body is not None and "session_key" in body:
        return body["session_key"]
    return request.headers.get(SESSION_KEY_HEADER)


async def _read_json(request: Any, limit: int) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise HTTPError(415, "unsupported_media_type", "send the body as application/json")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise HTTPError(413, "body_too_large", f"the body may be at most {limit} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise HTTPError(413, "body_too_large", f"the body may be at most {limit} bytes")
    try:
        body = safejson.loads(raw)
    except safejson.JSONRejected as exc:
        raise HTTPError(400, exc.reason, exc.message) from None
    if not isinstance(body, dict):
        raise HTTPError(400, "bad_json", "the body must be a JSON object")
    return body


def _jsonable(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.ndarray):
            return obj.tolist()
        if isinstance(obj, np.generic):
            return obj.item()
    except ImportError:
        pass
    return str(obj)
