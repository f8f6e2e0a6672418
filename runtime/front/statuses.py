"""What a refusal is on the wire: its HTTP status and headers, or its WebSocket close code.

The planes raise :class:`runtime.errors.Refused` with a code and no HTTP status; this table
is the one place a code becomes a status. Two codes answer differently by where they come
from, and the Refused says which: ``unknown_stream`` and ``expired`` from the scheduler's
lease refusal are 503 (``unavailable``), ``unknown_stream`` of an offer's stream_id is 404;
a WebSocket client's place in line that ends (any waiting-room reason, ``expired``
included) closes with 4410 (:class:`LineLeft`).
"""

from __future__ import annotations

from runtime.errors import ErrorCode as E
from runtime.errors import Refused

UNAVAILABLE = 503
GONE = 410

HTTP_STATUS: dict[E, int] = {
    **dict.fromkeys(
        (
            E.BAD_REQUEST, E.BAD_JSON, E.BAD_JSON_NUMBER, E.BAD_UTF8, E.JSON_TOO_DEEP, E.JSON_TOO_LARGE,
            E.BAD_HOST, E.BAD_WEBRTC_ID, E.SESSION_KEY_IN_URL, E.TICKET_IN_URL, E.STREAM_ID_REQUIRED,
            E.QUEUE_TICKET_REQUIRED, E.BAD_QUEUE_TICKET,
            E.BAD_SDP, E.SDP_TOO_LARGE, E.SDP_LINE_TOO_LONG, E.TOO_MANY_MEDIA_SECTIONS, E.TOO_MANY_TRACKS,
            E.TOO_MANY_SSRCS, E.TOO_MANY_CANDIDATES, E.UNSUPPORTED_MEDIA, E.UNSUPPORTED_PROTOCOL,
            E.UNSUPPORTED_CODEC, E.RTCP_MUX_REQUIRED, E.BAD_FINGERPRINT, E.BAD_DTLS_SETUP,
            E.BAD_ICE_CREDENTIALS, E.BAD_CANDIDATE, E.FORBIDDEN_CANDIDATE_ADDRESS, E.OFFER_LACKS_MEDIA,
            E.NOT_AN_AUDIO_STREAM,
            # WebSocket-only: closed with their own codes (CLOSE_CODE), 400 if ever answered over HTTP
            E.START_TIMEOUT, E.BINARY_MESSAGE, E.TOO_MANY_BAD_MESSAGES,
        ),
        400,
    ),
    E.AUTH_REQUIRED: 401,
    E.BAD_TOKEN: 401,
    E.TOKEN_EXPIRED: 401,
    **dict.fromkeys(
        (E.TOKEN_WRONG_STREAM, E.ORIGIN_NOT_ALLOWED, E.SESSION_KEY_REQUIRED, E.BAD_SESSION_KEY, E.BAD_TWILIO_SIGNATURE, E.BAD_CALL_TOKEN, E.UNSIGNED_WEBHOOK),
        403,
    ),
    **dict.fromkeys((E.NO_STREAMS, E.UNKNOWN_STREAM, E.UNKNOWN_WEBRTC_ID, E.UNKNOWN_QUEUE_TICKET, E.NOT_RESUMABLE), 404),
    E.HEADER_TIMEOUT: 408,
    E.DUPLICATE_WEBRTC_ID: 409,
    **dict.fromkeys(
        (E.QUEUE_TICKET_GONE, E.LEFT, E.VANISHED, E.QUEUE_TIMEOUT, E.STREAM_CHANGED, E.CLAIMED, E.UNKNOWN_TICKET, E.QUEUE_LEFT),
        GONE,
    ),
    E.BODY_TOO_LARGE: 413,
    E.MESSAGE_TOO_LARGE: 413,
    E.UNSUPPORTED_MEDIA_TYPE: 415,
    E.SESSION_ELSEWHERE: 421,
    E.HOST_NOT_ALLOWED: 421,  # RFC 9110 Misdirected Request: not an authority this server answers for
    **dict.fromkeys(
        (
            E.CONCURRENCY_LIMIT_REACHED, E.QUEUE_FULL, E.TOO_MANY_QUEUED, E.TOO_MANY_PENDING_OFFERS,
            E.TOO_MANY_SESSIONS, E.OFFER_RATE_LIMITED, E.INPUT_RATE_LIMITED, E.TOO_MANY_READERS,
            E.SESSION_REQUEST_RATE_LIMITED, E.TOO_MANY_CONNECTIONS,
            E.TOO_MANY_QUEUE_STREAMS, E.TOO_MANY_UNSTARTED_SOCKETS, E.WEBHOOK_RATE_LIMITED, E.TOO_MANY_CALL_TOKENS,
        ),
        429,
    ),
    E.AUTH_MISCONFIGURED: 500,
    **dict.fromkeys(
        (E.DRAINING, E.WORKER_UNAVAILABLE, E.SCHEDULER_UNAVAILABLE, E.NO_MEDIA_PROCESS, E.NO_WORKER, E.NO_NODE_FITS, E.EXPIRED),
        UNAVAILABLE,
    ),
    E.MEDIA_TIMEOUT: 504,
}  # fmt: skip

# --- WebSocket close codes -------------------------------------------------------------------------
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003  # a binary message: this protocol is JSON text
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_REFUSED_BASE = 4000  # + the HTTP status the offer route would answer (4429, 4403, ...)
# the codes a WebSocket client is closed with that are not an offer's refusal
CLOSE_CODE: dict[E, int] = {
    E.START_TIMEOUT: CLOSE_POLICY,
    E.TOO_MANY_BAD_MESSAGES: CLOSE_POLICY,
    E.BINARY_MESSAGE: CLOSE_UNSUPPORTED,
    E.MESSAGE_TOO_LARGE: CLOSE_TOO_BIG,
}


class LineLeft(Refused):
    """A WebSocket client's place in line ended (runtime/control/waiting_room.py's reason):
    closed with 4410 whatever the reason."""


def http_status(err: Refused) -> int:
    if err.unavailable:
        return UNAVAILABLE
    if isinstance(err, LineLeft):
        return GONE
    return HTTP_STATUS[err.code]


def http_headers(err: Refused) -> dict[str, str]:
    headers: dict[str, str] = {}
    if err.retry_after_s is not None:
        headers["Retry-After"] = str(err.retry_after_s)
    if err.challenge is not None:
        headers["WWW-Authenticate"] = err.challenge
    return headers


def close_code(err: Refused) -> int:
    """The WebSocket close code of a refusal: 4000 + its HTTP status, or a protocol code."""
    if isinstance(err, LineLeft):
        return CLOSE_REFUSED_BASE + GONE
    return CLOSE_CODE.get(err.code) or CLOSE_REFUSED_BASE + http_status(err)


__all__ = ["HTTP_STATUS", "CLOSE_CODE", "LineLeft", "http_status", "http_headers", "close_code"]
