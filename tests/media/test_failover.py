"""A worker that dies under a session: the session goes on (docs/failover.md).

Real processes throughout: the session's worker is killed with SIGKILL mid-stream, the same
aiortc peer connection keeps receiving processed frames from a fresh worker, the handler's
counter continues from its last snapshot, the stream's concurrency_limit holds while the
replacement starts, and a handler that kills every worker it gets ends its session after
``pool.max_restarts``. Nothing leaks: slots, segments.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from runtime.clients.webrtc import Client, ServerFull
from tests.conftest import async_wait_until, serve_gateway, shm_segments
from workers.link.wire import unpackb

pytestmark = pytest.mark.asyncio(loop_scope="session")

FIRST_FRAME_S = 30.0
TAKEOVER_S = 30.0  # a worker start on a busy 2-core box (the pool's pre-warmed one is quicker)
RELEASE_S = 15.0
FRAMES_AFTER = 15  # processed frames the same peer connection must get from the new worker
SNAPSHOT_INTERVAL_S = 0.2
BLUE_MIN = 200  # the handler sets blue to 255; VP8's chroma keeps it far above the source's


class Counter:
    """A frame handler with state worth keeping: the frames it has seen."""

    def __init__(self) -> None:
        self.frames = 0

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        self.frames += 1
        out = frame.copy()
        out[..., 2] = 255
        return out

    def snapshot(self) -> int:
        return self.frames

    def restore(self, value: int) -> None:
        self.frames = int(value)


class Leaky:
    """Holds on to memory for its first frames (a model cache that grows), then keeps the
    frame count: a worker that takes over restores the count and leaks no more."""

    def __init__(self) -> None:
        self.frames = 0
        self.kept: list[np.ndarray] = []

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        self.frames += 1
        if self.frames <= LEAK_FRAMES:
            self.kept.append(np.ones(LEAK_BYTES_PER_FRAME, np.uint8))  # touched: resident
        out = frame.copy()
        out[..., 2] = 255
        return out

    def snapshot(self) -> int:
        return self.frames

    def restore(self, value: int) -> None:
        self.frames = int(value)


LEAK_FRAMES = 60
LEAK_BYTES_PER_FRAME = 20 << 20  # 1.2 GB in all: far past the limit below, over ~2 s at 30 fps
LEAK_HEADROOM_MB = 250  # the limit, above what an idle worker holds
BASELINE_CAP_MB = 600  # an idle worker holds less (~300 MB: Ray, numpy, PyAV, OpenCV)


def crash(frame: np.ndarray) -> np.ndarray:
    """A native model's segfault, as a handler sees it: its process is gone at once."""
    os.kill(os.getpid(), signal.SIGKILL)
    return frame


@contextlib.contextmanager
def failover_app(handler: Any, event_id: str, modality: str = "video", **pool: Any) -> Iterator[Any]:
    from runtime.config_loader import load_config
    from runtime.front.gateway import Gateway

    config = load_config(
        overrides={
            "gateway": {"ice_host_addresses": ["127.0.0.1"]},
            "pool": {"snapshot_interval_s": SNAPSHOT_INTERVAL_S, **pool},
        }
    )
    gw = Gateway(config)
    gw.add_stream(handler, event_id=event_id, modality=modality, concurrency_limit=1, queue=False)
    with serve_gateway(gw) as served:
        yield served


async def connected(url: str) -> Client:
    client = Client(url)
    await client.connect()
    await asyncio.wait_for(client.first_frame.wait(), FIRST_FRAME_S)
    return client


