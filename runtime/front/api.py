"""What the front's routes need of a gateway, as a Protocol.

The route modules (routes.py, websocket_routes.py, twilio.py, standalone.py) take the
gateway as a parameter typed with :class:`GatewayAPI`; runtime/front/gateway.py implements
it and is the one that imports them, so no route module imports the gateway back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from runtime.config import Config
from runtime.guard.auth import AuthGrant, SignallingAuth
from runtime.media.session_view import SessionView
from runtime.media.stream_event import StreamEvent
from workers.link.shape import Transport


class CallTokenBook(Protocol):
    """Single-use tokens tying a Twilio media stream to the webhook that announced it
    (runtime/front/twilio.py CallTokens)."""

    def mint(self, stream_id: str | None, address: str | None = None) -> str: ...

    def spend(self, token: Any) -> tuple[bool, str | None]: ...


class GatewayAPI(Protocol):
    # the event loop the routes run on: a route sets it, a drain started by a signal uses it
    loop: asyncio.AbstractEventLoop | None

    @property
    def config(self) -> Config: ...

    @property
    def events(self) -> dict[str, StreamEvent]: ...

    @property
    def call_tokens(self) -> CallTokenBook: ...

    @property
    def draining(self) -> bool: ...

    @property
    def auth(self) -> SignallingAuth: ...

    async def check_access(self, request: Any) -> AuthGrant: ...

    def check_session_request(self, request: Any) -> None: ...

    def pick_event(self, stream_id: Any) -> StreamEvent: ...

    def count_offer(self, outcome: str, status: int | None = None) -> None: ...

    async def handle_offer(
        self, body: dict[str, Any], key: Any = None, client: str | None = None, grant: AuthGrant | None = None
    ) -> dict[str, Any]: ...

    async def open_websocket(
        self,
        event: StreamEvent,
        webrtc_id: str,
        client: str | None,
        client_kind: Transport,
        send_text: Callable[[str], Awaitable[None]],
        queue: bool,
        ticket: str | None,
    ) -> dict[str, Any]: ...

    async def aset_args(self, webrtc_id: str, key: Any, args: list[Any]) -> None: ...

    async def close_session(self, webrtc_id: str, key: Any) -> None: ...

    async def output_stream(self, webrtc_id: str, key: Any) -> AsyncIterator[list[Any] | None]: ...

    async def queue_stream(
        self, secret: str, webrtc_id: str, client: str | None = None
    ) -> AsyncGenerator[dict[str, Any] | None, None]: ...

    async def leave_queue(self, secret: str, webrtc_id: str) -> None: ...

    async def sessions_view(self, internals: bool = True) -> list[SessionView]: ...

    async def readiness(self) -> list[str]: ...

    async def metrics_text(self) -> tuple[bytes, str]: ...
