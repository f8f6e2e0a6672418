"""workers/link/channel.py in one process: two FrameChannels on a socket pair, real shared memory.

Every test checks on the way out that no segment this process created is left in /dev/shm.
"""

from __future__ import annotations

import gc
import os
import random
import select
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np
import pytest

from tests.workers.link.blocking import connect_worker, socket_pair
from workers.link import channel as channel_mod
from workers.link import framing as framing_mod
from workers.link.channel import MAX_BACKLOG_MESSAGES, FrameChannel
from workers.link.connect import offer_link
from workers.link.framing import CONTROL_FRAGMENT_BYTES, MAX_CONTROL_BYTES, MSG_PART
from workers.link.shm import SEGMENT_PREFIX, Geometry, LocalSegment, Segment
from workers.link.wire import (
    DTYPE_CODES,
    KIND_AUDIO,
    KIND_VIDEO,
    LAYOUT_CODES,
    MSG_CONTROL,
    MSG_FRAME,
    MSG_RELEASE,
    SEGMENT_HEADER,
    SEGMENT_HEADER_BYTES,
    SEGMENT_MAGIC,
    SEGMENT_VERSION,
    SLOT_HEADER_BYTES,
    SLOT_MESSAGE,
    STREAM_LENGTH,
    Args,
    Close,
    Control,
    Error,
    Hello,
    Message,
    Outputs,
    Ready,
    SlotHeader,
    WireError,
)

H, W = 24, 32
AUDIO_N = 960
SMALL = Geometry(
    video_slots=4,
    video_slot_bytes=SLOT_HEADER_BYTES + H * W * 3,
    audio_slots=8,
    audio_slot_bytes=SLOT_HEADER_BYTES + AUDIO_N * 2 * 4,  # stereo float32 fits
)
WAIT_S = 10.0  # generous: a waiting loop ends as soon as its condition holds


def own_segments() -> set[str]:
    """Segments this process created (other test runs on the machine are not counted)."""
    prefix = f"{SEGMENT_PREFIX}{os.getpid()}-"
    return {n for n in os.listdir("/dev/shm") if n.startswith(prefix)}


def all_segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(SEGMENT_PREFIX)}


@pytest.fixture(autouse=True)
def no_leaked_segments() -> Iterator[None]:
    before = own_segments()
    yield
    assert own_segments() == before, "a test left shared memory behind"


@dataclass
class Side:
    """One end of a link plus everything its callbacks saw."""

    ch: FrameChannel = None  # type: ignore[assignment]
    video_wakes: int = 0
    audio: list[tuple[SlotHeader, np.ndarray]] = field(default_factory=list)
    controls: list[Control] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_video": self._on_video,
            "on_audio": lambda h, a: self.audio.append((h, a)),
            "on_control": self.controls.append,
            "on_closed": self.closed.append,
        }

    def _on_video(self) -> None:
        self.video_wakes += 1


@dataclass
class Link:
    gw: Side  # owns both segments, as the gateway does
    wk: Side  # attached, as a worker is

    def close(self) -> None:
        self.wk.ch.close(notify=False)
        self.gw.ch.close(notify=False)


def make_link(geometry: Geometry = SMALL, tcp: bool = False) -> Link:
    """Both ends of a session's link. ``tcp``: the TCP form (a byte stream, each side with
    private segments), on a Unix stream pair, which frames and splits data as TCP does."""
    gw, wk = Side(), Side()
    if tcp:
        sa, sb = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        gw.ch = FrameChannel(sa, tx=LocalSegment(geometry), rx=LocalSegment(geometry), **gw.callbacks())
        wk.ch = FrameChannel(sb, tx=LocalSegment(geometry), rx=LocalSegment(geometry), **wk.callbacks())
        return Link(gw, wk)
    sa, sb = socket_pair()
    up = Segment.create(geometry)
    down = Segment.create(geometry)
    gw.ch = FrameChannel(sa, tx=up, rx=down, **gw.callbacks())
    wk.ch = FrameChannel(sb, tx=Segment.attach(down.name), rx=Segment.attach(up.name), **wk.callbacks())
    return Link(gw, wk)


@pytest.fixture(params=["shm", "tcp"])
def link(request: pytest.FixtureRequest) -> Iterator[Link]:
    lk = make_link(tcp=request.param == "tcp")
    yield lk
    lk.close()


@dataclass
class RawPeer:
    """A channel whose peer is a bare socket: the test writes whatever bytes it likes."""

    side: Side
    sock: socket.socket
    tx: Segment  # what the raw peer "produces" into (the channel's rx)
    rx: Segment

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def put_frame(self, kind: int, slot: int, array: np.ndarray, **header: Any) -> None:
        """Write a frame into a slot of the channel's rx segment, as a producer would."""
        fields = {
            "seq": 1,
            "pts": 0,
            "time_base_num": 1,
            "time_base_den": 90_000,
            "sample_rate": 0,
            "nbytes": array.nbytes,
            "kind": kind,
            "dtype": DTYPE_CODES[array.dtype],
            "layout": 0,
            "ndim": array.ndim,
            "shape": (tuple(array.shape) + (0, 0, 0))[:3],
        }
        fields.update(header)
        assert self.tx.buf is not None
        SlotHeader(**fields).pack_into(self.tx.buf, self.tx.geometry.offset(kind, slot))
        self.tx.view(kind, slot, array.shape, array.dtype)[...] = array

    def frame(self, kind: int, slot: int) -> None:
        self.send(SLOT_MESSAGE.pack(MSG_FRAME, kind, slot))


@pytest.fixture
def raw() -> Iterator[RawPeer]:
    sa, sb = socket_pair()
    up = Segment.create(SMALL)
    down = Segment.create(SMALL)
    side = Side()
    side.ch = FrameChannel(sb, tx=down, rx=up, **side.callbacks())
    peer = RawPeer(side, sa, tx=up, rx=down)
    yield peer
    side.ch.close(notify=False)
    sa.close()


