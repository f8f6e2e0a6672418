"""A real aiortc client against a real gateway, with handlers in real Ray worker processes."""

from __future__ import annotations

import asyncio
import os

import cv2
import httpx
import numpy as np
import pytest

from runtime.clients.webrtc import Client, read_counter
from runtime.media.video_codecs import VideoCodec
from tests.conftest import async_wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")


def invert(frame: np.ndarray) -> np.ndarray:
    return 255 - frame


def report_pid(frame: np.ndarray) -> np.ndarray:
    """Writes this process's pid into the first row so the test can read where it ran."""
    out = frame.copy()
    pid = os.getpid()
    out[100:140, : 32 * 20] = 0
    for i in range(32):
        if (pid >> i) & 1:
            out[100:140, i * 20 : i * 20 + 20] = 255
    return out


def read_pid(frame: np.ndarray) -> int:
    return sum(1 << i for i in range(32) if frame[110:130, i * 20 + 5 : i * 20 + 15].mean() > 128)


@pytest.fixture(scope="module")
def invert_app(make_gateway):
    with make_gateway(lambda gw: gw.add_stream(invert, event_id="e2e-invert", concurrency_limit=2)) as served:
        yield served


@pytest.mark.parametrize(
    ("codec", "size", "negotiated"),
    [
        (None, (640, 480), VideoCodec.H264),  # the client offers both: gateway.video_codecs picks H.264
        ("vp8", (640, 480), VideoCodec.VP8),
        ("h264", (322, 242), VideoCodec.H264),  # not whole macroblocks: the SPS crops
        ("h264", (321, 241), VideoCodec.H264),  # odd: coded at the even size under it
        ("vp8", (321, 241), VideoCodec.VP8),
    ],
    ids=["default-h264", "vp8", "h264-cropped", "h264-odd", "vp8-odd"],
)
async def test_frames_come_back_inverted(invert_app, codec, size, negotiated):
    client = Client(invert_app.url, codec=codec, size=size)
    await client.connect()
    await asyncio.wait_for(client.first_frame.wait(), 30)
    assert client.video_codec is negotiated
    sent = client.source.base

    def errors() -> tuple[float, float]:
        got = client.frames[-1].astype(int)
        height, width = got.shape[:2]
        expected = cv2.resize(sent, (width, height), interpolation=cv2.INTER_AREA).astype(int)
        region = (slice(height // 8, height - 20), slice(20, width - 20))  # below the counter strip
        return float(np.abs(got[region] - (255 - expected[region])).mean()), float(np.abs(got[region] - expected[region]).mean())

    # the encoders start at a low bitrate and sharpen within a second or two: wait for a good frame
    await async_wait_until(lambda: client.report.received > 10 and errors()[0] < 12, 15)
    err, same = errors()
    shape = client.frames[-1].shape[:2]
    report = await client.close()
    assert report.received > 10
    assert err < 12, f"received frame is not the inverse (mean error {err:.1f})"
    assert same > 60, "received frame looks unprocessed"
    # VP8 codes any size; 4:2:0 H.264 an even one
    assert shape == ((size[1] & ~1, size[0] & ~1) if negotiated is VideoCodec.H264 else (size[1], size[0]))


async def test_handler_runs_in_another_process(make_gateway):
    with make_gateway(lambda gw: gw.add_stream(report_pid, event_id="e2e-pid")) as served:
        client = Client(served.url)
        await client.connect()
        await asyncio.wait_for(client.first_frame.wait(), 30)
        await asyncio.sleep(0.5)
        pid = read_pid(client.frames[-1])
        await client.close()
        workers = served.status()["events"]["e2e-pid"]["workers"]
    assert pid != os.getpid()
    assert pid in {w["pid"] for w in workers}


async def test_counter_survives_identity_round_trip(make_gateway):
    with make_gateway(lambda gw: gw.add_stream(lambda f: f, event_id="e2e-identity")) as served:
        client = Client(served.url)
        await client.connect()
        await asyncio.wait_for(client.first_frame.wait(), 30)
        await asyncio.sleep(1.0)
        assert read_counter(client.frames[-1]) is not None
        report = await client.close()
    assert report.marked > 10
    assert report.percentile(50) is not None


async def _sessions(url: str) -> list[dict]:
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{url}/webrtc/sessions")
    assert r.status_code == 200
    return r.json()


@pytest.mark.parametrize("transport", ["auto", "tcp"])
async def test_the_link_to_the_worker_in_either_form(make_gateway, transport):
    """auto: the worker shares this node, so shared memory; tcp: forced, as for a worker on
    another node (tests/cluster runs a real second node). Frames come back processed either way."""
    event_id = f"e2e-link-{transport}"
    with make_gateway(lambda gw: gw.add_stream(invert, event_id=event_id), transport=transport) as served:
        client = Client(served.url)
        await client.connect()
        await asyncio.wait_for(client.first_frame.wait(), 30)
        sent = client.source.base.astype(int)
        region = (slice(60, 460), slice(20, 620))

        def error() -> float:
            return float(np.abs(client.frames[-1].astype(int)[region] - (255 - sent[region])).mean())

        await async_wait_until(lambda: client.report.received > 10 and error() < 12, 15)
        sessions = await _sessions(served.url)
        assert error() < 12
        assert [(s["event_id"], s["transport"], s["video_codec"]) for s in sessions] == [(event_id, "tcp" if transport == "tcp" else "shm", "h264")]
        assert "webrtc_id" not in sessions[0]
        await client.close()
        assert await async_wait_until(lambda: served.leases() == 0, 10)
        assert await _sessions(served.url) == []


def invert_below_counter(frame: np.ndarray) -> np.ndarray:
    out = frame.copy()
    out[COUNTER_STRIP_ROWS:] = 255 - out[COUNTER_STRIP_ROWS:]  # the counter comes back as sent
    return out


COUNTER_STRIP_ROWS = 40  # the client paints its counter in the rows above (mark_block(640) = 16)


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_a_replaying_client_is_served_like_a_live_one(make_gateway, codec):
    """The load generator's pre-encoded source (runtime.clients.webrtc.ReplayVideoTrack): the stream
    decodes at the gateway across the cycle's restart, comes back processed, and its
    counters give latencies."""
    cycle = 45  # 1.5 s at 30 fps: the test sees it wrap
    with make_gateway(lambda gw: gw.add_stream(invert_below_counter, event_id=f"e2e-replay-{codec}")) as served:
        client = Client(served.url, replay=cycle, codec=codec)
        await client.connect()
        assert client.video_codec == codec
        await asyncio.wait_for(client.first_frame.wait(), 30)
        sent = client.source.base.astype(int)
        region = (slice(60, 460), slice(20, 620))
        assert await async_wait_until(lambda: client.source.count > 2 * cycle, 30)
        error = float(np.abs(client.frames[-1].astype(int)[region] - (255 - sent[region])).mean())
        report = await client.close()
    assert error < 12, f"the frame is not the inverse of the replayed picture ({error:.1f})"
    assert report.marked > cycle, "counters past the cycle's restart were not read back"
    assert report.percentile(50) is not None and report.percentile(50) < 1000 * cycle / 30


async def test_a_dead_scheduler_is_replaced_and_the_next_offer_served(make_gateway):
    """The scheduler actor dies (its process, or the head node's): the next offer finds a
    new one, with this gateway's streams registered again, instead of a 503 forever."""
    import ray

    with make_gateway(lambda gw: gw.add_stream(invert, event_id="e2e-scheduler-dies")) as served:
        dead = served.gateway.scheduler
        ray.kill(dead, no_restart=True)
        client = Client(served.url)
        await client.connect()
        await asyncio.wait_for(client.first_frame.wait(), 60)
        assert served.gateway.scheduler is not dead
        assert "e2e-scheduler-dies" in served.status()["events"]
        assert served.leases() == 1
        await client.close()
        assert await async_wait_until(lambda: served.leases() == 0, 10)
