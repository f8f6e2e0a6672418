"""StreamHandler and AsyncStreamHandler sessions in a real Worker, driven over a real link:
how inputs reach a handler that asks for them, what a session's end does to threads left
blocked in a handler, interruption of paced audio, errors in async handlers, and the pace of
server-generated video.

Handlers whose failure would make the worker call os._exit run in a worker subprocess.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import wait_until
from tests.workers.harness import FRAME, RATE, WAIT_S, Link, link
from tests.workers.process.worker_process import worker_process_fixture
from workers.handlers import AdditionalOutputs, AsyncStreamHandler, StreamHandler
from workers.link.wire import (
    Args,
    ClearAudio,
    Error,
    Message,
    Outputs,
)
from workers.process.session import MAX_PARKED_THREADS

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.usefixtures("no_leaked_segments")


class WaitsInStartUp(StreamHandler):
    """Asks for the inputs in start_up() (fastrtc apps do) and reports what it got."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] | None = None
        self.sent = False

    def copy(self) -> WaitsInStartUp:
        return WaitsInStartUp()

    def start_up(self) -> None:
        self.wait_for_args_sync()
        self.seen = list(self.latest_args[1:])

    def receive(self, frame: Any) -> None:
        pass

    def emit(self) -> Any:
        if self.seen is None or self.sent:
            return None
        self.sent = True
        return AdditionalOutputs(self.seen)


class SeedAsync(AsyncStreamHandler):
    """The user guide's Gemini handler with the model replaced: emit() starts its generator
    only when it finds args_set clear, then returns what the generator queues."""

    def __init__(self) -> None:
        super().__init__("mono", 24_000, 480, input_sample_rate=16_000)
        self.output_queue: asyncio.Queue = asyncio.Queue()

    def copy(self) -> SeedAsync:
        return SeedAsync()

    async def receive(self, frame: Any) -> None:
        pass

    async def generator(self) -> None:
        key = self.latest_args[1]
        for _ in range(10):
            self.output_queue.put_nowait(np.full((1, 480), len(key), np.int16))
            await asyncio.sleep(0.005)

    async def emit(self) -> Any:
        if not self.args_set.is_set():
            await self.wait_for_args()
            asyncio.create_task(self.generator())
        array = await self.output_queue.get()
        return (self.output_sample_rate, array)


class FailingAsync(AsyncStreamHandler):
    """receive() raises on a frame of 7s, emit() on its first call; both go on afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.calls = 0

    def copy(self) -> FailingAsync:
        return FailingAsync()

    async def receive(self, frame: Any) -> None:
        _, array = frame
        if int(array[0, 0]) == 7:
            raise ValueError("receive saw a 7")
        self.queue.put_nowait(array)

    async def emit(self) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("first emit fails")
        return (RATE, await self.queue.get())


class Lifecycle(StreamHandler):
    """start_up() and shutdown() run once per session, each on a fresh copy; messages from
    the handler reach the client's data channel."""

    def __init__(self) -> None:
        super().__init__()
        self.started = False
        self.said = False
        self.tag = uuid.uuid4().hex  # which copy this is (an id() could be reused)

    def copy(self) -> Lifecycle:
        return Lifecycle()

    def start_up(self) -> None:
        self.started = True
        self.send_message_sync("started")

    def receive(self, frame: Any) -> None:
        pass

    def emit(self) -> Any:
        if self.started and not self.said:
            self.said = True
            self.send_message_sync({"copy": self.tag}, "log")
        return None

    def shutdown(self) -> None:
        # a worker-side effect the test can see: a file named after this copy
        Path(os.environ["LIFECYCLE_DIR"], f"shutdown-{self.tag}").touch()


CUT_MARK = 11  # an input frame of this value makes the handler interrupt its own reply
LONG_REPLY_S = 12.0