def pump_until(pred: Callable[[], Any], *channels: FrameChannel, timeout: float = WAIT_S) -> Any:
    """Pump (and flush) the channels until ``pred`` holds; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        for ch in channels:
            if not ch.closed:
                ch.pump()
                if ch.has_backlog:
                    ch.flush()
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        socks = [ch.sock for ch in channels if not ch.closed]
        if socks:
            select.select(socks, [], [], 0.01)


def frame_for(i: int, shape: tuple[int, int, int] = (H, W, 3)) -> np.ndarray:
    """A frame whose every pixel depends on ``i`` and its position: a stale or torn frame shows."""
    h, w, c = shape
    grid = np.arange(h * w * c, dtype=np.uint32).reshape(h, w, c)
    return ((grid * 7 + i * 131) % 251).astype(np.uint8)


# --- video ---------------------------------------------------------------------------------------


def test_video_round_trip_exact_pixels_and_header(link):
    frame = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    assert link.gw.ch.send_video(frame, pts=123_456, time_base=(1, 90_000))
    frame_copy = frame.copy()
    frame[...] = 0  # the slot holds a copy: the sender may reuse its buffer at once
    link.wk.ch.pump()
    assert link.wk.video_wakes == 1
    assert link.wk.ch.has_video()
    got = link.wk.ch.take_video()
    assert got is not None
    header, view = got
    np.testing.assert_array_equal(view, frame_copy)
    assert view.dtype == np.uint8 and view.shape == (H, W, 3)
    assert header == SlotHeader(
        seq=1,
        pts=123_456,
        time_base_num=1,
        time_base_den=90_000,
        sample_rate=0,
        nbytes=H * W * 3,
        kind=KIND_VIDEO,
        dtype=DTYPE_CODES[np.dtype(np.uint8)],
        layout=0,
        ndim=3,
        shape=(H, W, 3),
    )
    assert link.wk.ch.take_video() is None
    assert not link.wk.ch.has_video()
    link.wk.ch.release_video()
    link.gw.ch.pump()
    assert link.gw.ch.stats.video_sent == 1
    assert link.wk.ch.stats.video_received == 1
    assert link.wk.ch.stats.video_superseded == 0


def test_frames_of_changing_size_and_negative_pts(link):
    for i, shape in enumerate([(H, W, 3), (2, 3, 3), (H, W // 2, 3), (1, 1, 3), (H, W, 3)]):
        frame = frame_for(i, shape)
        assert link.gw.ch.send_video(frame, pts=-i)
        link.wk.ch.pump()
        header, view = link.wk.ch.take_video()
        assert header.pts == -i
        assert header.shape[:3] == shape
        np.testing.assert_array_equal(view, frame)
        link.wk.ch.release_video()
        link.gw.ch.pump()


def test_latest_frame_wins(link):
    gw, wk = link.gw.ch, link.wk.ch
    for pts in range(1, 5):
        assert gw.send_video(frame_for(pts), pts=pts)
    wk.pump()
    assert wk.stats.video_received == 4
    assert wk.stats.video_superseded == 3
    header, view = wk.take_video()
    assert header.pts == 4 and header.seq == 4
    np.testing.assert_array_equal(view, frame_for(4))
    assert wk.take_video() is None, "superseded frames are gone, not queued"
    # the three superseded slots came back at once, the held one on release
    wk.release_video()
    gw.pump()
    for pts in range(5, 9):
        assert gw.send_video(frame_for(pts), pts=pts), "every slot should be free again"
    assert gw.stats.video_dropped == 0


def test_taking_a_newer_frame_releases_the_held_one(link):
    gw, wk = link.gw.ch, link.wk.ch
    gw.send_video(frame_for(1), pts=1)
    wk.pump()
    assert wk.take_video()[0].pts == 1  # held, not released
    gw.send_video(frame_for(2), pts=2)
    wk.pump()
    header, view = wk.take_video()  # gives slot of pts 1 back
    assert header.pts == 2
    np.testing.assert_array_equal(view, frame_for(2))
    gw.pump()
    for pts in range(3, 6):  # 4 slots - 1 held
        assert gw.send_video(frame_for(pts), pts=pts)
    assert not gw.send_video(frame_for(6), pts=6)


def test_producer_without_a_free_slot_drops_counts_and_never_blocks(link):
    gw, wk = link.gw.ch, link.wk.ch
    for pts in range(1, 5):
        assert gw.send_video(frame_for(pts), pts=pts)
    # the consumer has not pumped: no slot came back
    for pts in range(5, 8):
        assert gw.send_video(frame_for(pts), pts=pts) is False
    assert gw.stats.video_dropped == 3
    assert gw.stats.video_sent == 4
    wk.pump()
    header, view = wk.take_video()
    assert header.pts == 4, "a dropped frame never reaches a slot"
    np.testing.assert_array_equal(view, frame_for(4))


def test_wrap_around_thousands_of_frames_in_order(link):
    gw, wk = link.gw.ch, link.wk.ch
    n = 4000
    for i in range(1, n + 1):
        assert gw.send_video(frame_for(i, (4, 4, 3)), pts=i * 3000)
        wk.pump()
        header, view = wk.take_video()
        assert (header.seq, header.pts) == (i, i * 3000)
        np.testing.assert_array_equal(view, frame_for(i, (4, 4, 3)))
        wk.release_video()
        gw.pump()
    assert gw.stats.video_sent == wk.stats.video_received == n
    assert gw.stats.video_dropped == wk.stats.video_superseded == 0


def test_random_schedule_keeps_every_invariant(link):
    """Bursts, skipped pumps, holds: the consumer only ever sees newer, intact frames."""
    gw, wk = link.gw.ch, link.wk.ch
    rng = random.Random(7)
    attempts = taken = 0
    last_pts = last_seq = 0
    for _ in range(3000):
        for _ in range(rng.choice((0, 1, 1, 2, 3, 6))):
            attempts += 1
            gw.send_video(frame_for(attempts, (4, 4, 3)), pts=attempts)
        if rng.random() < 0.8:
            wk.pump()
        if rng.random() < 0.7:
            got = wk.take_video()
            if got is not None:
                header, view = got
                assert header.pts > last_pts and header.seq > last_seq
                last_pts, last_seq = header.pts, header.seq
                np.testing.assert_array_equal(view, frame_for(header.pts, (4, 4, 3)))
                taken += 1
                if rng.random() < 0.5:
                    wk.release_video()
        if rng.random() < 0.8:
            gw.pump()
    # drain: everything in flight arrives, every slot goes home
    wk.pump()
    pending = 1 if wk.has_video() else 0
    wk.take_video()
    wk.release_video()
    gw.pump()
    assert gw.stats.video_sent + gw.stats.video_dropped == attempts
    assert wk.stats.video_received == gw.stats.video_sent
    assert taken + pending + wk.stats.video_superseded == wk.stats.video_received
    assert gw.stats.video_dropped > 0 and wk.stats.video_superseded > 0, "the schedule exercised both"
    for i in range(4):
        assert gw.send_video(frame_for(i, (4, 4, 3))), "a slot leaked"


def test_concurrent_sender_and_reader_threads(link):
    """The worker's shape: one thread pumps the link, another sends; the gateway consumes."""
    gw, wk = link.gw.ch, link.wk.ch
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                select.select([wk.sock], [], [], 0.01)
                wk.pump()
                if wk.has_backlog:
                    wk.flush()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def sender() -> None:
        try:
            for i in range(1, 2001):
                wk.send_video(frame_for(i, (4, 4, 3)), pts=i)
                if i % 20 == 0:
                    wk.send_control(Outputs(i // 20, [i]))
                if i % 50 == 0:
                    time.sleep(0.001)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader), threading.Thread(target=sender)]
    for t in threads:
        t.start()
    last = 0
    deadline = time.monotonic() + 60
    while threads[1].is_alive() or gw.has_video():
        assert time.monotonic() < deadline
        select.select([gw.sock], [], [], 0.01)
        gw.pump()
        got = gw.take_video()
        if got is not None:
            header, view = got
            assert header.pts > last
            last = header.pts
            np.testing.assert_array_equal(view, frame_for(header.pts, (4, 4, 3)))
            gw.release_video()
    threads[1].join()
    assert pump_until(lambda: len(link.gw.controls) == 100, gw)
    stop.set()
    threads[0].join()
    assert not errors
    assert not gw.closed and not wk.closed
    assert [m.seq for m in link.gw.controls] == list(range(1, 101))
    assert wk.stats.video_sent + wk.stats.video_dropped == 2000


