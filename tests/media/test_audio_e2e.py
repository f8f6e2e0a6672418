"""Audio through the whole path: Opus in, worker StreamHandler, paced audio out."""

from __future__ import annotations

import asyncio
import time
from collections import deque

import numpy as np
import pytest

from runtime.clients.webrtc import AUDIO_RATE, Client
from tests.conftest import async_wait_until
from tests.echo import chirp, find_echo
from workers.handlers import AsyncStreamHandler, StreamHandler

pytestmark = pytest.mark.asyncio(loop_scope="session")

FRAME_SAMPLES = AUDIO_RATE // 50  # 20 ms
TONE_RMS_THRESHOLD = 3000.0  # a 20 ms frame of the tone below (RMS ~6950) is louder than this
TONE_LENGTH_TOLERANCE_S = 0.1  # the tone's edges fall inside frames


class DequeEcho(StreamHandler):
    """The seed's EchoHandler, with a deque so it also travels to workers by value."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: deque = deque()

    def receive(self, frame):
        self.frames.append(frame)

    def emit(self):
        return self.frames.popleft() if self.frames else None

    def copy(self):
        return DequeEcho()


class AsyncEcho(AsyncStreamHandler):
    def __init__(self) -> None:
        super().__init__(input_sample_rate=24_000)
        self.queue: asyncio.Queue | None = None

    async def receive(self, frame):
        if self.queue is None:
            self.queue = asyncio.Queue()
        await self.queue.put(frame)

    async def emit(self):
        if self.queue is None:
            return None
        return await self.queue.get()

    def copy(self):
        return AsyncEcho()


def tone_generator(seconds: float):
    """Server-to-client audio: a 440 Hz tone in 100 ms chunks, as fast as Python can."""
    t = np.arange(int(AUDIO_RATE * 0.1)) / AUDIO_RATE
    chunk = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)[None, :]
    for _ in range(int(seconds / 0.1)):
        yield (AUDIO_RATE, chunk)


@pytest.mark.parametrize("handler", [DequeEcho(), AsyncEcho()], ids=["sync", "async"])
async def test_echo_handler_returns_the_same_audio(make_gateway, handler):
    eid = f"audio-echo-{type(handler).__name__}"
    with make_gateway(lambda gw: gw.add_stream(handler, event_id=eid, modality="audio")) as served:
        sent = np.concatenate([np.zeros(AUDIO_RATE // 2, np.int16), chirp(), np.zeros(AUDIO_RATE, np.int16)])
        client = Client(served.url, modality="audio", audio=sent)
        await client.connect()
        await asyncio.sleep(len(sent) / AUDIO_RATE + 1.5)
        heard = client.received_audio()
        await client.close()
    assert len(heard) > AUDIO_RATE, "no audio came back"
    echo = find_echo(heard, chirp())
    assert not echo.problems(), f"the echo does not carry what was sent: {echo.problems()}"


async def test_receive_mode_generator_is_paced_to_real_time(make_gateway):
    seconds = 3.0
    with make_gateway(
        lambda gw: gw.add_stream(tone_generator, event_id="audio-gen", mode="receive", modality="audio", initial_args=[seconds])
    ) as served:
        client = Client(served.url, mode="receive", modality="audio")
        await client.connect()
        start = time.monotonic()
        ended = await async_wait_until(lambda: client.ended.is_set(), seconds + 15)
        wall = time.monotonic() - start
        heard = client.received_audio()
        await client.close()
    assert ended, f"the stream did not end after the generator finished: {client.messages}"
    assert any(m.get("type") == "end_stream" for m in client.messages)
    # the generator ending is the stream's normal end, not a worker failure
    assert not [m for m in client.messages if m.get("type") == "error"], client.messages
    assert [m["data"]["reason"] for m in client.messages if m.get("type") == "end_stream"] == ["stream_finished"]
    # the tone's length as heard: 20 ms frames at the tone's level (its RMS is ~6950)
    n = len(heard) // FRAME_SAMPLES
    rms = np.sqrt(np.mean(heard[: n * FRAME_SAMPLES].astype(np.float64).reshape(n, FRAME_SAMPLES) ** 2, axis=1))
    tone_s = float((rms > TONE_RMS_THRESHOLD).sum()) * FRAME_SAMPLES / AUDIO_RATE
    # all of it, and none cut at the end: the stream ends once its audio has played out
    assert abs(tone_s - seconds) <= TONE_LENGTH_TOLERANCE_S, f"heard {tone_s:.2f} s of a {seconds} s tone"
    # the generator could produce 3 s of audio in milliseconds: it must play out in real time
    assert wall >= seconds * 0.95, f"{seconds} s of audio arrived in {wall:.2f} s"
    spectrum = np.abs(np.fft.rfft(heard.astype(np.float64)))
    peak_hz = np.argmax(spectrum) * AUDIO_RATE / (2 * (len(spectrum) - 1))
    assert abs(peak_hz - 440) < 10, f"heard a peak at {peak_hz:.0f} Hz"