def saved(session: Any) -> int | None:
    return None if session.snapshot is None else int(unpackb(session.snapshot))


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_a_killed_worker_is_replaced_and_the_same_peer_connection_streams_on_with_its_state(ray_session: Any) -> None:
    segments = shm_segments()
    # one spare: the pool keeps a warm worker beyond the full stream's limit for the takeover
    with failover_app(Counter(), "failover-counter", spare_workers=1) as served:
        client = await connected(served.url)
        session = served.gateway.sessions[client.webrtc_id]
        warnings: list[str] = []
        client.on_message.append(lambda m: warnings.append(str(m.get("message"))) if m.get("type") == "warning" else None)
        errors: list[Any] = []
        client.on_message.append(lambda m: errors.append(m) if m.get("type") in ("error", "end_stream") else None)
        assert await async_wait_until(lambda: (saved(session) or 0) >= 10, 15), "no snapshot of the handler's count"
        old_pid, before = session.worker_pid, saved(session)
        assert before is not None
        spares = await async_wait_until(
            lambda: {w["pid"] for w in served.status()["events"]["failover-counter"]["workers"] if not w["busy"]}, 30
        )
        assert spares, "no spare worker beside the full stream's busy one"

        os.kill(old_pid, signal.SIGKILL)
        # its slot is the session's throughout: a second client is refused, not served by
        # the worker starting for the first (concurrency_limit 1)
        with pytest.raises(ServerFull):
            await Client(served.url).connect()
        assert served.leases() == 1

        assert await async_wait_until(lambda: any("restarted" in w for w in warnings), TAKEOVER_S), warnings
        assert session.worker_pid != old_pid and session.worker_pid in spares, "the takeover was not the warm spare"
        assert sum("restarted" in w for w in warnings) == 1, warnings
        # the same peer connection: processed (blue) frames again, from the new worker
        received = client.report.received
        assert await async_wait_until(lambda: client.report.received >= received + FRAMES_AFTER, FIRST_FRAME_S)
        assert client.frames[-1][..., 2].mean() > BLUE_MIN
        # the handler's count went on from the last snapshot, not from zero
        last = session.snapshot
        assert await async_wait_until(lambda: session.snapshot != last, 10), "the new worker sent no snapshot"
        assert (saved(session) or 0) > before, f"restored count {saved(session)} did not continue from {before}"
        assert not errors, errors
        assert client.webrtc_id in served.gateway.sessions and not session.closed

        async with httpx.AsyncClient() as http:
            text = (await http.get(served.url + "/metrics")).text
        assert metric(text, 'rtcpool_failovers_total{cause="worker_died"}') == 1
        assert metric(text, "rtcpool_snapshots_total") >= 2
        assert metric(text, "rtcpool_failover_seconds_count") == 1

        await client.close()
        assert await async_wait_until(lambda: served.leases() == 0 and not served.gateway.sessions, RELEASE_S)
    assert await async_wait_until(lambda: shm_segments() == segments, RELEASE_S), "segments left behind"


async def test_a_worker_past_its_memory_limit_hands_its_session_to_a_fresh_one(ray_session: Any) -> None:
    # the limit: about what an idle worker holds here (this process imports as much), plus
    # headroom the leak passes
    from workers.process.session import rss_mb

    limit = min(rss_mb(), BASELINE_CAP_MB) + LEAK_HEADROOM_MB
    with failover_app(Leaky(), "failover-memory", worker_memory_limit_mb=limit) as served:
        client = await connected(served.url)
        session = served.gateway.sessions[client.webrtc_id]
        old_pid = session.worker_pid
        warnings: list[str] = []
        client.on_message.append(lambda m: warnings.append(str(m.get("message"))) if m.get("type") == "warning" else None)
        assert await async_wait_until(lambda: any("memory limit" in w for w in warnings), TAKEOVER_S), warnings
        assert session.worker_pid != old_pid and not session.closed
        received = client.report.received
        assert await async_wait_until(lambda: client.report.received >= received + FRAMES_AFTER, FIRST_FRAME_S)
        assert client.frames[-1][..., 2].mean() > BLUE_MIN
        assert not any(m.get("type") in ("error", "end_stream") for m in client.messages), client.messages
        async with httpx.AsyncClient() as http:
            text = (await http.get(served.url + "/metrics")).text
        assert metric(text, 'rtcpool_failovers_total{cause="worker_memory"}') == 1
        assert metric(text, 'rtcpool_failovers_total{cause="worker_died"}') == 0
        await client.close()
        assert await async_wait_until(lambda: served.leases() == 0 and not served.gateway.sessions, RELEASE_S)


