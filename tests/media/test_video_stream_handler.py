"""fastrtc's ``VideoStreamHandler(fn, fps=...)`` where a frame function goes: registered with
``Gateway.add_stream`` and ``Stream``, and through the whole stack (real aiortc client, real
local Ray): the function runs at most ``fps`` times a second and its frames come back.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from runtime.clients.webrtc import Client, read_counter
from runtime.front.gateway import Gateway
from runtime.stream import Stream, VideoStreamHandler
from tests.conftest import async_wait_until
from workers.handlers import AdditionalOutputs

ON_SESSION_LOOP = pytest.mark.asyncio(loop_scope="session")  # the gateways' fixtures live there

FPS = 5.0
CLIENT_FPS = 30
WINDOW_S = 4.0  # calls are counted over this long, once the stream runs
# 5 calls a second; the bounds leave room for a loaded 2-core machine while ruling out both
# "every frame" (~30/s) and "stalled"
MIN_CALLS_PER_S, MAX_CALLS_PER_S = 2.5, 7.0
START_TIMEOUT_S = 60.0


def stamp_invert(frame: np.ndarray):
    """The frame inverted, and when this call ran (monotonic is one clock per host)."""
    return 255 - frame, AdditionalOutputs(time.monotonic())


def test_add_stream_and_stream_take_a_video_stream_handler():
    handler = VideoStreamHandler(stamp_invert, fps=FPS)
    gw = Gateway()
    event = gw.add_stream(handler, event_id="vsh")
    assert event.handler is handler and event.stream_every is None  # the worker applies fps
    stream = Stream(VideoStreamHandler(stamp_invert), stream_id="vsh-2")
    assert isinstance(stream.event.handler, VideoStreamHandler)


@ON_SESSION_LOOP
async def test_a_video_stream_handler_runs_at_its_fps_and_its_frames_come_back(make_gateway):
    calls: list = []
    with make_gateway(
        lambda gw: gw.add_stream(VideoStreamHandler(stamp_invert, fps=FPS), event_id="vsh-e2e")
    ) as served:
        client = Client(served.url, fps=CLIENT_FPS, size=(320, 240))
        await client.connect()
        assert await async_wait_until(lambda: client.first_frame.is_set(), START_TIMEOUT_S), (
            client.messages
        )

        async def hook() -> None:
            served.gateway.sessions[client.webrtc_id].on_outputs.append(calls.append)

        await asyncio.to_thread(served.run, hook())
        sent_before, start = client.source.count, time.monotonic()
        await asyncio.sleep(WINDOW_S)
        end = time.monotonic()
        sent = client.source.count - sent_before
        last = client.frames[-1].copy() if client.frames else None
        await client.close()
    assert sent / WINDOW_S > CLIENT_FPS / 2, f"the client sent only {sent} frames in {WINDOW_S} s"
    in_window = [c[0] for c in calls if start <= c[0] < end]
    rate = len(in_window) / WINDOW_S
    assert MIN_CALLS_PER_S <= rate <= MAX_CALLS_PER_S, (
        f"{len(in_window)} calls in {WINDOW_S} s at fps={FPS}"
    )
    # the frame shown is one the function inverted: inverted back, its counter is one the
    # client painted (the counter's mark survives inversion, its value does not)
    assert last is not None
    counter = read_counter(255 - last)
    assert counter is not None and counter <= client.source.count, counter