# --- audio ---------------------------------------------------------------------------------------


def test_audio_round_trip_is_a_copy_and_the_slot_returns_at_once(link):
    gw, wk = link.gw.ch, link.wk.ch
    samples = np.random.default_rng(2).integers(-32768, 32767, (1, AUDIO_N), dtype=np.int16)
    assert gw.send_audio(samples, 48_000, "mono", pts=960)
    wk.pump()
    assert len(link.wk.audio) == 1
    header, got = link.wk.audio[0]
    np.testing.assert_array_equal(got, samples)
    assert got.flags.owndata, "audio is copied out of its slot"
    assert (header.kind, header.sample_rate, header.layout, header.pts) == (KIND_AUDIO, 48_000, LAYOUT_CODES["mono"], 960)
    assert (header.time_base_num, header.time_base_den) == (1, 48_000)
    assert header.shape[:2] == (1, AUDIO_N) and header.ndim == 2
    # the release went out during pump: a full ring's worth goes through again without loss
    gw.pump()
    for _ in range(SMALL.audio_slots):
        assert gw.send_audio(samples, 48_000)
    assert gw.stats.audio_dropped == 0


def test_stereo_float_audio_and_custom_time_base(link):
    gw, wk = link.gw.ch, link.wk.ch
    samples = np.linspace(-1, 1, 2 * AUDIO_N, dtype=np.float32).reshape(2, AUDIO_N)
    assert gw.send_audio(samples, 24_000, "stereo", pts=7, time_base=(1, 1000))
    wk.pump()
    header, got = link.wk.audio[0]
    np.testing.assert_array_equal(got, samples)
    assert got.dtype == np.float32
    assert header.layout == LAYOUT_CODES["stereo"]
    assert (header.time_base_num, header.time_base_den, header.sample_rate) == (1, 1000, 24_000)


def test_audio_arrives_in_order_and_keeps_up_indefinitely(link):
    gw, wk = link.gw.ch, link.wk.ch
    for i in range(2000):
        assert gw.send_audio(np.full((1, 480), i % 30000, dtype=np.int16), 48_000, pts=i * 480)
        if i % 5 == 4:  # the consumer reads in bursts smaller than the ring
            wk.pump()
            gw.pump()
    wk.pump()
    assert [h.pts for h, _ in link.wk.audio] == [i * 480 for i in range(2000)]
    assert all(int(a[0, 0]) == i % 30000 for i, (_, a) in enumerate(link.wk.audio))
    assert gw.stats.audio_dropped == 0


def test_audio_dropped_when_the_consumer_never_reads(link):
    gw, wk = link.gw.ch, link.wk.ch
    chunk = np.zeros((1, AUDIO_N), dtype=np.int16)
    results = [gw.send_audio(chunk, 48_000, pts=i) for i in range(SMALL.audio_slots + 3)]
    assert results == [True] * SMALL.audio_slots + [False] * 3
    assert gw.stats.audio_dropped == 3
    assert gw.stats.audio_sent == SMALL.audio_slots
    wk.pump()
    assert [h.pts for h, _ in link.wk.audio] == list(range(SMALL.audio_slots))


# --- size limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "array"),
    [
        ("video", np.zeros((H + 1, W, 3), dtype=np.uint8)),  # one row too many
        ("video", np.zeros((2, 2, 3), dtype=np.complex64)),  # no dtype code
        ("video", np.zeros((1, 1, 1, 3), dtype=np.uint8)),  # 4 dimensions
        ("audio", np.zeros((2, AUDIO_N * 2 + 1), dtype=np.float32)),
        ("audio", np.zeros((1, 4), dtype=bool)),
    ],
)
def test_oversize_or_unsupported_frames_are_refused_and_counted(link, kind, array):
    gw, wk = link.gw.ch, link.wk.ch
    if kind == "video":
        assert gw.send_video(array) is False
    else:
        assert gw.send_audio(array, 48_000) is False
    assert gw.stats.oversize == 1
    assert gw.stats.video_sent == gw.stats.audio_sent == 0
    wk.pump()
    assert not wk.has_video() and not link.wk.audio
    # no slot was used up
    for i in range(SMALL.video_slots):
        assert gw.send_video(frame_for(i))


def test_largest_frame_that_fits_goes_through(link):
    frame = frame_for(3, (H, W, 3))
    assert SMALL.capacity(KIND_VIDEO) == frame.nbytes
    assert link.gw.ch.send_video(frame)
    link.wk.ch.pump()
    np.testing.assert_array_equal(link.wk.ch.take_video()[1], frame)


# --- control messages ------------------------------------------------------------------------------


def test_controls_arrive_in_order_interleaved_with_frames(link):
    gw, wk = link.gw.ch, link.wk.ch
    sent: list[Control] = [
        Args([1, "a"]),
        Message("log", {"x": [1, 2]}),
        Error("boom"),
        Outputs(1, [np.arange(5, dtype=np.int16), "text"]),
    ]
    for i, msg in enumerate(sent):
        gw.send_control(msg)
        gw.send_video(frame_for(i), pts=i)
        wk.pump()
        wk.take_video()
        wk.release_video()
        gw.pump()
    got = link.wk.controls
    assert [type(m) for m in got] == [type(m) for m in sent]
    assert got[:3] == sent[:3]
    assert got[3].seq == 1 and got[3].values[1] == "text"
    np.testing.assert_array_equal(got[3].values[0], np.arange(5, dtype=np.int16))


def _error_of_encoded_size(n: int) -> Error:
    """An Error whose encoding is exactly ``n`` bytes."""
    overhead = len(Error("").encode())
    for extra in range(0, 16):
        msg = Error("x" * (n - overhead - extra))
        if len(msg.encode()) == n:
            return msg
    raise AssertionError(f"no Error encodes to {n} bytes")


@pytest.mark.parametrize(
    ("size", "datagrams"),
    [
        (CONTROL_FRAGMENT_BYTES, 1),
        (CONTROL_FRAGMENT_BYTES + 1, 2),
        (2 * (CONTROL_FRAGMENT_BYTES - 1) + 1, 2),  # body fills two fragments exactly
        (2 * (CONTROL_FRAGMENT_BYTES - 1) + 2, 3),
    ],
)
def test_fragment_framing_on_the_wire(size, datagrams):
    sa, sb = socket_pair()
    up, down = Segment.create(SMALL), Segment.create(SMALL)
    ch = FrameChannel(sa, tx=up, rx=down)
    msg = _error_of_encoded_size(size)
    try:
        ch.send_control(msg)
        got = []
        sb.settimeout(WAIT_S)
        while not got or got[-1][0] != MSG_CONTROL:
            got.append(sb.recv(2 * CONTROL_FRAGMENT_BYTES))
        assert len(got) == datagrams
        assert all(len(d) <= CONTROL_FRAGMENT_BYTES for d in got)
        assert [d[0] for d in got] == [MSG_PART] * (datagrams - 1) + [MSG_CONTROL]
        assert b"".join(d[1:] for d in got) == msg.encode()[1:]
    finally:
        ch.close(notify=False)
        sb.close()