class InterruptsItself(StreamHandler):
    """Replies with LONG_REPLY_S of 1s; a CUT_MARK frame interrupts it (clear_audio, as
    ReplyOnPause does when the speaker starts again), then the reply is 2s."""

    def __init__(self) -> None:
        super().__init__(output_sample_rate=RATE)
        # a deque, not a Queue: the handler travels to the worker by value (a Queue's locks
        # do not pickle)
        self.queue: deque = deque([np.ones((1, int(LONG_REPLY_S * RATE)), np.int16)])

    def copy(self) -> InterruptsItself:
        return InterruptsItself()

    def receive(self, frame: Any) -> None:
        _, array = frame
        if int(array[0, 0]) == CUT_MARK:
            self.clear_audio()
            self.queue.append(np.full((1, FRAME * 10), 2, np.int16))

    def emit(self) -> Any:
        if not self.queue:
            return None
        return (RATE, self.queue.popleft())


VIDEO_GENERATOR_WORK_S = 0.02  # what each frame costs the generator below


def slow_video_generator():
    frame = np.zeros((48, 64, 3), np.uint8)
    for i in range(1000):
        time.sleep(VIDEO_GENERATOR_WORK_S)
        frame[:] = i % 256
        yield frame


# --- inputs ------------------------------------------------------------------------------------------


def test_inputs_pushed_at_connect_reach_a_start_up_that_waits_for_them(make_worker):
    """The page pushes its inputs as it connects, before the handler's first emit(); a
    wait_for_args_sync() in start_up() must get them (or the answer to its request), not
    time out and fall back to the initial values."""
    worker = make_worker(WaitsInStartUp())
    s = link(worker, args=["initial"])
    s.ch.send_control(Args(["pushed"]))
    s.answer = lambda: ["answered"]
    assert s.pump_until(lambda: s.of_type(Outputs))
    (out,) = s.of_type(Outputs)
    assert out.values[0] in (["pushed"], ["answered"]), out.values
    s.end()


