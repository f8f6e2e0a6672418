"""The component's events as calls on the gateway: the functions ``WebRTC.stream()`` and
``on_additional_outputs`` register with Gradio. Each takes the session's handle (the
component's value, "id/key") and is async, so it runs on the server's event loop where the
gateway's sessions live (or the Ray call forwarding to a media process is awaited)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import anyio.to_thread
import gradio as gr

from runtime.errors import Refused
from runtime.front.statuses import http_status
from runtime.media.offers import split_handle
from workers.link.wire import OutputsKind

log = logging.getLogger("rtcpool.gradio")


def initial_value(component: Any) -> Any:
    """A component's value as its page sends it before anyone touches it: what the worker
    starts with until the page's inputs arrive (and all a client that never sends them gets).
    Test-found: an empty Textbox's value is None on the server but "" in the page, so the
    guide's ``transcript + next_text`` raised on a first call that came before the page's
    inputs did."""
    value = component.value
    if value is None and isinstance(component, gr.Textbox):
        return ""
    return value


def stream_outputs_fetcher(gateway: Any, count: int) -> Callable[..., Any]:
    # async, so it runs on the server's event loop, where the gateway's sessions live (or
    # the forwarding to the media process that holds the session, a Ray call, is awaited)
    async def fetch_stream_outputs(handle: Any) -> Any:
        webrtc_id, key = split_handle(handle)
        if not webrtc_id:
            return gr.skip()  # not streaming (yet)
        try:
            got = await gateway.anext_output(webrtc_id, key, OutputsKind.STREAM)
        except Refused as err:
            refused(webrtc_id, err)
            return gr.skip()
        if got is None:
            return gr.skip()  # this fetch_output was for an AdditionalOutputs
        return got[0] if count == 1 else tuple(got)

    return fetch_stream_outputs


def additional_outputs_fetcher(gateway: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
    # async, so the queue is read on the server's event loop, where the gateway's sessions
    # live; the user's sync fn then runs on a thread, never blocking that loop
    async def fetch_additional_outputs(handle: Any, *values: Any) -> Any:
        webrtc_id, key = split_handle(handle)
        try:
            got = await gateway.anext_output(webrtc_id, key) if webrtc_id else None
        except Refused as err:
            refused(webrtc_id, err)
            return gr.skip()
        if got is None:
            return gr.skip()  # this fetch_output was for the stream's own outputs
        if inspect.iscoroutinefunction(fn):
            return await fn(*values, *got)
        result = await anyio.to_thread.run_sync(lambda: fn(*values, *got))
        return await result if inspect.isawaitable(result) else result

    return fetch_additional_outputs


def stream_id_of(api_name: Any, concurrency_id: Any) -> str | None:
    """The stream event's id from Gradio's naming keywords (None: the gateway numbers it)."""
    for keyword, value in (("api_name", api_name), ("concurrency_id", concurrency_id)):
        if value is None or value is False:  # Gradio's api_name=False: no endpoint name
            continue
        if not isinstance(value, str) or not value.strip():
            raise TypeError(f"{keyword} must be a non-empty string, got {value!r}")
        return value
    return None


def args_pusher(gateway: Any) -> Callable[..., Any]:
    # async, so it runs on the server's event loop, where the gateway's sessions live (or
    # the forwarding to the media process that holds the session, a Ray call, is awaited)
    async def push_webrtc_args(handle: Any, *values: Any) -> None:
        webrtc_id, key = split_handle(handle)
        if not webrtc_id:
            return  # not streaming (yet): the worker starts with the inputs' initial values
        try:
            await gateway.aset_args(webrtc_id, key, list(values))
        except Refused as err:
            refused(webrtc_id, err)

    return push_webrtc_args


def refused(webrtc_id: str, err: Refused) -> None:
    # 404: the session ended (or never started) while the event was on its way; 403: a
    # value that is not this session's handle (a forged request), worth a line
    if http_status(err) == 403:
        log.warning("component event for session %r refused: %s", webrtc_id[:40], err.error)