def test_large_control_is_fragmented_and_reassembled_through_the_backlog(link):
    gw, wk = link.gw.ch, link.wk.ch
    blob = np.random.default_rng(3).bytes(3 * 1024 * 1024)
    image = np.random.default_rng(4).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    gw.send_control(Outputs(9, [blob, image]))
    assert gw.has_backlog, "3 MiB does not fit a socket buffer: the rest waits"
    gw.send_control(Args(["after"]))  # a later control queues behind, never overtakes
    rounds = 0
    while len(link.wk.controls) < 2:
        rounds += 1
        assert rounds < 10_000
        wk.pump()
        gw.flush()
    assert not gw.has_backlog
    big, after = link.wk.controls
    assert isinstance(big, Outputs) and big.seq == 9
    assert big.values[0] == blob
    np.testing.assert_array_equal(big.values[1], image)
    assert after == Args(["after"])
    assert not gw.closed and not wk.closed


def test_frames_queue_behind_a_large_control_in_order(link):
    """A handler returning (frame, AdditionalOutputs(big)) must not lose the frame."""
    gw, wk = link.gw.ch, link.wk.ch
    gw.send_control(Outputs(1, [b"\0" * (1024 * 1024)]))
    assert gw.has_backlog
    assert gw.send_video(frame_for(1), pts=1)
    assert gw.send_audio(np.ones((1, AUDIO_N), dtype=np.int16), 48_000, pts=5)
    assert gw.stats.video_dropped == gw.stats.audio_dropped == 0
    order: list[str] = []
    wk.on_control = lambda m: order.append("control")
    wk.on_video = lambda: order.append("video")
    wk.on_audio = lambda h, a: order.append("audio")
    assert pump_until(lambda: len(order) == 3, gw, wk)
    assert order == ["control", "video", "audio"]
    np.testing.assert_array_equal(wk.take_video()[1], frame_for(1))
    # the backlog is bounded by the slots: with none free, a frame is dropped, not queued
    gw.send_control(Outputs(2, [b"\0" * (1024 * 1024)]))
    for i in range(SMALL.video_slots - 1):  # one slot is still held by the consumer
        assert gw.send_video(frame_for(i))
    assert gw.send_video(frame_for(9)) is False
    assert gw.stats.video_dropped == 1


def test_control_over_the_limit_is_refused_before_sending(link):
    gw, wk = link.gw.ch, link.wk.ch
    with pytest.raises(WireError, match="exceeds"):
        gw.send_control(Error("x" * MAX_CONTROL_BYTES))
    assert not gw.has_backlog
    wk.pump()
    assert link.wk.controls == [] and not wk.closed and not gw.closed


def test_control_limit_boundary(link, monkeypatch):
    monkeypatch.setattr(framing_mod, "MAX_CONTROL_BYTES", 200_000)
    gw, wk = link.gw.ch, link.wk.ch
    fits = _error_of_encoded_size(200_000)
    with pytest.raises(WireError):
        gw.send_control(_error_of_encoded_size(200_001))
    gw.send_control(fits)
    assert pump_until(lambda: link.wk.controls, gw, wk)
    assert link.wk.controls == [fits]


def test_receiver_refuses_fragments_beyond_the_limit(raw, monkeypatch):
    monkeypatch.setattr(framing_mod, "MAX_CONTROL_BYTES", 100_000)
    part = bytes((MSG_PART,)) + b"\0" * (CONTROL_FRAGMENT_BYTES - 1)
    for _ in range(3):
        raw.send(part)
    raw.side.ch.pump()
    assert raw.side.ch.closed
    assert raw.side.closed == [raw.side.ch.close_reason]
    assert raw.side.ch.close_reason.startswith("protocol error") and "limit" in raw.side.ch.close_reason


def test_a_peer_that_stops_reading_ends_the_link(link):
    gw = link.gw.ch
    sent = 0
    while not gw.closed:
        gw.send_control(Args([sent]))
        sent += 1
        assert sent < 50 * MAX_BACKLOG_MESSAGES
    assert sent > MAX_BACKLOG_MESSAGES
    assert link.gw.closed == ["link error: peer stopped reading"]
    assert not gw.has_backlog, "the backlog is let go"


# --- closing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("closer", ["gw", "wk"])
def test_close_from_either_side(link, closer):
    me, peer = (link.gw, link.wk) if closer == "gw" else (link.wk, link.gw)
    me.ch.close("bye now")
    assert me.ch.closed
    assert me.closed == [], "the closing side's own on_closed is for the peer's doing"
    peer.ch.pump()
    assert peer.closed == ["bye now"]
    assert peer.ch.closed and peer.ch.close_reason == "bye now"
    assert isinstance(peer.ch.peer_close, Close) and peer.ch.peer_close.reason == "bye now"
    # after close nothing goes out, and nothing raises
    for side in (me, peer):
        assert side.ch.send_video(frame_for(0)) is False
        assert side.ch.send_audio(np.zeros((1, 10), dtype=np.int16), 48_000) is False
        side.ch.send_control(Args([1]))
    peer.ch.pump()
    assert peer.closed == ["bye now"], "on_closed fires once"


def test_close_without_reason_and_twice(link):
    link.wk.ch.close("")
    link.wk.ch.close("again")  # safe
    link.gw.ch.pump()
    assert link.gw.closed == ["peer closed the session"]


def test_peer_vanishing_without_close(link):
    link.wk.ch.sock.close()  # a worker process that died sends nothing
    link.gw.ch.pump()
    assert link.gw.closed == ["peer closed the link"]
    assert link.gw.ch.peer_close is None
    assert link.gw.ch.send_video(frame_for(0)) is False


def test_messages_before_the_close_are_still_delivered(link):
    link.wk.ch.send_control(Message("end_stream", "done"))
    link.wk.ch.close("finished")
    link.gw.ch.pump()
    assert link.gw.controls == [Message("end_stream", "done")]
    assert link.gw.closed == ["finished"]