def test_the_seeds_async_handler_starts_its_work_when_inputs_come_at_connect(make_worker):
    """The user guide's AsyncStreamHandler creates its generator task only when its emit()
    finds args_set clear: inputs pushed at connect must not make it skip that, and the
    generator must see them (its audio is len(key) everywhere)."""
    worker = make_worker(SeedAsync())
    s = link(worker, args=[""])
    s.ch.send_control(Args(["secret"]))
    s.answer = lambda: ["secret"]
    assert s.pump_until(lambda: s.samples_of(len("secret")) >= 10 * 480 * RATE // 24_000 // 2)
    assert s.samples_of(0) == 0
    s.end()


def test_start_up_and_shutdown_run_once_per_session_on_its_own_copy(make_worker, tmp_path, monkeypatch):
    monkeypatch.setenv("LIFECYCLE_DIR", str(tmp_path))
    worker = make_worker(Lifecycle())
    copies = []
    for _ in range(2):
        s = link(worker)
        assert s.pump_until(lambda s=s: len(s.of_type(Message)) >= 2)
        logs = [(m.type, m.data) for m in s.of_type(Message)]
        assert logs[0] == ("log", "started")
        copies.append(logs[1][1]["copy"])
        s.end()
    assert copies[0] != copies[1], "each session runs on a copy of its own"
    assert wait_until(lambda: sorted(p.name for p in tmp_path.iterdir()) == sorted(f"shutdown-{c}" for c in copies), WAIT_S)


# --- errors in async handlers ----------------------------------------------------------------------


def test_an_async_handlers_errors_are_reported_and_the_session_goes_on(make_worker):
    worker = make_worker(FailingAsync())
    s = link(worker)
    s.send_tone(7)  # receive() raises
    s.send_tone(5, frames=5)
    assert s.pump_until(lambda: s.samples_of(5) >= FRAME * 5)
    messages = [e.message for e in s.of_type(Error)]
    assert "RuntimeError: first emit fails" in messages
    assert "ValueError: receive saw a 7" in messages
    assert not s.ch.closed
    s.end()


# --- interruption ------------------------------------------------------------------------------------


def test_an_interruption_ends_the_paced_reply_at_once_and_the_next_one_plays(make_worker):
    """A 12 s reply is paced out to real time; clear_audio() (what ReplyOnPause does when
    the speaker starts again) must end that wait, so the next reply follows at once, after
    the gateway was told to drop the queued audio."""
    worker = make_worker(InterruptsItself())
    s = link(worker)
    assert s.pump_until(lambda: s.samples_of(1) > 0)
    s.send_tone(CUT_MARK)
    cut_at = time.monotonic()
    assert s.pump_until(lambda: s.samples_of(2) >= FRAME * 10)
    got_second = s.audio_at[-1]
    # the first reply alone would have held the handler for ~11.5 s more
    assert got_second - cut_at < LONG_REPLY_S / 2
    first_clear = next(i for i, m in enumerate(s.controls) if isinstance(m, ClearAudio))
    assert first_clear >= 0
    s.end()


# --- server-generated video ----------------------------------------------------------------------


@pytest.mark.slow
def test_server_video_keeps_its_frame_rate_whatever_each_frame_costs(make_worker):
    """Frames are scheduled on a clock of DEFAULT_OUTPUT_FPS, not slept for a period after
    each: a generator taking 20 ms per frame still gives 30 fps (it gave 1/(33+20 ms))."""
    from runtime import constants as C

    worker = make_worker(slow_video_generator)
    s = link(worker, modality="video", mode="receive", video=False)  # the test takes the frames
    stamps: list[int] = []

    def frames() -> int:
        got = s.ch.take_video()
        if got is not None:
            stamps.append(got[0].pts)
            s.ch.release_video()
        return len(stamps) >= 60

    assert s.pump_until(frames)
    intervals = np.diff(stamps[10:]) / C.VIDEO_CLOCK_RATE
    # pts are stamped as frames are made; the clock may let one slip but not drift
    assert abs(float(np.median(intervals)) - 1 / C.DEFAULT_OUTPUT_FPS) < 0.2 / C.DEFAULT_OUTPUT_FPS
    assert (stamps[-1] - stamps[10]) / C.VIDEO_CLOCK_RATE < (len(stamps) - 11) / C.DEFAULT_OUTPUT_FPS * 1.15
    s.end()


# --- threads left in a handler at a session's end: in a worker subprocess ---------------------------

worker_process = worker_process_fixture("""
from queue import Queue
from workers.handlers import StreamHandler

class EchoHandler(StreamHandler):  # the user guide's, verbatim
    def __init__(self) -> None:
        super().__init__()
        self.queue = Queue()

    def receive(self, frame) -> None:
        self.queue.put(frame)

    def emit(self):
        return self.queue.get()

    def copy(self) -> StreamHandler:
        return EchoHandler()

class AsksForever(StreamHandler):  # asks for inputs in emit(); the client never answers
    def __init__(self) -> None:
        super().__init__()

    def receive(self, frame) -> None:
        pass

    def emit(self):
        self.wait_for_args_sync(timeout=3600)
        return None

    def copy(self) -> StreamHandler:
        return AsksForever()

HANDLERS = {"echo": EchoHandler(), "asks": AsksForever()}
""")


@pytest.mark.slow
def test_the_seeds_echo_handler_leaves_its_worker_serving(worker_process):
    """The guide's EchoHandler blocks in queue.get() once the audio stops, forever: its
    thread is left parked (no CPU) and the worker serves the next user instead of exiting
    after every session; it retires only once MAX_PARKED_THREADS pile up."""
    wp = worker_process("echo")
    retired_at = None
    for n in range(1, MAX_PARKED_THREADS + 2):
        s = Link(wp.endpoint, wp.token, [])
        s.send_tone(100 + n, frames=3)
        assert s.pump_until(lambda s=s, n=n: s.samples_of(100 + n) >= FRAME * 3), f"session {n} got no echo"
        peer = s.end()
        assert peer is not None
        if peer.retire:
            retired_at = n
            break
        assert wp.proc.poll() is None
    assert retired_at == MAX_PARKED_THREADS + 1
    assert wp.proc.wait(WAIT_S) == 3


def test_a_session_ending_while_the_handler_waits_for_inputs_leaves_the_worker_serving(worker_process):
    wp = worker_process("asks")
    for _ in range(2):
        s = Link(wp.endpoint, wp.token, ["initial"])
        assert s.pump_until(lambda s=s: [m for m in s.of_type(Message) if m.type == "send_input"])
        peer = s.end()  # while emit() waits: the wait ends with the session
        assert peer is not None and peer.retire is False
    assert wp.proc.poll() is None
