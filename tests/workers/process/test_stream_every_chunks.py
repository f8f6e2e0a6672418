"""stream_every for an audio function, in a real Worker of this process over a real link:
the function gets consecutive chunks of exactly ``stream_every`` seconds, each the audio as
sent, cut at the same places whatever the size of the frames it came in."""

from __future__ import annotations

import select
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from tests.workers.harness import WAIT_S
from tests.workers.link.blocking import connect_worker
from workers.handlers import AdditionalOutputs
from workers.link.channel import FrameChannel
from workers.link.shm import Geometry
from workers.link.wire import SLOT_HEADER_BYTES, Control, Hello, Outputs
from workers.process.actor import Worker

RATE = 48_000
EVERY_S = 0.25
CHUNK = int(RATE * EVERY_S)
GEOMETRY = Geometry(
    video_slots=2,
    video_slot_bytes=SLOT_HEADER_BYTES + 16 * 16 * 3,
    audio_slots=8,
    audio_slot_bytes=SLOT_HEADER_BYTES + 4800 * 2,
)


def give_back(audio: tuple[int, np.ndarray]) -> AdditionalOutputs:
    rate, samples = audio
    return AdditionalOutputs(rate, samples)


@pytest.fixture
def worker(make_worker: Callable[..., Worker]) -> Worker:
    return make_worker(give_back, stream_every=EVERY_S)


def open_session(worker: Worker, controls: list[Control]) -> FrameChannel:
    hello = Hello(uuid.uuid4().hex, "", "", "send", "audio", token=getattr(worker, "token", ""))
    ch, _ready = connect_worker(
        worker.endpoint, hello, WAIT_S, GEOMETRY, on_control=controls.append
    )
    return ch


def pump(ch: FrameChannel, timeout: float = 0.02) -> None:
    select.select([ch.sock], [ch.sock] if ch.has_backlog else [], [], timeout)
    ch.pump()
    if ch.has_backlog:
        ch.flush()


def send_all(ch: FrameChannel, audio: np.ndarray, frame: int) -> None:
    """``audio`` in frames of ``frame`` samples, each as soon as a slot is free."""
    deadline = time.monotonic() + WAIT_S
    for i in range(0, audio.shape[1], frame):
        while not ch.send_audio(audio[:, i : i + frame], RATE):
            assert time.monotonic() < deadline, "the worker stopped taking audio"
            pump(ch)


@pytest.mark.parametrize("frame", [960, 441, 4800], ids=["20ms", "odd", "100ms"])
def test_audio_function_gets_consecutive_chunks_of_exactly_stream_every(
    worker: Worker, frame: int
) -> None:
    controls: list[Control] = []
    ch = open_session(worker, controls)
    chunks = 5
    # a ramp: any lost, repeated or reordered sample shows
    audio = (np.arange(chunks * CHUNK + CHUNK // 2) % 30_000).astype(np.int16)[None, :]
    send_all(ch, audio, frame)
    deadline = time.monotonic() + WAIT_S
    while sum(isinstance(m, Outputs) for m in controls) < chunks and time.monotonic() < deadline:
        pump(ch)
    time.sleep(EVERY_S)  # the half chunk left over must not come out as a short chunk
    pump(ch)
    ch.close("test done")
    got: list[Any] = [m.values for m in controls if isinstance(m, Outputs)]
    assert len(got) == chunks, f"{len(got)} chunks for {chunks} * {EVERY_S} s of audio"
    for i, (rate, samples) in enumerate(got):
        assert rate == RATE
        assert samples.shape == (1, CHUNK) and samples.dtype == np.int16
        np.testing.assert_array_equal(samples, audio[:, i * CHUNK : (i + 1) * CHUNK])