def test_a_peer_that_closed_with_our_messages_unread_is_still_heard_out():
    """Linux reports a Unix-socket peer that closed while messages of ours sat unread in its
    queue as a reset, once, ahead of what it sent before closing: its last words and its
    Close are read all the same (test-found: a worker's CloseStream, during live input,
    reached the gateway as "link error: Connection reset by peer")."""
    lk = make_link()
    try:
        for i in range(5):  # the worker stopped reading: these stay in its queue
            lk.gw.ch.send_control(Args([i]))
        assert lk.wk.ch.send_audio(np.ones((1, AUDIO_N), dtype=np.int16), 48_000)
        lk.wk.ch.send_control(Message("end_stream", "done"))
        lk.wk.ch.close("finished")
        assert pump_until(lambda: lk.gw.closed, lk.gw.ch)
        assert lk.gw.closed == ["finished"]
        assert isinstance(lk.gw.ch.peer_close, Close)
        assert len(lk.gw.audio) == 1 and lk.gw.controls == [Message("end_stream", "done")]
    finally:
        lk.close()


def test_a_send_to_a_peer_that_closed_does_not_hide_its_close():
    """A message that arrives after the peer closed makes this side answer (an audio slot's
    release): that send fails, and the peer's Close, still queued, is read all the same."""
    lk = make_link()
    try:
        for _ in range(3):
            assert lk.wk.ch.send_audio(np.ones((1, AUDIO_N), dtype=np.int16), 48_000)
        lk.wk.ch.close("finished")
        assert pump_until(lambda: lk.gw.closed, lk.gw.ch)
        assert lk.gw.closed == ["finished"] and isinstance(lk.gw.ch.peer_close, Close)
        assert len(lk.gw.audio) == 3
        lk.gw.ch.send_control(Args([1]))  # nothing raises, nothing goes out
        assert not lk.gw.ch.has_backlog
    finally:
        lk.close()


def test_a_peer_that_died_with_our_messages_unread_ends_the_link():
    lk = make_link()
    try:
        lk.gw.ch.send_control(Args([1]))
        lk.wk.ch.sock.close()  # a worker process that died: no Close
        assert pump_until(lambda: lk.gw.closed, lk.gw.ch)
        assert lk.gw.closed == ["peer closed the link"] and lk.gw.ch.peer_close is None
    finally:
        lk.close()


def test_close_answers_a_peers_close(link):
    link.gw.ch.send_control(Close("please stop"))
    link.wk.ch.pump()
    assert link.wk.closed == ["please stop"]
    link.wk.ch.close("stopped")  # the worker's answer
    link.gw.ch.pump()
    assert link.gw.closed == ["stopped"]


def test_closing_both_ends_leaves_no_segment():
    before = all_segments()
    lk = make_link()
    names = {lk.gw.ch.tx.name, lk.gw.ch.rx.name}
    assert names <= all_segments()
    lk.wk.ch.close("x")
    assert names <= all_segments(), "the worker side never unlinks"
    lk.gw.ch.pump()
    lk.gw.ch.close(notify=False)
    assert not names & all_segments()
    assert {n for n in all_segments() - before if n.startswith(f"{SEGMENT_PREFIX}{os.getpid()}-")} == set()


def test_gateway_closing_first_unlinks_while_the_worker_still_maps(link):
    names = {link.gw.ch.tx.name, link.gw.ch.rx.name}
    link.gw.ch.close("gone")
    assert not names & all_segments(), "names go with the owner, at once"
    # the worker's mapping stays valid until it closes too
    assert link.wk.ch.rx.buf is not None and len(link.wk.ch.rx.buf) == SMALL.size
    link.wk.ch.pump()
    assert link.wk.closed == ["gone"]


# --- protocol violations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (SLOT_MESSAGE.pack(MSG_FRAME, KIND_VIDEO, SMALL.video_slots), "no such slot"),
        (SLOT_MESSAGE.pack(MSG_FRAME, KIND_AUDIO, SMALL.audio_slots), "no such slot"),
        (SLOT_MESSAGE.pack(MSG_FRAME, 9, 0), "unknown frame kind"),
        (SLOT_MESSAGE.pack(MSG_FRAME, 0, 0), "unknown frame kind"),
        (SLOT_MESSAGE.pack(MSG_RELEASE, KIND_VIDEO, 0), "released twice"),  # never sent: free
        (SLOT_MESSAGE.pack(MSG_RELEASE, KIND_AUDIO, 3), "released twice"),
        (SLOT_MESSAGE.pack(MSG_RELEASE, KIND_VIDEO, 99), "no such slot"),
        (SLOT_MESSAGE.pack(MSG_RELEASE, 9, 0), "no such slot"),
        (b"Z\x01\x00\x00", "unknown link message type"),
        (b"\x00", "unknown link message type"),
        (b"C\xc1", "malformed control"),
        (b"C" + b"\x81\xa1t\xa4nope", "malformed control"),  # {"t": "nope"}
        (b"F\x01\x00\x00\x00", "slot message of 5 bytes"),
    ],
)
def test_protocol_violation_closes_with_a_reason(raw, data, why):
    raw.send(data)
    raw.side.ch.pump()  # must not raise
    assert raw.side.ch.closed
    reason = raw.side.ch.close_reason
    assert reason.startswith("protocol error") and why in reason, reason
    assert raw.side.closed == [reason]
    assert raw.side.ch.send_video(frame_for(0)) is False


@pytest.mark.parametrize("mtype", [MSG_FRAME, MSG_RELEASE])
@pytest.mark.parametrize("length", [1, 2, 3])
def test_truncated_slot_message_at_every_length(raw, mtype, length):
    # first a valid frame in slot 1, so the receive buffer holds a plausible message to reuse
    raw.put_frame(KIND_VIDEO, 1, frame_for(1))
    raw.frame(KIND_VIDEO, 1)
    raw.side.ch.pump()
    assert raw.side.ch.has_video() and not raw.side.ch.closed
    raw.send(SLOT_MESSAGE.pack(mtype, KIND_VIDEO, 1)[:length])
    raw.side.ch.pump()
    assert raw.side.ch.close_reason == f"protocol error: slot message of {length} bytes, not 4"
    assert raw.side.closed == [raw.side.ch.close_reason]


def test_double_release_of_a_sent_slot(raw):
    ch = raw.side.ch
    assert ch.send_video(frame_for(0))
    release = SLOT_MESSAGE.pack(MSG_RELEASE, KIND_VIDEO, 0)
    raw.send(release)
    ch.pump()
    assert not ch.closed, "the first release is fine"
    raw.send(release)
    ch.pump()
    assert ch.close_reason == "protocol error: slot 0 of kind 1 released twice"


@pytest.mark.parametrize("state", ["pending", "held"])
def test_frame_in_a_slot_the_consumer_still_has(raw, state):
    raw.put_frame(KIND_VIDEO, 2, frame_for(2))
    raw.frame(KIND_VIDEO, 2)
    raw.side.ch.pump()
    if state == "held":
        assert raw.side.ch.take_video()[0].seq == 1
    raw.frame(KIND_VIDEO, 2)  # the producer cannot own slot 2 yet
    raw.side.ch.pump()
    assert raw.side.ch.close_reason.startswith("protocol error: frame in video slot 2")


