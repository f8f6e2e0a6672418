"""Bounds on the HTTP connections themselves under ``rtcpool serve``: how many, how long a
request's headers may take, how big a header block and a WebSocket message may be.

Pure settings (``gateway.http``); runtime/front/http_server.py applies them to uvicorn
(``rtcpool serve``, and gradio_ext/http_bounds.py to the server of Gradio's ``launch()``).
Without them uvicorn keeps a connection that trickles one header line every few seconds
for good (it has no header timeout: a slow-loris), takes WebSocket frames of 16 MiB and
accepts connections without bound.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

KIB = 1024
# a request's headers must be complete this long after the connection opens, or after the
# previous response on a kept-alive connection (nginx's client_header_timeout is 60 s;
# a browser sends its headers in one packet)
HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_TIMEOUT_S = 5.0  # an idle kept-alive connection is closed after this (uvicorn's default)
# connections and requests at once over all clients; past it uvicorn answers 503
MAX_CONCURRENCY = 2000
# TCP connections one address (IPv6: its /64) may hold at once: a browser opens <= 6 per
# host, plus one per SSE stream and WebSocket of its sessions
MAX_CONNECTIONS_PER_ADDRESS = 128
MAX_HEADER_BYTES = 16 * KIB  # a request's header block (h11's incomplete-event limit)
# one WebSocket message, read by the server before any check of rtcpool's: uvicorn's default
# is 16 MiB. Twice rtcpool's own 64 KiB message limit, so a message just over that is still
# refused by rtcpool's check with its reason (close 1009 and a JSON reason), and only a far
# bigger one is cut by the server itself (close 1009)
MAX_WEBSOCKET_MESSAGE_BYTES = 128 * KIB


class HttpLimitsConfig(BaseModel):
    """``gateway.http``: the HTTP server's own bounds under ``rtcpool serve``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    header_timeout_s: float = Field(
        HEADER_TIMEOUT_S, gt=0, description="seconds a request's headers may take to arrive; then 408 and the connection closes"
    )
    keep_alive_timeout_s: float = Field(
        KEEP_ALIVE_TIMEOUT_S, gt=0, description="seconds an idle kept-alive connection stays open"
    )
    max_concurrency: int = Field(
        MAX_CONCURRENCY, ge=1, description="connections plus requests in progress at once; past it, 503"
    )
    max_connections_per_address: int = Field(
        MAX_CONNECTIONS_PER_ADDRESS,
        ge=1,
        description="TCP connections one client address (IPv6: /64) may hold; past it, 429 and closed (gateway.limits.exempt_loopback applies)",
    )
    max_header_bytes: int = Field(MAX_HEADER_BYTES, ge=KIB, description="bytes of one request's header block; past it, 400")
    max_websocket_message_bytes: int = Field(
        MAX_WEBSOCKET_MESSAGE_BYTES, ge=KIB, description="bytes of one WebSocket message; past it the socket closes (1009)"
    )
