"""Handler call durations: measured in the worker, carried back on the channel (HandlerStats).

A real Worker in this process (no Ray) and a real link (tests/workers/link/blocking.py's connect_worker, both
forms), with handlers that sleep a known time per call; the gateway's side of the channel
must then show those calls in the bucket of that duration, periodically while the session
runs and in full once it has ended.
"""

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
from workers.handlers import StreamHandler
from workers.link.channel import FrameChannel
from workers.link.shm import Geometry
from workers.link.wire import (
    EMPTY_HANDLER_HIST,
    HANDLER_BUCKETS_S,
    HANDLER_STATS_PERIOD_S,
    SLOT_HEADER_BYTES,
    Close,
    Hello,
)
from workers.process import session as session_module
from workers.process.actor import Worker
from workers.process.call_times import CallTimes

H, W = 16, 16
GEOMETRY = Geometry(
    video_slots=4,
    video_slot_bytes=SLOT_HEADER_BYTES + H * W * 3,
    audio_slots=16,
    audio_slot_bytes=SLOT_HEADER_BYTES + 960 * 2 * 2,
)
SLEEP_S = 0.025  # each handler call; mid-bucket (20, 33] ms, so a loaded box's oversleep still fits
BUCKET = HANDLER_BUCKETS_S.index(0.033)  # the bucket a SLEEP_S call lands in
CALLS = 6
AUDIO_RATE = 48_000
AUDIO_FRAME = 960  # samples: 20 ms


def slow_invert(frame: np.ndarray) -> np.ndarray:
    time.sleep(SLEEP_S)
    return 255 - frame


class SlowReceiver(StreamHandler):
    def receive(self, frame: Any) -> None:
        time.sleep(SLEEP_S)

    def emit(self) -> Any:
        return None

    def copy(self) -> SlowReceiver:
        return SlowReceiver()


def open_link(worker: Worker, modality: str, tcp: bool) -> FrameChannel:
    hello = Hello(uuid.uuid4().hex, "", "", "send-receive", modality, token=worker.token)
    ch, _ready = connect_worker(worker.tcp_endpoint if tcp else worker.endpoint, hello, WAIT_S, GEOMETRY)
    return ch


def pump_until(ch: FrameChannel, pred: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        if ch.closed:
            time.sleep(0.01)
            continue
        select.select([ch.sock], [], [], 0.02)
        ch.pump()
    return True


def video_calls(ch: FrameChannel, n: int) -> None:
    """n frames, one at a time: each waits for its answer, so the handler is called n times."""
    for i in range(n):
        assert ch.send_video(np.full((H, W, 3), i, np.uint8), pts=i, time_base=(1, 90_000))
        assert pump_until(ch, answered(ch, i)), f"no answer to frame {i}"


def answered(ch: FrameChannel, pts: int) -> Callable[[], bool]:
    got: list[int] = []

    def back() -> bool:
        out = ch.take_video()
        if out is not None:
            got.append(out[0].pts)
            ch.release_video()
        return bool(got) and got[-1] == pts

    return back


def close_and_read_to_the_end(ch: FrameChannel) -> None:
    """The gateway's close: ask, then read until the worker's Close (what comes before it counts)."""
    ch.send_control(Close("test done"))
    assert pump_until(ch, lambda: ch.closed), "the worker did not answer the Close"
    assert ch.peer_close is not None
    ch.close("test done", notify=False)


def assert_in_the_sleep_bucket(counts: tuple[int, ...], n: int) -> None:
    assert sum(counts) == n
    assert sum(counts[:BUCKET]) == 0, f"a {SLEEP_S * 1000:.0f} ms call counted below 20 ms: {counts}"
    # a box this busy (two cores, other tests) may oversleep a call past 33 ms, rarely
    assert counts[BUCKET] >= n - 1, f"calls of {SLEEP_S * 1000:.0f} ms outside (20, 33] ms: {counts}"


LINKS = pytest.mark.parametrize("tcp", [False, True], ids=["shm", "tcp"])


@LINKS
def test_a_frame_functions_calls_reach_the_gateway_while_the_session_runs(make_worker, tcp):
    ch = open_link(make_worker(slow_invert), "video", tcp)
    assert ch.handler_hist.count == 0
    video_calls(ch, CALLS)
    # read while the session still runs: the periodic report, within about a period
    assert pump_until(ch, lambda: ch.handler_hist.count == CALLS), f"got {ch.handler_hist}"
    hist = ch.handler_hist
    assert_in_the_sleep_bucket(hist.counts, CALLS)
    assert CALLS * SLEEP_S <= hist.sum_s < CALLS * 0.1
    video_calls(ch, 2)
    close_and_read_to_the_end(ch)
    assert_in_the_sleep_bucket(ch.handler_hist.counts, CALLS + 2)


@LINKS
@pytest.mark.slow
def test_the_last_calls_arrive_with_the_close_before_any_period_passed(make_worker, monkeypatch, tcp):
    # no periodic report at all during this session: only the one sent ahead of the Close
    monkeypatch.setattr(session_module, "HANDLER_STATS_PERIOD_S", 3600.0)
    ch = open_link(make_worker(slow_invert), "video", tcp)
    video_calls(ch, CALLS)
    assert not pump_until(ch, lambda: ch.handler_hist.count > 0, timeout=2 * HANDLER_STATS_PERIOD_S)
    close_and_read_to_the_end(ch)
    assert_in_the_sleep_bucket(ch.handler_hist.counts, CALLS)


def test_a_stream_handlers_receive_calls_are_timed(make_worker):
    ch = open_link(make_worker(SlowReceiver()), "audio", tcp=False)
    for _ in range(CALLS):
        assert ch.send_audio(np.zeros((1, AUDIO_FRAME), np.int16), AUDIO_RATE)
    assert pump_until(ch, lambda: ch.handler_hist.count == CALLS), f"got {ch.handler_hist}"
    assert_in_the_sleep_bucket(ch.handler_hist.counts, CALLS)
    close_and_read_to_the_end(ch)


@pytest.mark.slow
def test_an_idle_session_sends_no_reports(make_worker):
    # a report only when there were calls since the last: an idle session sends none, not
    # even the last one (any report, zeros too, would replace the empty value)
    ch = open_link(make_worker(slow_invert), "video", tcp=False)
    assert not pump_until(ch, lambda: ch.handler_hist is not EMPTY_HANDLER_HIST, timeout=2.5 * HANDLER_STATS_PERIOD_S)
    close_and_read_to_the_end(ch)
    assert ch.handler_hist is EMPTY_HANDLER_HIST


def test_call_times_buckets_are_le_and_plus_inf_last():
    t = CallTimes()
    for bound in HANDLER_BUCKETS_S:
        t.record(bound)
    t.record(HANDLER_BUCKETS_S[-1] * 2)
    t.record(0.0)
    report = t.report()
    assert report.counts == [2] + [1] * (len(HANDLER_BUCKETS_S) - 1) + [1]
    assert report.sum_s == pytest.approx(sum(HANDLER_BUCKETS_S) + HANDLER_BUCKETS_S[-1] * 2)
    report.counts[0] = 99  # the report is a copy: the worker's counts go on from their own
    assert t.report().counts[0] == 2