@pytest.mark.parametrize(
    "header",
    [
        {"dtype": 99},
        {"ndim": 4},
        {"shape": (1, 10_000_000, 0), "ndim": 2},  # larger than the slot
    ],
)
def test_bad_audio_slot_header_is_a_protocol_error(raw, header):
    raw.put_frame(KIND_AUDIO, 0, np.zeros((1, 16), dtype=np.int16), **header)
    raw.frame(KIND_AUDIO, 0)
    raw.side.ch.pump()
    assert raw.side.ch.close_reason.startswith("protocol error: slot header")
    assert raw.side.audio == []


def test_bad_video_slot_header_raises_at_take(raw):
    raw.put_frame(KIND_VIDEO, 0, frame_for(0), shape=(H * 10, W, 3))
    raw.frame(KIND_VIDEO, 0)
    raw.side.ch.pump()
    with pytest.raises(WireError, match="exceeds the slot"):
        raw.side.ch.take_video()


def test_fragment_then_garbage_final_part(raw):
    raw.send(bytes((MSG_PART,)) + b"\x81\xa1t")
    raw.send(bytes((MSG_CONTROL,)) + b"\xc1")
    raw.side.ch.pump()
    assert raw.side.ch.close_reason.startswith("protocol error: malformed control")


def test_frames_between_fragments_are_handled(raw):
    """Fragments of one control and slot messages may interleave (two sending threads)."""
    body = Message("log", "y" * 100).encode()[1:]
    raw.send(bytes((MSG_PART,)) + body[:40])
    raw.put_frame(KIND_VIDEO, 0, frame_for(0))
    raw.frame(KIND_VIDEO, 0)
    raw.send(bytes((MSG_CONTROL,)) + body[40:])
    raw.side.ch.pump()
    assert not raw.side.ch.closed
    assert raw.side.ch.has_video()
    assert raw.side.controls == [Message("log", "y" * 100)]


def test_a_zero_length_datagram_reads_as_the_peer_leaving(raw):
    raw.send(b"")
    raw.side.ch.pump()
    assert raw.side.closed == ["peer closed the link"]


# --- segments ------------------------------------------------------------------------------------------


def test_segment_layout_and_mode():
    seg = Segment.create(SMALL)
    try:
        assert seg.name.startswith(f"{SEGMENT_PREFIX}{os.getpid()}-")
        st = os.stat(f"/dev/shm/{seg.name}")
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.getuid()
        assert st.st_size >= SMALL.size
        assert SEGMENT_HEADER.unpack_from(seg.buf, 0) == (
            SEGMENT_MAGIC,
            SEGMENT_VERSION,
            SMALL.video_slots,
            SMALL.video_slot_bytes,
            SMALL.audio_slots,
            SMALL.audio_slot_bytes,
        )
    finally:
        seg.close()


def test_geometry_offsets_do_not_overlap():
    g = SMALL
    spans = [(g.offset(KIND_VIDEO, i), g.video_slot_bytes) for i in range(g.video_slots)]
    spans += [(g.offset(KIND_AUDIO, i), g.audio_slot_bytes) for i in range(g.audio_slots)]
    assert spans[0][0] == SEGMENT_HEADER_BYTES
    for (a, alen), (b, _) in zip(spans, spans[1:], strict=False):
        assert a + alen == b
    assert spans[-1][0] + spans[-1][1] == g.size
    assert g.capacity(KIND_VIDEO) == H * W * 3
    assert (g.count(KIND_VIDEO), g.count(KIND_AUDIO)) == (4, 8)


def test_default_geometry_holds_a_full_hd_frame_and_100ms_stereo():
    g = Geometry()
    assert g.capacity(KIND_VIDEO) >= 1920 * 1080 * 3
    assert g.capacity(KIND_AUDIO) >= 4800 * 2 * 2
    assert g.video_slot_bytes % 64 == 0 and g.audio_slot_bytes % 64 == 0, "payloads stay aligned"


def test_attach_sees_the_geometry_and_never_unlinks():
    seg = Segment.create(SMALL)
    try:
        other = Segment.attach(seg.name)
        assert other.geometry == SMALL and not other.owner
        other.close()
        other.close()  # twice is safe
        assert os.path.exists(f"/dev/shm/{seg.name}")
    finally:
        seg.close()
    assert not os.path.exists(f"/dev/shm/{seg.name}")
    seg.close()  # twice is safe on the owner too


def test_owner_close_with_a_view_still_held(monkeypatch):
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    Segment.create(SMALL).close()  # the resource tracker's pipe opens once per process
    gc.collect()
    fds_before = len(os.listdir(f"/proc/{os.getpid()}/fd"))
    seg = Segment.create(SMALL)
    view = seg.view(KIND_VIDEO, 0, (H, W, 3), np.dtype(np.uint8))
    view[...] = 7
    seg.close()  # the mapping lives while ``view`` does; the name goes now
    assert not os.path.exists(f"/dev/shm/{seg.name}")
    assert int(view[0, 0, 0]) == 7
    del seg  # the segment object may go first...
    gc.collect()
    assert int(view[0, 0, 0]) == 7  # ...the memory stays while the view lives
    del view
    gc.collect()
    assert unraisable == [], "nothing fails later in a finalizer"
    assert len(os.listdir(f"/proc/{os.getpid()}/fd")) == fds_before


@pytest.mark.parametrize("name", ["psm_12345", "rtcpool", "other-rtcpool-1", "/rtcpool-1-x"])
def test_attach_refuses_names_that_are_not_ours(name):
    with pytest.raises(WireError, match="not an rtcpool segment"):
        Segment.attach(name)


def test_attach_of_a_missing_segment():
    with pytest.raises(FileNotFoundError):
        Segment.attach(f"{SEGMENT_PREFIX}{os.getpid()}-doesnotexist")


def _foreign(size: int, header: tuple | None) -> SharedMemory:
    shm = SharedMemory(name=f"{SEGMENT_PREFIX}{os.getpid()}-foreign{random.randrange(1 << 30)}", create=True, size=size)
    if header is not None:
        SEGMENT_HEADER.pack_into(shm.buf, 0, *header)
    return shm


@pytest.mark.parametrize(
    ("size", "header", "match"),
    [
        (4096, (b"XXXX", SEGMENT_VERSION, 1, 64, 1, 64), "magic"),
        (4096, (SEGMENT_MAGIC, SEGMENT_VERSION + 1, 1, 64, 1, 64), "version"),
        (4096, None, "magic"),  # all zeros
        (4096, (SEGMENT_MAGIC, SEGMENT_VERSION, 4, 1 << 20, 1, 64), "smaller than its header says"),
        (8, None, "too small"),
    ],
)
def test_attach_refuses_a_segment_with_a_bad_header(size, header, match):
    shm = _foreign(size, header)
    try:
        with pytest.raises(WireError, match=match):
            Segment.attach(shm.name)
    finally:
        shm.close()
        shm.unlink()


# --- starting a session: offer_link / connect_worker ---------------------------------------------------


