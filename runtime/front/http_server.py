"""uvicorn under ``rtcpool serve``, with the bounds of ``gateway.http`` (runtime/guard/http_limits.py).

uvicorn has a keep-alive timeout, a concurrency limit, a header-size limit and a WebSocket
message limit (all set here), but no header timeout and no per-address connection count:
:func:`bounded_h11_protocol` adds both to uvicorn's h11 protocol class, a subclass of
``uvicorn.protocols.http.h11_impl.H11Protocol`` (checked against uvicorn
:data:`UVICORN_VERSION_CHECKED`; tests/test_patched_internals.py fails first if the names it
relies on move): ``connection_made``, ``data_received``, ``connection_lost``,
``handle_websocket_upgrade`` (after it the transport's protocol is uvicorn's WebSocket one),
``conn`` (the h11 connection, whose client side stays ``IDLE`` until a request's headers are
complete) and ``transport``.

Header timeout: from the connection's start, and again from the first byte of each next
request on a kept-alive one, the request's headers must be complete within
``header_timeout_s``; else the client gets 408 with a JSON reason and the connection closes
(a slow-loris holds a connection for that long at most). An idle kept-alive connection is
uvicorn's own ``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from runtime.errors import ErrorCode
from runtime.guard.http_limits import HttpLimitsConfig
from runtime.guard.limits import client_key

log = logging.getLogger("rtcpool.http")

UVICORN_VERSION_CHECKED = "0.55.0"
H11_PROTOCOL_NAMES = ("connection_made", "data_received", "connection_lost", "handle_websocket_upgrade", "conn", "transport")


def _refusal(status: int, phrase: str, code: ErrorCode, message: str) -> bytes:
    # written straight to the socket: the h11 state machine may be mid-request
    body = json.dumps({"status": "failed", "meta": {"error": code.value, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def bounded_h11_protocol(limits: HttpLimitsConfig, *, exempt_loopback: bool) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a header timeout and a per-address connection count (one
    class per server: the count is the class's)."""
    header_timeout_s = limits.header_timeout_s
    max_per_address = limits.max_connections_per_address
    timed_out = _refusal(408, "Request Timeout", ErrorCode.HEADER_TIMEOUT, f"the request's headers took more than {header_timeout_s:g} s")
    too_many = _refusal(
        429, "Too Many Requests", ErrorCode.TOO_MANY_CONNECTIONS, f"at most {max_per_address} connections per client address"
    )
    per_address: dict[str, int] = {}

    class BoundedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _address: str | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            host = self.client[0] if self.client else None
            ck = client_key(host)
            if not (ck.loopback and exempt_loopback):
                held = per_address.get(ck.key, 0)
                if held >= max_per_address:
                    transport.write(too_many)
                    transport.close()
                    return
                per_address[ck.key] = held + 1
                self._address = ck.key
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self.conn.their_state is h11.IDLE:
                self._arm_header_timer()  # the first bytes of the next request on a kept-alive connection
            super().data_received(data)
            if self._header_timer is not None and self.conn.their_state is not h11.IDLE:
                self._header_timer.cancel()  # the headers are in (or the socket was upgraded)
                self._header_timer = None

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            self._release()
            super().connection_lost(exc)

        def handle_websocket_upgrade(self, event: h11.Request) -> None:
            # uvicorn hands the socket to its WebSocket protocol, and this one never hears
            # of it again: the socket's place in its address's count goes back when the
            # WebSocket protocol loses the connection (test-found: each upgrade leaked one)
            super().handle_websocket_upgrade(event)
            ws = self.transport.get_protocol()
            if ws is self or self._address is None:
                self._release()
                return
            lost = ws.connection_lost
            release = self._release

            def connection_lost(exc: Exception | None) -> None:
                release()
                lost(exc)

            ws.connection_lost = connection_lost  # type: ignore[method-assign]

        def _release(self) -> None:
            if self._address is not None:
                left = per_address.get(self._address, 1) - 1
                if left > 0:
                    per_address[self._address] = left
                else:
                    per_address.pop(self._address, None)
                self._address = None

        def _arm_header_timer(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.write(timed_out)
                self.transport.close()

    return BoundedH11Protocol


def uvicorn_options(limits: HttpLimitsConfig, *, exempt_loopback: bool) -> dict[str, Any]:
    """The ``uvicorn.Config`` keywords that bound connections (``rtcpool serve``)."""
    return {
        "http": bounded_h11_protocol(limits, exempt_loopback=exempt_loopback),
        "timeout_keep_alive": limits.keep_alive_timeout_s,
        "limit_concurrency": limits.max_concurrency,
        "h11_max_incomplete_event_size": limits.max_header_bytes,
        "ws_max_size": limits.max_websocket_message_bytes,
    }