async def test_a_handler_that_kills_every_worker_ends_its_session_after_max_restarts(ray_session: Any) -> None:
    with failover_app(crash, "failover-crash", max_restarts=1) as served:
        client = Client(served.url)
        await client.connect()
        ended = await client.wait_message("end_stream", TAKEOVER_S * 2)
        assert ended["data"]["reason"] == "worker_failed"
        assert await async_wait_until(lambda: served.leases() == 0 and not served.gateway.sessions, RELEASE_S)
        async with httpx.AsyncClient() as http:
            text = (await http.get(served.url + "/metrics")).text
        assert metric(text, "rtcpool_restarts_refused_total") == 1
        assert metric(text, 'rtcpool_failovers_total{cause="worker_died"}') == 1  # the one restart it had
        assert metric(text, 'rtcpool_sessions_ended_total{reason="crash_loop"}') == 1
        await client.close()


class Conversation:
    """A ReplyOnPause function that keeps its conversation (turns so far) and opts in to
    failover with snapshot()/restore(): ReplyOnPause saves it after every reply."""

    def __init__(self) -> None:
        self.turns = 0

    def __call__(self, audio: Any) -> Any:
        from tests.media.test_voice_e2e import REPLY_HZ, REPLY_S, chunks

        self.turns += 1
        yield from chunks(REPLY_S, REPLY_HZ)

    def snapshot(self) -> int:
        return self.turns

    def restore(self, value: int) -> None:
        self.turns = int(value)


REPLY_WAIT_S = 60.0  # an utterance, its pause and the reply, on a busy box (CI: 30 s was missed once)


async def test_a_reply_on_pause_conversation_goes_on_after_its_worker_is_killed(ray_session: Any) -> None:
    from runtime.clients.webrtc import AUDIO_RATE
    from tests.media.test_voice_e2e import FIRST, GAP_S, LEAD_S
    from tests.speech import compose
    from workers.voice.reply_on_pause import ReplyOnPause

    speech = compose([LEAD_S, FIRST, GAP_S], sample_rate=AUDIO_RATE)  # looped: one utterance after another
    with failover_app(ReplyOnPause(Conversation()), "failover-voice", modality="audio") as served:
        client = Client(served.url, modality="audio", audio=speech.samples, audio_loop=True)
        await client.connect()
        assert await async_wait_until(lambda: (s := served.gateway.sessions.get(client.webrtc_id)) is not None and (saved(s) or 0) >= 1, REPLY_WAIT_S)
        session = served.gateway.sessions[client.webrtc_id]
        turns = saved(session) or 0
        heard_before = len(client.audio_received)
        os.kill(session.worker_pid, signal.SIGKILL)
        assert await async_wait_until(lambda: any("saved state" in str(m.get("message")) for m in client.messages), TAKEOVER_S), client.messages
        # the next reply is the conversation's next turn: the new worker restored the ones before
        # (a fresh copy would count from 1 again, and send that)
        assert await async_wait_until(lambda: (saved(session) or 0) > turns, REPLY_WAIT_S), f"turns {saved(session)}, {turns} before"
        # and it was heard: reply tone after the kill
        from tests.media.test_voice_e2e import LOUD_RMS, bursts, frame_rms

        assert await async_wait_until(lambda: bursts(frame_rms(client)[heard_before:] > LOUD_RMS), REPLY_WAIT_S)
        assert not any(m.get("type") in ("error", "end_stream") for m in client.messages), client.messages
        await client.close()
        assert await async_wait_until(lambda: served.leases() == 0 and not served.gateway.sessions, RELEASE_S)