def test_offer_link_names_both_segments_in_the_hello():
    sa, sb = socket_pair()
    gw = Side()
    ch = offer_link(sa, Hello("s", "", "", "send-receive", "video", [1], True), SMALL, **gw.callbacks())
    try:
        hello = Control.decode(sb.recv(CONTROL_FRAGMENT_BYTES))
        assert isinstance(hello, Hello)
        assert (hello.up_segment, hello.down_segment) == (ch.tx.name, ch.rx.name)
        assert (hello.session_id, hello.args, hello.args_set) == ("s", [1], True)
        up, down = Segment.attach(hello.up_segment), Segment.attach(hello.down_segment)
        assert up.geometry == down.geometry == SMALL
        up.close()
        down.close()
    finally:
        ch.close(notify=False)
        sb.close()


def test_offer_link_that_cannot_send_leaves_nothing_behind():
    sa, sb = socket_pair()
    sb.close()
    before = own_segments()
    with pytest.raises(OSError):
        offer_link(sa, Hello("s", "", "", "send-receive", "video"), SMALL)
    assert own_segments() == before
    sa.close()


@pytest.fixture
def listener() -> Iterator[tuple[str, socket.socket]]:
    endpoint = f"\0rtcpool-test-{os.getpid()}-{random.randrange(1 << 30)}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind(endpoint)
    srv.listen(1)
    srv.settimeout(WAIT_S)
    yield endpoint, srv
    srv.close()


def test_connect_worker_times_out_and_cleans_up(listener):
    endpoint, srv = listener
    with pytest.raises(TimeoutError, match="sent no ready"):
        connect_worker(endpoint, Hello("s", "", "", "send-receive", "video"), timeout=0.5, geometry=SMALL)
    conn, _ = srv.accept()
    with conn:
        assert isinstance(Control.decode(conn.recv(CONTROL_FRAGMENT_BYTES)), Hello)
        assert Control.decode(conn.recv(CONTROL_FRAGMENT_BYTES)) == Close("worker did not answer")


def test_connect_worker_refused(listener):
    endpoint, srv = listener

    def refuse() -> None:
        conn, _ = srv.accept()
        conn.recv(CONTROL_FRAGMENT_BYTES)
        conn.close()

    t = threading.Thread(target=refuse)
    t.start()
    with pytest.raises(ConnectionError, match="worker closed the session"):
        connect_worker(endpoint, Hello("s", "", "", "send-receive", "video"), timeout=WAIT_S, geometry=SMALL)
    t.join()


def test_connect_worker_happy_path_and_early_controls(listener):
    endpoint, srv = listener
    seen: list[Control] = []

    def worker() -> None:
        conn, _ = srv.accept()
        hello = Control.decode(conn.recv(CONTROL_FRAGMENT_BYTES))
        # a control right behind Ready is the user's, not swallowed by the handshake
        conn.send(Ready(pid=42, node_id="n").encode())
        conn.send(Message("log", hello.session_id).encode())
        conn.recv(16)  # wait for the gateway's close
        conn.close()

    t = threading.Thread(target=worker)
    t.start()
    ch, ready = connect_worker(endpoint, Hello("sess", "", "", "send-receive", "video"), timeout=WAIT_S, geometry=SMALL, on_control=seen.append)
    try:
        assert ready == Ready(pid=42, node_id="n")
        assert pump_until(lambda: seen, ch)
        assert seen == [Message("log", "sess")]
    finally:
        ch.close("done")
        t.join()


def test_closing_while_the_consumer_still_holds_a_frame(link):
    frame = frame_for(5)
    link.gw.ch.send_video(frame)
    link.wk.ch.pump()
    _, view = link.wk.ch.take_video()
    link.wk.ch.close("x")
    link.gw.ch.close("y")
    # the mapping outlives both closes while the view lives (it used to be unmapped: segfault)
    np.testing.assert_array_equal(view, frame)
    view[...] = 1  # still writable memory of this process
    del view


def test_segments_give_back_their_file_descriptors():
    def fds() -> dict[str, str]:
        out = {}
        for fd in os.listdir(f"/proc/{os.getpid()}/fd"):
            try:
                out[fd] = os.readlink(f"/proc/{os.getpid()}/fd/{fd}")
            except FileNotFoundError:  # the listing's own descriptor
                pass
        return out

    Segment.create(SMALL).close()  # the resource tracker's pipe opens once per process
    gc.collect()  # earlier tests' garbage must not close descriptors during the count
    before = fds()
    for i in range(30):
        lk = make_link()
        lk.gw.ch.send_video(frame_for(i))
        lk.wk.ch.pump()
        lk.wk.ch.take_video()  # a cached view exists, but nobody holds it at close
        lk.wk.ch.release_video()
        lk.wk.ch.close()
        lk.gw.ch.close()
        del lk
    gc.collect()
    after = fds()
    assert set(after.values()) - set(before.values()) == set()
    assert len(after) == len(before)


def test_a_control_sent_during_another_ones_fragments_waits_its_turn(link, monkeypatch):
    """Deterministic: thread A pauses after its first fragment until B has tried to send."""
    gw, wk = link.gw.ch, link.wk.ch
    a_paused, b_done = threading.Event(), threading.Event()
    real_send_raw = wk._send_raw

    def send_raw(data: bytes, must: bool) -> bool:
        ok = real_send_raw(data, must)
        mtype = data[STREAM_LENGTH.size] if wk.stream else data[0]
        if mtype == MSG_PART and threading.current_thread().name == "A" and not a_paused.is_set():
            a_paused.set()
            b_done.wait(1.0)  # B is either through (the bug) or blocked until A finishes
        return ok

    monkeypatch.setattr(wk, "_send_raw", send_raw)
    big = Outputs(1, [b"b" * (2 * CONTROL_FRAGMENT_BYTES)])
    a = threading.Thread(target=wk.send_control, args=(big,), name="A")
    a.start()
    assert a_paused.wait(WAIT_S)

    def b() -> None:
        wk.send_control(Message("log", "small"))
        b_done.set()

    tb = threading.Thread(target=b, name="B")
    tb.start()
    a.join(WAIT_S)
    tb.join(WAIT_S)
    assert pump_until(lambda: len(link.gw.controls) == 2 or gw.closed, gw)
    assert not gw.closed, gw.close_reason
    assert link.gw.controls[0].values == big.values
    assert link.gw.controls[1] == Message("log", "small")


