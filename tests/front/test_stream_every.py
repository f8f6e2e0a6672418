"""``stream_every`` through the whole stack (real aiortc client, real local Ray).

As in Gradio's streaming inputs, ``stream_every`` is how often a plain function takes input:
a video function runs about once per period on the newest frame, however fast the camera
sends; an audio function gets chunks of exactly ``stream_every`` seconds.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import numpy as np
import pytest

from runtime.clients.webrtc import AUDIO_RATE, Client
from runtime.front.gateway import Gateway
from tests.conftest import async_wait_until
from tests.echo import chirp
from workers.handlers import AdditionalOutputs

ON_SESSION_LOOP = pytest.mark.asyncio(loop_scope="session")  # the gateways' fixtures live there

EVERY_S = 0.5
WINDOW_S = 4.0  # calls are counted over this long, once the stream runs
CLIENT_FPS = 30
# one call per 0.5 s is 2 a second; the bounds leave room for a loaded 2-core machine while
# ruling out both "every frame" (~30/s) and "stalled"
MIN_CALLS_PER_S, MAX_CALLS_PER_S = 1.0, 3.0
# the frame a call gets is the newest one: sent a frame or two before the call, so it comes
# back well within a period. A frame that had waited at the worker since the previous call
# would come back a whole period (plus the round trip) after the client sent it.
MAX_MEDIAN_LATENCY_MS = 0.6 * EVERY_S * 1000
START_TIMEOUT_S = 60.0


def stamp_call(frame: np.ndarray):
    """The frame as it came, and when this call ran (monotonic is one clock per host)."""
    return frame, AdditionalOutputs(time.monotonic())


def chunk_shape(audio: tuple[int, np.ndarray]):
    rate, samples = audio
    return AdditionalOutputs(
        time.monotonic(), rate, list(samples.shape), str(samples.dtype), int(np.abs(samples).max())
    )


def collect(served, webrtc_id: str, into: list) -> None:
    """Record the session's AdditionalOutputs as they reach the gateway."""

    async def hook() -> None:
        served.gateway.sessions[webrtc_id].on_outputs.append(into.append)

    served.run(hook())


@ON_SESSION_LOOP
async def test_video_function_runs_once_per_period_on_the_newest_frame(make_gateway):
    calls: list = []
    with make_gateway(
        lambda gw: gw.add_stream(stamp_call, event_id="every-video", stream_every=EVERY_S)
    ) as served:
        client = Client(served.url, fps=CLIENT_FPS, size=(320, 240))
        await client.connect()
        assert await async_wait_until(lambda: client.first_frame.is_set(), START_TIMEOUT_S), (
            client.messages
        )
        await asyncio.to_thread(collect, served, client.webrtc_id, calls)
        client.report.latencies_ms.clear()
        sent_before, start = client.source.count, time.monotonic()
        await asyncio.sleep(WINDOW_S)
        end = time.monotonic()
        sent = client.source.count - sent_before
        latencies = list(client.report.latencies_ms)
        await client.close()
    in_window = [c[0] for c in calls if start <= c[0] < end]
    rate = len(in_window) / WINDOW_S
    assert sent / WINDOW_S > CLIENT_FPS / 2, f"the client sent only {sent} frames in {WINDOW_S} s"
    assert MIN_CALLS_PER_S <= rate <= MAX_CALLS_PER_S, (
        f"{len(in_window)} calls in {WINDOW_S} s with stream_every={EVERY_S}"
    )
    # every call's frame came back (the track holds it until the next), and fresh
    assert latencies, "no processed frame came back with a readable counter"
    assert statistics.median(latencies) < MAX_MEDIAN_LATENCY_MS, f"latencies {sorted(latencies)} ms"


@ON_SESSION_LOOP
async def test_audio_function_gets_chunks_of_exactly_stream_every_seconds(make_gateway):
    chunks: list = []
    audio = np.tile(chirp(), 4)  # ~6 s of sound, looped by the client
    with make_gateway(
        lambda gw: gw.add_stream(
            chunk_shape, event_id="every-audio", mode="send", modality="audio", stream_every=EVERY_S
        )
    ) as served:
        client = Client(served.url, mode="send", modality="audio", audio=audio, audio_loop=True)
        await client.connect()
        assert await async_wait_until(
            lambda: served.gateway.sessions.get(client.webrtc_id) is not None, START_TIMEOUT_S
        )
        await asyncio.to_thread(collect, served, client.webrtc_id, chunks)
        assert await async_wait_until(lambda: len(chunks) >= 2, START_TIMEOUT_S), client.messages
        first = len(chunks)
        start = time.monotonic()
        await asyncio.sleep(WINDOW_S)
        got = chunks[first:]
        elapsed = time.monotonic() - start
        await client.close()
    want = int(EVERY_S * AUDIO_RATE)
    assert all(c[1] == AUDIO_RATE for c in chunks)
    assert all(c[2] == [1, want] and c[3] == "int16" for c in chunks), {tuple(c[2]) for c in chunks}
    assert all(c[4] > 1000 for c in chunks), (
        "a chunk is silent: the chirp did not reach the function"
    )
    # the chunks keep pace with real time: one per period, none lost or doubled
    assert abs(len(got) - elapsed / EVERY_S) <= 2, f"{len(got)} chunks in {elapsed:.2f} s"


@pytest.mark.parametrize("bad", [0, -0.5, float("nan"), float("inf"), True, "1"])
def test_bad_stream_every_is_refused_at_registration(bad):
    gw = Gateway()
    with pytest.raises(ValueError, match="stream_every"):
        gw.add_stream(stamp_call, stream_every=bad)
    assert not gw.events
