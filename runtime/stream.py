"""A stream object for apps without Gradio, in the shape fastrtc users write:

    from runtime.stream import Stream

    def invert(frame):
        return 255 - frame  # runs in a worker process

    stream = Stream(invert, mode="send-receive", modality="video", concurrency_limit=4)
    app = stream.app             # a FastAPI app with the /webrtc/* routes; or
    stream.mount(my_fastapi_app)  # the routes on an app of your own

An audio stream also answers WebSocket clients (``/websocket/offer``, fastrtc's messages;
runtime/clients/websocket.py is a client) and phone calls (point a Twilio number's voice webhook
at ``https://<host>/telephone/incoming``; docs/deployment.md, "Phone calls").

Serve it with ``rtcpool serve app.py`` (the config's host and port) or ``uvicorn app:app``.
Either way the app's lifespan starts the gateway (Ray, the worker pools) and, on shutdown,
ends its sessions and gives their leases back. Several streams share one gateway (and one
set of routes; ``stream_id`` picks one): ``Stream(other, gateway=stream.gateway)``.

The handler API is here too, so such an app needs no Gradio import for it:
``from runtime.stream import Stream, ReplyOnPause, VideoStreamHandler, get_current_context``
(everything ``gradio_ext`` exports but the WebRTC component).

Nothing here imports Gradio.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from typing import Any

from runtime.config import Config
from runtime.front.gateway import Gateway
from runtime.guard.turn import TURN_API

# TURN credentials for rtc_configuration, exported with the handler API (explicit re-exports)
from runtime.guard.turn import get_hf_turn_credentials as get_hf_turn_credentials
from runtime.guard.turn import get_turn_credentials as get_turn_credentials
from runtime.guard.turn import get_twilio_turn_credentials as get_twilio_turn_credentials
from runtime.media.stream_event import StreamEvent
from workers.api import *  # noqa: F403  (the handler API, listed once in workers/api.py)
from workers.api import __all__ as HANDLER_API

# app -> the gateway whose routes and lifespan it carries (one per app: two would answer the
# same /webrtc/* routes)
_bound: weakref.WeakKeyDictionary[Any, Gateway] = weakref.WeakKeyDictionary()


def bind_lifespan(app: Any, gateway: Gateway) -> None:
    """Make ``app`` (FastAPI or Starlette) start ``gateway`` when it starts and close it when
    it stops, around the app's own lifespan. Idempotent for one gateway; a second gateway on
    the same app is refused."""
    bound = _bound.get(app)
    if bound is gateway:
        return
    if bound is not None:
        raise ValueError(
            "this app already serves another gateway's /webrtc/* routes: put every stream on "
            "one gateway (Stream(..., gateway=first.gateway))"
        )
    close_with_app(app, gateway, start=True)
    _bound[app] = gateway


def close_with_app(app: Any, gateway: Gateway, *, start: bool = False) -> None:
    """Wrap ``app``'s lifespan (FastAPI or Starlette) so that ``gateway`` closes when the app
    stops -- its sessions live on the app's event loop, so they end (and give their leases
    back) while it still runs -- and, with ``start``, starts when the app starts."""
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        if start:
            # start() blocks (ray.init, registration): off the loop. Idempotent: `rtcpool
            # serve` has started it already, so that a bad cluster fails before the port opens.
            await asyncio.to_thread(gateway.start)
        gateway.loop = asyncio.get_running_loop()  # a drain (SIGTERM) runs on it
        async with inner(a) as state:
            try:
                yield state
            finally:
                await gateway.aclose()

    app.router.lifespan_context = lifespan


class Stream:
    """One stream event and the gateway that serves it. The arguments are
    :meth:`Gateway.add_stream`'s; ``gateway``: share one with other streams (default: a new
    one from ``config``, else from ``load_config()``: configs/local.yaml and ``RTCPOOL_*``)."""

    def __init__(
        self,
        handler: Any,
        *,
        mode: str = "send-receive",
        modality: str = "video",
        concurrency_limit: int | None = 1,
        time_limit: float | None = None,
        initial_args: list[Any] | None = None,
        stream_every: float | None = None,
        stream_id: str | None = None,
        gateway: Gateway | None = None,
        config: Config | None = None,
        queue: bool = True,
        max_queue: int | None = None,
        queue_timeout_s: float | None = None,
    ) -> None:
        """``queue``: a full stream puts the next clients in its line (an offer answered 202
        with a place; docs/deployment.md, "The waiting room"); False: 429 + Retry-After.
        ``max_queue`` bounds the line, ``queue_timeout_s`` how long one may wait (None: the
        config's ``queue`` section)."""
        if gateway is not None and config is not None:
            raise ValueError("pass a gateway or a config, not both (a gateway has its config)")
        self.gateway = gateway if gateway is not None else Gateway(config)
        self.event: StreamEvent = self.gateway.add_stream(
            handler,
            mode=mode,
            modality=modality,
            concurrency_limit=concurrency_limit,
            time_limit=time_limit,
            initial_args=initial_args,
            event_id=stream_id,
            stream_every=stream_every,
            queue=queue,
            max_queue=max_queue,
            queue_timeout_s=queue_timeout_s,
        )
        self._app: Any = None

    @property
    def stream_id(self) -> str:
        """The id clients pass as ``stream_id`` (``GET /webrtc/streams`` lists them)."""
        return self.event.event_id

    def mount(self, app: Any) -> None:
        """Add the gateway's routes (``/webrtc/offer``, ``/streams``, ``/input``, ``/outputs``,
        ``/ui``; for audio streams fastrtc's ``/websocket/offer`` and Twilio's
        ``/telephone/incoming`` + ``/telephone/handler``) to a FastAPI app, at its root, and
        tie the gateway to its lifespan."""
        if _bound.get(app) is not self.gateway:
            bind_lifespan(app, self.gateway)  # first: it refuses a second gateway
            self.gateway.mount(app)

    @property
    def app(self) -> Any:
        """A FastAPI app of this stream's gateway alone, made on first use."""
        if self._app is None:
            from fastapi import FastAPI

            app = FastAPI(title="rtcpool")
            self.mount(app)
            self._app = app
        return self._app

    def start(self) -> None:
        """Connect to (or start) Ray and register the stream now rather than at app start-up."""
        self.gateway.start()

    async def aclose(self) -> None:
        """End the gateway's sessions and give their leases back. Safe to call twice."""
        await self.gateway.aclose()


__all__ = ["Stream", "bind_lifespan", *HANDLER_API, *TURN_API]  # the handler API as gradio_ext has it
