"""HTTP for the front's routes: one error mapping, one JSON body reader, one way to bind a
route function to its gateway.

A route is a module-level ``async def route(gw, request) -> Response``; :func:`endpoint`
makes it the ``(request) -> Response`` FastAPI calls, answering any Refused it raises as
``{"status": "failed", "meta": {"error", "message", ...}}`` with the status and
headers runtime/front/statuses.py gives its code (:func:`error_response`) -- the one place a refusal becomes a response.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

# module level: FastAPI reads the endpoint's annotations from this module's globals
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from runtime.errors import ErrorCode, Refused
from runtime.front.statuses import http_headers, http_status
from runtime.guard import safejson

G = TypeVar("G")
Route = Callable[[G, Request], Awaitable[Response]]

SESSION_KEY_HEADER = "x-session-key"  # where a GET (the outputs stream) carries the session key
JSON_CONTENT_TYPE = "application/json"


def error_response(err: Refused) -> JSONResponse:
    return JSONResponse(err.body(), status_code=http_status(err), headers=http_headers(err))


def endpoint(gw: G, route: Route[G]) -> Callable[[Request], Awaitable[Response]]:
    """``route`` bound to ``gw``, its refusals answered by :func:`error_response`."""

    async def call(request: Request) -> Response:
        try:
            return await route(gw, request)
        except Refused as err:
            return error_response(err)

    # FastAPI names the route (and its OpenAPI operation) after the function; not
    # functools.wraps: FastAPI would follow __wrapped__ and read ``gw`` as a parameter
    call.__name__ = call.__qualname__ = getattr(route, "__name__", "route")
    call.__doc__ = route.__doc__
    return call


async def read_json(request: Any, limit: int) -> dict[str, Any]:
    """A request's JSON object body: application/json, at most ``limit`` bytes, through
    the one JSON gate (runtime/guard/safejson.py)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != JSON_CONTENT_TYPE:
        raise Refused(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "send the body as application/json")
    raw = await read_body(request, limit)
    try:
        body = safejson.loads(raw)
    except safejson.JSONRejected as exc:
        raise Refused(ErrorCode(exc.reason), exc.message) from None
    if not isinstance(body, dict):
        raise Refused(ErrorCode.BAD_JSON, "the body must be a JSON object")
    return body


async def read_body(request: Any, limit: int) -> bytes:
    """A request's body, at most ``limit`` bytes (413 past it): its Content-Length is
    checked before a byte is read, and the streamed read stops at the limit, so a body
    without a length (chunked) costs no more than ``limit`` either."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise Refused(ErrorCode.BODY_TOO_LARGE, f"the body may be at most {limit} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise Refused(ErrorCode.BODY_TOO_LARGE, f"the body may be at most {limit} bytes")
    return bytes(raw)


def session_key(request: Any, body: dict[str, Any] | None) -> Any:
    """A request's session key: the body's ``session_key``, else the X-Session-Key header."""
    if body is not None and "session_key" in body:
        return body["session_key"]
    return request.headers.get(SESSION_KEY_HEADER)


def jsonable(obj: Any) -> Any:
    """json.dumps(default=...) for outputs: numpy arrays and scalars as lists and numbers."""
    try:
        import numpy as np

        if isinstance(obj, np.ndarray):
            return obj.tolist()
        if isinstance(obj, np.generic):
            return obj.item()
    except ImportError:
        pass
    return str(obj)
