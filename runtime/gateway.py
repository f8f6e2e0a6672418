"""The gateway: signalling routes, sessions, and the link to the scheduler.

One ``Gateway`` per process. It is framework-agnostic: :meth:`Gateway.mount` adds its routes
to any FastAPI app (the Gradio app included), at the app's root:

* ``POST /webrtc/offer`` -- fastrtc's offer and trickle-candidate body;
* ``GET  /webrtc/streams`` -- the stream events this app serves;
* ``POST /webrtc/input`` -- set a session's additional inputs (apps without Gradio);
* ``POST /webrtc/close`` -- the client hangs up: ``{"webrtc_id"}`` ends that session;
* ``GET  /webrtc/outputs?webrtc_id=`` -- server-sent events with its AdditionalOutputs.

Handlers never run here: the gateway leases a worker from the scheduler for each session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from runtime import constants as C
from runtime.channel import Geometry
from runtime.config import Config, load_config
from runtime.ice import pin_host_addresses
from runtime.scheduler import EventSpec, PoolSpec, get_scheduler
from runtime.session import OUTPUTS_QUEUE_MAX, Session, WorkerGone
from runtime.wire import OUTPUTS_ADDITIONAL, OUTPUTS_STREAM
from workers.handlers import StreamHandlerBase
from workers.loader import StreamOutputs, app_file_of, make_spec

log = logging.getLogger("rtcpool.gateway")

WEBRTC_ID_RE = re.compile(rf"^[A-Za-z0-9_.:-]{{1,{C.MAX_WEBRTC_ID_CHARS}}}$")
MODES = ("send-receive", "send", "receive")
MODALITIES = ("video", "audio", "audio-video")
SSE_KEEPALIVE_S = 15.0  # comment line on an idle outputs stream, so proxies keep it open
OUTPUTS_GRACE_S = 30.0  # a session's unfetched AdditionalOutputs are kept this long after it ends


@dataclass
class StreamEvent:
    """A stream event: one handler, its media shape and its limits."""

    event_id: str
    handler: Any
    mode: str = "send-receive"
    modality: str = "video"
    concurrency_limit: int | None = 1
    time_limit: float | None = None
    initial_args: list[Any] = field(default_factory=list)
    index: int = 0
    stream_every: float | None = None
    outputs: StreamOutputs = field(default_factory=StreamOutputs)

    @property
    def has_video(self) -> bool:
        return self.modality in ("video", "audio-video")

    @property
    def has_audio(self) -> bool:
        return self.modality in ("audio", "audio-video")


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


class HTTPError(Exception):
    def __init__(self, status: int, error: str, message: str, headers: dict[str, str] | None = None, meta: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers or {}
        self.meta = meta

    def body(self) -> dict[str, Any]:
        meta = {"error": self.error, "message": self.message}
        if self.meta:
            meta.update(self.meta)
        return {"status": "failed", "meta": meta}


class Gateway:
    def __init__(self, config: Config | None = None) -> None:
        self.config = config or load_config()
        self.gateway_id = f"gw-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.events: dict[str, StreamEvent] = {}
        self.sessions: dict[str, Session] = {}
        self.geometry = Geometry(video_slot_bytes=64 + self.config.gateway.max_frame_pixels * 3)
        self.scheduler: Any = None
        self.node_id = ""  # this process's Ray node, once started: workers elsewhere get TCP
        self._started = False
        self._start_lock = threading.Lock()
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()
        # unfetched outputs of ended sessions, by (webrtc_id, kind)
        self._ended_outputs: dict[tuple[str, str], asyncio.Queue[list[Any]]] = {}

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
    ) -> StreamEvent:
        """Register a stream event. ``stream_every`` (seconds): a plain function takes input
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
        check_stream_options(handler, stream_every, outputs)
        event_id = event_id or f"stream-{len(self.events)}"
        # a worker that recovers the handler by re-importing its file counts that file's
        # registrations only (workers/loader.py)
        app_file = app_file_of(handler)
        index = sum(1 for e in self.events.values() if app_file_of(e.handler) == app_file)
        if event_id in self.events:
            raise ValueError(f"stream id {event_id!r} is registered twice")
        override = self.config.streams.get(event_id)
        if override is not None:
            concurrency_limit = override.concurrency_limit or concurrency_limit
            time_limit = override.time_limit or time_limit
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
        )
        self.events[event_id] = event
        if self._started:
            self._register(event)
        return event

    def start(self) -> None:
        """Connect to (or start) Ray and register every stream event. Idempotent; blocking."""
        with self._start_lock:
            if self._started:
                return
            import ray

            pin_host_addresses(self.config.gateway.ice_host_addresses)
            rc = self.config.ray
            if not ray.is_initialized():
                os.environ.setdefault("RAY_AUTH_MODE", "disabled")
                # the embedded default passes address="local": Ray would otherwise join the
                # cluster RAY_ADDRESS or the latest `ray start` on this host names
                ray.init(**rc.init_kwargs(), log_to_driver=True)
            self.node_id = ray.get_runtime_context().get_node_id()
            self.scheduler = get_scheduler(detached=rc.detached_scheduler, namespace=rc.namespace)
            for event in self.events.values():
                self._register(event)
            self._warn_unknown_streams()
            self._started = True
            self._start_heartbeat()

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
            self.scheduler = get_scheduler(detached=rc.detached_scheduler, namespace=rc.namespace, replace=True)
            for event in self.events.values():
                self._register(event)

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
        )
        answer = ray.get(self.scheduler.register.remote(spec, self.gateway_id), timeout=C.RAY_CALL_TIMEOUT_S)
        if answer.get("warning"):
            log.warning("%s", answer["warning"])

    def wait_warm(self, timeout: float = C.WORKER_START_TIMEOUT_S) -> None:
        """Block until every event's pre-warmed workers are ready (tests, benchmarks, CLI)."""
        import ray

        refs = [self.scheduler.wait_warm.remote(eid, timeout) for eid in self.events]
        ray.get(refs, timeout=timeout + C.RAY_CALL_TIMEOUT_S)

    # --- routes ------------------------------------------------------------------------------

    def mount(self, app: Any) -> None:
        """Add the signalling routes to a FastAPI (or Gradio) app, at its root."""
        gw = self

        async def offer(request: Request) -> JSONResponse:
            try:
                body = await _read_json(request, gw.config.gateway.max_offer_bytes)
                result = await gw.handle_offer(body)
                return JSONResponse(result)
            except HTTPError as err:
                return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

        async def streams() -> JSONResponse:
            return JSONResponse({"streams": [{"stream_id": e.event_id, "mode": e.mode, "modality": e.modality, "concurrency_limit": e.concurrency_limit, "time_limit": e.time_limit} for e in gw.events.values()]})

        async def sessions() -> JSONResponse:
            # no webrtc_id: it is the key to a session's inputs and outputs
            return JSONResponse(
                [
                    {"event_id": s.event.event_id, "worker_pid": s.worker_pid, "worker_node_id": s.lease.get("node_id", ""), "transport": s.transport}
                    for s in gw.sessions.values()
                    if s is not None and not s.closed  # None: an offer still being answered
                ]
            )

        async def set_input(request: Request) -> JSONResponse:
            try:
                body = await _read_json(request, C.MAX_INPUT_BYTES)
                webrtc_id = body.get("webrtc_id")
                args = body.get("args")
                if not isinstance(args, list):
                    raise HTTPError(400, "bad_request", "'args' must be a list of the stream's input values")
                gw.set_args(_check_id(webrtc_id), args)
                return JSONResponse({"status": "success"})
            except HTTPError as err:
                return JSONResponse(err.body(), status_code=err.status)

        async def close(request: Request) -> JSONResponse:
            # the client hangs up (the page's Stop): the slot is free now, not at a timeout
            try:
                body = await _read_json(request, C.MAX_INPUT_BYTES)
                await gw.close_session(_check_id(body.get("webrtc_id")))
                return JSONResponse({"status": "success"})
            except HTTPError as err:
                return JSONResponse(err.body(), status_code=err.status)

        async def outputs(webrtc_id: str) -> Any:
            session = gw.sessions.get(webrtc_id)
            if session is None:
                return JSONResponse(HTTPError(404, "unknown_webrtc_id", f"no session {webrtc_id!r}").body(), status_code=404)

            queue: asyncio.Queue[list[Any]] = asyncio.Queue(OUTPUTS_QUEUE_MAX)
            session.subscribers.append(queue)

            async def events() -> Any:
                try:
                    while not session.closed or not queue.empty():
                        try:
                            values = await asyncio.wait_for(queue.get(), SSE_KEEPALIVE_S)
                        except asyncio.TimeoutError:
                            yield ": keep-alive\n\n"
                            continue
                        yield f"event: output\ndata: {json.dumps(values, default=_jsonable)}\n\n"
                finally:
                    if queue in session.subscribers:
                        session.subscribers.remove(queue)

            return StreamingResponse(events(), media_type="text/event-stream")

        app.add_api_route("/webrtc/offer", offer, methods=["POST"])
        app.add_api_route("/webrtc/streams", streams, methods=["GET"])
        app.add_api_route("/webrtc/sessions", sessions, methods=["GET"])
        app.add_api_route("/webrtc/input", set_input, methods=["POST"])
        app.add_api_route("/webrtc/close", close, methods=["POST"])
        app.add_api_route("/webrtc/outputs", outputs, methods=["GET"])
        from runtime.standalone import mount_standalone  # it imports this module
        mount_standalone(app, gw)  # GET /webrtc/ui: the client's own page, for apps without Gradio
        # Routes added after start-up go last; Gradio's catch-alls must not shadow ours.
        routes = app.router.routes
        ours = [r for r in routes if getattr(r, "path", "").startswith("/webrtc/")]
        for r in ours:
            routes.remove(r)
        routes[0:0] = ours

    # --- signalling ----------------------------------------------------------------------------

    async def handle_offer(self, body: dict[str, Any]) -> dict[str, Any]:
        kind = body.get("type")
        if kind == "ice-candidate":
            return await self._add_candidate(body)
        if kind != "offer":
            raise HTTPError(400, "bad_request", "'type' must be 'offer' or 'ice-candidate'")
        webrtc_id = _check_id(body.get("webrtc_id"))
        sdp = body.get("sdp")
        if not isinstance(sdp, str) or not sdp.startswith("v=0") or "\nm=" not in sdp:
            raise HTTPError(400, "bad_sdp", "'sdp' must be an SDP offer (starting 'v=0', with media sections)")
        event = self._pick_event(body.get("stream_id"))
        if webrtc_id in self.sessions:
            raise HTTPError(409, "duplicate_webrtc_id", f"a session {webrtc_id!r} is already active")
        # reserve the id before any wait (Ray's start-up too): a second offer with it meanwhile
        # is a duplicate, and a close for it finds it pending rather than unknown
        self.sessions[webrtc_id] = None  # type: ignore[assignment]
        try:
            if not self._started:
                await asyncio.get_running_loop().run_in_executor(None, self.start)
            return await self._open_session(event, webrtc_id, sdp)
        finally:
            if self.sessions.get(webrtc_id) is None:
                self.sessions.pop(webrtc_id, None)

    async def _open_session(self, event: StreamEvent, webrtc_id: str, sdp: str) -> dict[str, Any]:
        for attempt in range(2):  # one retry: an idle worker may have died since the lease
            lease = await self._acquire(event, webrtc_id)
            session = Session(self, event, webrtc_id, lease)
            try:
                answer = await session.start(sdp, "offer")
            except WorkerGone as exc:
                log.warning("session %s: %s", webrtc_id, exc)
                await session.aclose("worker unavailable")
                if attempt == 0:
                    continue
                raise HTTPError(503, "worker_unavailable", str(exc)) from exc
            except Exception as exc:
                await session.aclose(f"offer failed: {exc}")
                raise HTTPError(400, "bad_sdp", f"the offer could not be answered: {exc}") from exc
            self.sessions[webrtc_id] = session
            return {"sdp": answer.sdp, "type": answer.type}
        raise AssertionError("unreachable")

    async def _acquire(self, event: StreamEvent, webrtc_id: str) -> dict[str, Any]:
        from ray.exceptions import ActorDiedError

        for attempt in range(2):  # once more with a new scheduler, if the one held has died
            scheduler = self.scheduler
            try:
                lease = await asyncio.wait_for(
                    scheduler.acquire.remote(event.event_id, self.gateway_id, webrtc_id),
                    C.LEASE_TIMEOUT_S + C.RAY_CALL_TIMEOUT_S,
                )
                break
            except ActorDiedError as exc:
                if attempt:
                    raise HTTPError(503, "scheduler_unavailable", f"the scheduler did not answer: {exc}") from exc
                await asyncio.get_running_loop().run_in_executor(None, self._replace_scheduler, scheduler)
            except Exception as exc:
                raise HTTPError(503, "scheduler_unavailable", f"the scheduler did not answer: {exc}") from exc
        if lease.get("ok"):
            return lease
        if lease.get("error") == "concurrency_limit_reached":
            retry = str(lease.get("retry_after", C.RETRY_AFTER_S))
            raise HTTPError(
                429,
                "concurrency_limit_reached",
                f"this stream serves at most {lease['limit']} session(s) at once; retry in {retry} s",
                headers={"Retry-After": retry},
                meta={"limit": lease["limit"], "retry_after": int(retry)},
            )
        raise HTTPError(503, lease.get("error", "no_worker"), lease.get("message", "no worker available"))

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

    async def _add_candidate(self, body: dict[str, Any]) -> dict[str, Any]:
        from aiortc.sdp import candidate_from_sdp

        webrtc_id = _check_id(body.get("webrtc_id"))
        session = self.sessions.get(webrtc_id)
        if session is None or session.pc is None:
            raise HTTPError(404, "unknown_webrtc_id", f"no session {webrtc_id!r}")
        cand = body.get("candidate")
        if cand is None:
            return {"status": "success"}  # end of candidates
        try:
            text = cand["candidate"] if isinstance(cand, dict) else cand
            if not text:
                return {"status": "success"}
            ice = candidate_from_sdp(text.split(":", 1)[1] if text.startswith("candidate:") else text)
            if isinstance(cand, dict):
                ice.sdpMid = cand.get("sdpMid")
                ice.sdpMLineIndex = cand.get("sdpMLineIndex")
            await session.pc.addIceCandidate(ice)
        except Exception as exc:
            raise HTTPError(400, "bad_candidate", f"cannot parse ICE candidate: {exc}") from exc
        return {"status": "success"}

    def next_output(self, webrtc_id: str, kind: str = OUTPUTS_ADDITIONAL) -> list[Any] | None:
        """The oldest outputs of a session not yet fetched (None: none waiting): its
        AdditionalOutputs, or with ``kind=OUTPUTS_STREAM`` the values its function returned
        for the stream's other outputs. A session's unfetched outputs outlive it by
        OUTPUTS_GRACE_S."""
        session = self.sessions.get(webrtc_id)
        if session is not None:
            queue = session.stream_outputs if kind == OUTPUTS_STREAM else session.outputs
        else:
            queue = self._ended_outputs.get((webrtc_id, kind))
        if queue is None or queue.empty():
            return None
        return queue.get_nowait()

    def set_args(self, webrtc_id: str, args: list[Any]) -> None:
        session = self.sessions.get(webrtc_id)
        if session is None:
            raise HTTPError(404, "unknown_webrtc_id", f"no session {webrtc_id!r}")
        session.set_args(args)

    # a hang-up for an offer still being answered polls for its session this often, for at
    # most as long as the offer itself may take (a lease, then the worker link)
    HANGUP_POLL_S = 0.05
    HANGUP_WAIT_S = C.LEASE_TIMEOUT_S + C.RAY_CALL_TIMEOUT_S + C.WORKER_CONNECT_TIMEOUT_S

    async def close_session(self, webrtc_id: str) -> None:
        """End a session because its client hung up. An offer still being answered (its id
        reserved, no session yet) is ended as soon as its session exists: the client that
        stopped will never use the answer, and the session would hold its slot until the
        connect timeout. Returns once the session is closing (or its offer failed)."""
        if webrtc_id not in self.sessions:
            raise HTTPError(404, "unknown_webrtc_id", f"no session {webrtc_id!r}")
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

    # --- lifecycle -------------------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
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
            # a copy made in one C call: the loop thread adds and removes sessions meanwhile
            live = {s.lease_id: s for s in list(self.sessions.values()) if s is not None}
            scheduler = self.scheduler
            try:
                answer = ray.get(
                    scheduler.heartbeat.remote(
                        self.gateway_id, list(live), list(self.events), {lid: s.transport for lid, s in live.items()}
                    ),
                    timeout=C.RAY_CALL_TIMEOUT_S,
                )
            except ActorDiedError:
                if not self._heartbeat_stop.is_set():
                    with contextlib.suppress(Exception):  # tried again at the next beat
                        self._replace_scheduler(scheduler)
                continue
            except Exception as exc:
                log.warning("scheduler heartbeat failed: %s", exc)
                continue
            for lease_id in answer["gone"]:
                session = live.get(lease_id)
                if session is not None:
                    with contextlib.suppress(RuntimeError):  # its loop has closed: nothing to end
                        session.loop.call_soon_threadsafe(self._end_reclaimed, session)
            for event_id in answer["unknown_events"]:
                # dropped while this gateway was taken for gone (silent past the TTL)
                event = self.events.get(event_id)
                if event is not None and not self._heartbeat_stop.is_set():
                    log.warning("the scheduler forgot stream event %r: registering it again", event_id)
                    try:
                        self._register(event)
                    except Exception as exc:
                        log.warning("registering %r again failed: %s", event_id, exc)

    def _end_reclaimed(self, session: Session) -> None:
        session.send_client("end_stream", {"reason": "lease_reclaimed"})
        session.close_soon("the scheduler reclaimed the lease", delay=C.END_STREAM_GRACE_S)

    def _stop_heartbeat(self) -> threading.Thread | None:
        thread, self._heartbeat = self._heartbeat, None
        self._heartbeat_stop.set()
        return thread

    async def _session_ended(self, session: Session) -> None:
        if self.sessions.get(session.webrtc_id) is session:
            self.sessions.pop(session.webrtc_id, None)
        for kind, queue in (
            (OUTPUTS_ADDITIONAL, session.outputs),
            (OUTPUTS_STREAM, session.stream_outputs),
        ):
            if not queue.empty():
                # the page fetches outputs after the fact: keep them a little while
                key = (session.webrtc_id, kind)
                self._ended_outputs[key] = queue
                later = asyncio.get_running_loop().call_later
                later(OUTPUTS_GRACE_S, self._ended_outputs.pop, key, None)
        try:
            await asyncio.wait_for(self.scheduler.release.remote(session.lease_id, session.worker_ok), C.RAY_CALL_TIMEOUT_S)
        except Exception as exc:
            # the lease expires with this gateway's heartbeat if the scheduler missed this
            log.warning("session %s: release failed: %s", session.webrtc_id, exc)

    async def aclose(self, drop_pools: bool = False) -> None:
        """End every session and give back every lease. Safe to call twice.
        ``drop_pools``: also kill this app's idle workers (when no other gateway serves it)."""
        sessions = [s for s in self.sessions.values() if s is not None]
        await asyncio.gather(*(s.aclose("gateway shutting down") for s in sessions), return_exceptions=True)
        beating = self._stop_heartbeat()
        if beating is not None:
            # a beat after forget_gateway would make this gateway known again
            await asyncio.to_thread(beating.join, C.RAY_CALL_TIMEOUT_S)
        if self.scheduler is not None:
            try:
                await asyncio.wait_for(self.scheduler.forget_gateway.remote(self.gateway_id), C.RAY_CALL_TIMEOUT_S)
                if drop_pools:
                    for eid in self.events:
                        await asyncio.wait_for(self.scheduler.unregister.remote(eid), C.RAY_CALL_TIMEOUT_S)
            except Exception as exc:
                log.warning("scheduler did not take the gateway's shutdown: %s", exc)

    async def status(self) -> dict[str, Any]:
        return {
            "gateway_id": self.gateway_id,
            "sessions": {
                sid: {"worker_pid": s.worker_pid, "frames_in": s.frames_in, "frames_out": s.frames_out, "channel": vars(s.channel.stats) if s.channel else None}
                for sid, s in self.sessions.items()
                if s is not None
            },
        }


def _check_id(webrtc_id: Any) -> str:
    if not isinstance(webrtc_id, str) or not WEBRTC_ID_RE.match(webrtc_id):
        raise HTTPError(400, "bad_webrtc_id", f"'webrtc_id' must be 1-{C.MAX_WEBRTC_ID_CHARS} characters of [A-Za-z0-9_.:-]")
    return webrtc_id


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
        body = json.loads(raw)
    except ValueError as exc:
        raise HTTPError(400, "bad_json", f"the body is not JSON: {exc}") from exc
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
