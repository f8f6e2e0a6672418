"""The signalling routes, at the app's root, each a function over a gateway (:class:`GatewayAPI`):

* ``POST /webrtc/offer`` -- fastrtc's offer and trickle-candidate body;
* ``GET  /webrtc/streams`` -- the stream events this app serves;
* ``GET  /webrtc/sessions`` -- the live sessions of this gateway (no ids: they are keys);
* ``POST /webrtc/input`` -- set a session's additional inputs (apps without Gradio);
* ``POST /webrtc/close`` -- the client hangs up: ``{"webrtc_id"}`` ends that session;
* ``GET  /webrtc/outputs?webrtc_id=`` -- server-sent events with its AdditionalOutputs;
* ``GET  /webrtc/queue?webrtc_id=`` -- a queued offer's place in line, as server-sent events
  (the ticket in ``X-Queue-Ticket``); ``POST /webrtc/queue/leave`` -- leave the line;
* ``GET  /webrtc/health``, ``GET /webrtc/ready``, ``GET /metrics`` -- probes and Prometheus.

:func:`mount_routes` adds them, the standalone page and the WebSocket and phone routes.
Every refusal is a Refused, answered in one place (runtime/front/http_util.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict

from runtime import constants as C
from runtime.errors import ErrorCode, Refused
from runtime.front import twilio, websocket_routes
from runtime.front.api import GatewayAPI
from runtime.front.http_util import (
    SESSION_KEY_HEADER,
    Route,
    endpoint,
    jsonable,
    read_json,
    session_key,
)
from runtime.front.standalone import mount_standalone
from runtime.front.statuses import http_status
from runtime.media.offers import check_id

QUEUE_TICKET_HEADER = "x-queue-ticket"  # where the updates stream's GET carries the queue ticket
MAX_TICKET_CHARS = 64  # a queue ticket is 32 characters; anything longer is not one
OWN_ROUTE_PREFIXES = ("/webrtc/", "/websocket/", "/telephone/")  # ahead of an app's catch-alls
METRICS_PATH = "/metrics"
SSE_MEDIA_TYPE = "text/event-stream"
SSE_KEEPALIVE = ": keep-alive\n\n"


# --- request bodies (read through safejson first: the fields keep what the client sent, and
# each route checks them in its own order, as its refusals say) ---------------------------------


class SessionBody(BaseModel):
    """A per-session POST body: which session, and its key (else the X-Session-Key header)."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    webrtc_id: Any = None
    session_key: Any = None

    def key(self, request: Request) -> Any:
        if "session_key" in self.model_fields_set:
            return self.session_key
        return request.headers.get(SESSION_KEY_HEADER)


class InputBody(SessionBody):
    args: Any = None  # the stream's input values, a list