def test_controls_from_two_threads_never_interleave_their_fragments(link):
    """The worker sends controls from several threads (handler loops, the link reader's
    warnings): a small control between another's fragments must not end up inside it."""
    gw, wk = link.gw.ch, link.wk.ch
    big = b"b" * (3 * CONTROL_FRAGMENT_BYTES)
    errors: list[BaseException] = []

    def send(make: Callable[[int], Control], n: int) -> None:
        try:
            for i in range(n):
                wk.send_control(make(i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=send, args=(lambda i: Outputs(i, [big]), 40)),
        threading.Thread(target=send, args=(lambda i: Message("log", i), 400)),
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while any(t.is_alive() for t in threads) or len(link.gw.controls) < 440:
        assert time.monotonic() < deadline, f"got {len(link.gw.controls)} of 440"
        assert not gw.closed, gw.close_reason
        gw.pump()
        wk.flush()
        select.select([gw.sock], [], [], 0.005)
    for t in threads:
        t.join()
    assert not errors
    outputs = [m for m in link.gw.controls if isinstance(m, Outputs)]
    logs = [m for m in link.gw.controls if isinstance(m, Message)]
    assert [m.seq for m in outputs] == list(range(40))
    assert all(m.values == [big] for m in outputs)
    assert [m.data for m in logs] == list(range(400))


def test_close_delivers_the_backlog_before_its_close(link):
    """The worker's last words (a large output, then end_stream) must not be cut off."""
    gw, wk = link.gw.ch, link.wk.ch
    big = b"q" * (2 * 1024 * 1024)
    wk.send_control(Outputs(1, [big]))
    wk.send_control(Message("end_stream", "done"))
    assert wk.has_backlog
    closer = threading.Thread(target=wk.close, args=("finished",))
    closer.start()  # blocks until the gateway has taken the backlog
    assert pump_until(lambda: link.gw.closed, gw)
    closer.join(WAIT_S)
    assert not closer.is_alive()
    assert [type(m) for m in link.gw.controls] == [Outputs, Message]
    assert link.gw.controls[0].values == [big]
    assert link.gw.closed == ["finished"]


def test_close_to_a_peer_that_does_not_read_gives_up_without_corrupting(link, monkeypatch):
    monkeypatch.setattr(channel_mod, "CLOSE_FLUSH_TIMEOUT_S", 0.2)
    gw, wk = link.gw.ch, link.wk.ch
    wk.send_control(Outputs(1, [b"q" * (2 * 1024 * 1024)]))
    wk.close("finished")  # returns after the flush timeout: it never waits for ever
    assert wk.closed
    gw.pump()
    # a cut-off message and no Close: the peer sees the link end, not a protocol error
    assert link.gw.closed == ["peer closed the link"]
    assert link.gw.controls == []


# --- the TCP form: a byte stream, messages behind their length, frames carrying their slot ---------


@pytest.fixture
def tcp_link() -> Iterator[Link]:
    lk = make_link(tcp=True)
    yield lk
    lk.close()


def test_tcp_full_size_frames_go_through_partial_sends_in_order():
    """640x480 frames are several times a socket buffer: every send is partial, the rest
    waits in the backlog and leaves on flush; the receiver reassembles across reads."""
    geometry = Geometry(video_slots=4, video_slot_bytes=SLOT_HEADER_BYTES + 480 * 640 * 3)
    lk = make_link(geometry, tcp=True)
    try:
        gw, wk = lk.gw.ch, lk.wk.ch
        rng = np.random.default_rng(7)
        for i in range(12):
            frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
            assert gw.send_video(frame, pts=i)
            assert gw.has_backlog  # the socket took only part of it
            got = pump_until(wk.take_video, gw, wk)
            assert got is not None and got[0].pts == i
            np.testing.assert_array_equal(got[1], frame)
            wk.release_video()
            assert pump_until(lambda: gw.video_in_flight() == 0, gw, wk)
        assert not gw.closed and not wk.closed
    finally:
        lk.close()


def test_tcp_messages_split_at_every_byte_are_reassembled(tcp_link):
    """TCP may cut anywhere: feed a frame, an audio chunk and a control one byte at a time."""
    gw, wk = tcp_link.gw, tcp_link.wk
    raw_a, raw_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    # capture what gw sends by swapping its socket for one whose far end we read
    real = gw.ch.sock
    gw.ch.sock = raw_a
    frame = np.arange(H * W * 3, dtype=np.uint8).reshape(H, W, 3)
    assert gw.ch.send_video(frame, pts=5)
    assert gw.ch.send_audio(np.full((1, AUDIO_N), 7, dtype=np.int16), 48_000, pts=9)
    gw.ch.send_control(Message("hi", [1, 2]))
    raw_b.setblocking(False)
    data = raw_b.recv(1 << 20)
    gw.ch.sock = real
    raw_a.close()
    raw_b.close()
    for i in range(len(data)):
        real.send(data[i : i + 1])
        wk.ch.pump()
    assert not wk.ch.closed, wk.ch.close_reason
    header, view = wk.ch.take_video()
    assert header.pts == 5
    np.testing.assert_array_equal(view, frame)
    assert [h.pts for h, _ in wk.audio] == [9] and int(wk.audio[0][1][0, 0]) == 7
    assert wk.controls == [Message("hi", [1, 2])]


@pytest.mark.parametrize(
    "data, why",
    [
        (STREAM_LENGTH.pack(0), "message of 0 bytes"),
        (STREAM_LENGTH.pack(2**31), "message of 2147483648 bytes"),
        (STREAM_LENGTH.pack(SLOT_MESSAGE.size) + SLOT_MESSAGE.pack(MSG_FRAME, KIND_VIDEO, 0), "shorter than its slot header"),
        (
            STREAM_LENGTH.pack(SLOT_MESSAGE.size + SLOT_HEADER_BYTES + H * W * 3 + 1)
            + SLOT_MESSAGE.pack(MSG_FRAME, KIND_VIDEO, 0)
            + bytes(SLOT_HEADER_BYTES + H * W * 3 + 1),
            "exceeds its slot",
        ),
        (STREAM_LENGTH.pack(5) + SLOT_MESSAGE.pack(MSG_RELEASE, KIND_VIDEO, 0) + b"x", "slot message of 5 bytes"),
        (STREAM_LENGTH.pack(3) + b"Zzz", "unknown link message type"),
    ],
    ids=["empty", "huge", "frame-without-slot", "frame-over-slot", "long-release", "unknown-type"],
)
def test_tcp_protocol_violations_close_with_a_reason(tcp_link, data, why):
    gw, wk = tcp_link.gw.ch, tcp_link.wk.ch
    gw.sock.sendall(data)
    assert pump_until(lambda: wk.closed, wk)
    assert wk.close_reason.startswith("protocol error") and why in wk.close_reason, wk.close_reason


def test_tcp_close_is_framed_and_answered(tcp_link):
    gw, wk = tcp_link.gw, tcp_link.wk
    gw.ch.send_control(Outputs(1, [b"o" * (3 * CONTROL_FRAGMENT_BYTES)]))
    gw.ch.close("bye", notify=True)
    assert pump_until(lambda: wk.ch.closed, wk.ch)
    assert wk.controls == [Outputs(1, [b"o" * (3 * CONTROL_FRAGMENT_BYTES)])]
    assert isinstance(wk.ch.peer_close, Close) and wk.closed == ["bye"]


def test_local_segments_are_not_shared_memory():
    before = all_segments()
    seg = LocalSegment(SMALL)
    view = seg.view(KIND_VIDEO, 0, (H, W, 3), np.dtype("uint8"))
    view[:] = 3
    assert all_segments() == before and seg.name == ""
    del view
    seg.close()
    seg.close()
