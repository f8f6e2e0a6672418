"""``get_current_context()``: which session a handler call belongs to, as fastrtc has it.

The worker sets the context once per session in each thread that calls the handler (and
before its asyncio loop makes any task, so every task inherits it): any handler call --
``receive``/``emit``, a frame function, a generator, an async handler, ``start_up`` and
``shutdown`` -- can ask for it without being passed anything. A thread or task the handler
starts itself gets it the way contextvars always pass on (``asyncio.create_task`` and
``asyncio.to_thread`` copy it; a bare ``threading.Thread`` does not).

``websocket`` is None for a WebRTC session. For a client on ``/websocket/offer`` or a phone
call it is a :class:`WebSocketSender`: text sent with it goes over the session's link and the
gateway writes it to the client's socket as it is (``wire.WEBSOCKET_SEND``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any


class WebSocketSender:
    """The part of a WebSocket a handler in a worker can use: sending text to its client.

    The socket itself lives in the gateway; ``send`` puts the text on the session's link
    (it never blocks: the link queues what the socket cannot take yet)."""

    def __init__(self, send: Callable[[str], None]) -> None:
        self._send = send

    def send_text_sync(self, data: str) -> None:
        if not isinstance(data, str):
            raise TypeError(f"send_text takes a str, not {type(data).__name__}")
        self._send(data)

    def send_json_sync(self, data: Any) -> None:
        # the separators Starlette's WebSocket.send_json uses, so a client sees the same text
        self.send_text_sync(json.dumps(data, separators=(",", ":"), ensure_ascii=False))

    async def send_text(self, data: str) -> None:
        self.send_text_sync(data)

    async def send_json(self, data: Any) -> None:
        self.send_json_sync(data)

    def __repr__(self) -> str:
        return "WebSocketSender()"


@dataclass
class Context:
    """The session a handler call serves: its ``webrtc_id`` (for a phone call, Twilio's
    stream id) and, for a WebSocket or phone client, a sender to its socket."""

    webrtc_id: str
    websocket: Any | None = None


_current: ContextVar[Context | None] = ContextVar("rtcpool_context", default=None)


def get_current_context() -> Context:
    """The context of the session this handler call serves; RuntimeError outside one."""
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("No context found")
    return ctx


def set_context(ctx: Context | None) -> Token[Context | None]:
    """The worker's side: make ``ctx`` current in this thread (or task) from now on."""
    return _current.set(ctx)


def reset_context(token: Token[Context | None]) -> None:
    _current.reset(token)


__all__ = ["Context", "WebSocketSender", "get_current_context"]