class LeaveBody(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    ticket: Any = None
    webrtc_id: Any = None


def check_ticket(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise Refused(ErrorCode.QUEUE_TICKET_REQUIRED, "send the queue ticket (the 202's queue.ticket)")
    if len(value) > MAX_TICKET_CHARS or not value.isascii():
        raise Refused(ErrorCode.BAD_QUEUE_TICKET, "that is not a queue ticket")
    return value


# --- the routes ------------------------------------------------------------------------------------


async def offer(gw: GatewayAPI, request: Request) -> Response:
    gw.loop = asyncio.get_running_loop()
    candidate = False  # a trickled candidate is not an offer: not counted as one
    try:
        grant = await gw.check_access(request)
        body = await read_json(request, gw.config.gateway.max_offer_bytes)
        candidate = body.get("type") == "ice-candidate"
        client = request.client.host if request.client else None
        result = await gw.handle_offer(body, session_key(request, body), client, grant)
    except Refused as err:
        if not candidate:
            gw.count_offer(err.code, http_status(err))
        raise
    queued = result.get("status") == "queued"
    if not candidate:
        gw.count_offer("queued" if queued else "answered")
    return JSONResponse(result, status_code=202 if queued else 200)


async def health(gw: GatewayAPI, request: Request) -> Response:
    # liveness: this process answers (a probe that fails restarts it)
    return JSONResponse({"status": "alive", "draining": gw.draining})


async def ready(gw: GatewayAPI, request: Request) -> Response:
    # readiness: worth sending new users to (a probe that fails takes it out of rotation)
    gw.loop = asyncio.get_running_loop()
    problems = await gw.readiness()
    body = {"status": "ready" if not problems else "not_ready", "problems": problems}
    return JSONResponse(body, status_code=200 if not problems else 503)


async def metrics(gw: GatewayAPI, request: Request) -> Response:
    # Prometheus text; counters the code keeps anyway, read now (no per-frame work)
    body, content_type = await gw.metrics_text()
    return Response(body, media_type=content_type)


async def streams(gw: GatewayAPI, request: Request) -> Response:
    await gw.check_access(request)
    return JSONResponse({"streams": [{"stream_id": e.event_id, "mode": e.mode, "modality": e.modality, "concurrency_limit": e.concurrency_limit, "time_limit": e.time_limit, "queue": e.queue} for e in gw.events.values()]})


async def sessions(gw: GatewayAPI, request: Request) -> Response:
    # workers' and media processes' pids and node ids are the operator's: a client sees none
    grant = await gw.check_access(request)
    client = request.client.host if request.client else None
    return JSONResponse([v.to_json() for v in await gw.sessions_view(internals=gw.auth.is_operator(grant, request.headers, client))])


async def set_input(gw: GatewayAPI, request: Request) -> Response:
    await gw.check_access(request)
    gw.check_session_request(request)
    body = InputBody.model_validate(await read_json(request, C.MAX_INPUT_BYTES))
    if not isinstance(body.args, list):
        raise Refused(ErrorCode.BAD_REQUEST, "'args' must be a list of the stream's input values")
    await gw.aset_args(check_id(body.webrtc_id), body.key(request), body.args)
    return JSONResponse({"status": "success"})


async def close(gw: GatewayAPI, request: Request) -> Response:
    # the client hangs up (the page's Stop): the slot is free now, not at a timeout
    await gw.check_access(request)
    gw.check_session_request(request)
    body = SessionBody.model_validate(await read_json(request, C.MAX_INPUT_BYTES))
    await gw.close_session(check_id(body.webrtc_id), body.key(request))
    return JSONResponse({"status": "success"})


async def outputs(gw: GatewayAPI, request: Request) -> Response:
    # the key comes in a header (GET) or the body (POST), never in the URL, which proxies
    # and access logs keep
    await gw.check_access(request)
    gw.check_session_request(request)
    if "session_key" in request.query_params:
        raise Refused(ErrorCode.SESSION_KEY_IN_URL, "send the session key in the X-Session-Key header or a POST body, not the URL")
    if request.method == "POST":
        body = SessionBody.model_validate(await read_json(request, C.MAX_INPUT_BYTES))
        webrtc_id, key = body.webrtc_id, body.key(request)
    else:
        webrtc_id, key = request.query_params.get("webrtc_id"), request.headers.get(SESSION_KEY_HEADER)
    stream = await gw.output_stream(check_id(webrtc_id), key)

    async def events() -> Any:
        async for values in stream:
            if values is None:
                yield SSE_KEEPALIVE
            else:
                yield f"event: output\ndata: {json.dumps(values, default=jsonable)}\n\n"

    return StreamingResponse(events(), media_type=SSE_MEDIA_TYPE)


async def queue_updates(gw: GatewayAPI, request: Request) -> Response:
    # the ticket comes in a header, never in the URL (proxies and access logs keep URLs)
    await gw.check_access(request)
    if "ticket" in request.query_params:
        raise Refused(ErrorCode.TICKET_IN_URL, "send the queue ticket in the X-Queue-Ticket header, not the URL")
    webrtc_id = check_id(request.query_params.get("webrtc_id"))
    client = request.client.host if request.client else None
    stream = await gw.queue_stream(check_ticket(request.headers.get(QUEUE_TICKET_HEADER)), webrtc_id, client)

    async def events() -> Any:
        async for view in stream:
            if view is None:
                yield SSE_KEEPALIVE
            else:
                yield f"event: queue\ndata: {json.dumps(view)}\n\n"

    return StreamingResponse(events(), media_type=SSE_MEDIA_TYPE, headers={"Cache-Control": "no-store"})


async def queue_leave(gw: GatewayAPI, request: Request) -> Response:
    # Stop while queued, or the page going away (navigator.sendBeacon)
    await gw.check_access(request)
    body = LeaveBody.model_validate(await read_json(request, C.MAX_INPUT_BYTES))
    await gw.leave_queue(check_ticket(body.ticket), check_id(body.webrtc_id))
    return JSONResponse({"status": "success"})


ROUTES: list[tuple[str, Route[GatewayAPI], list[str]]] = [
    ("/webrtc/offer", offer, ["POST"]),
    ("/webrtc/queue", queue_updates, ["GET"]),
    ("/webrtc/queue/leave", queue_leave, ["POST"]),
    ("/webrtc/health", health, ["GET"]),
    (METRICS_PATH, metrics, ["GET"]),
    ("/webrtc/ready", ready, ["GET"]),
    ("/webrtc/streams", streams, ["GET"]),
    ("/webrtc/sessions", sessions, ["GET"]),
    ("/webrtc/input", set_input, ["POST"]),
    ("/webrtc/close", close, ["POST"]),
    ("/webrtc/outputs", outputs, ["GET", "POST"]),
]


def mount_routes(app: Any, gw: GatewayAPI) -> None:
    """Add the signalling routes to a FastAPI (or Gradio) app, at its root."""
    for path, route, methods in ROUTES:
        app.add_api_route(path, endpoint(gw, route), methods=methods)
    mount_standalone(app, gw)  # GET /webrtc/ui: the client's own page, for apps without Gradio
    websocket_routes.mount_websocket_routes(app, gw)  # /websocket/offer, /telephone/handler
    twilio.mount_twilio_webhook(app, gw)  # /telephone/incoming: a phone call's TwiML
    # Routes added after start-up go last; Gradio's catch-alls must not shadow ours.
    routes = app.router.routes
    ours = [r for r in routes if getattr(r, "path", "").startswith(OWN_ROUTE_PREFIXES) or getattr(r, "path", "") == METRICS_PATH]
    for r in ours:
        routes.remove(r)
    routes[0:0] = ours
