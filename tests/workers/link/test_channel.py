"""workers/link/channel.py in one process: two FrameChannels on a socket pair, real shared memory.

Every test checks on the way out that no segment this process created is left in /dev/shm.
"""

from __future__ import annotations

import os
import random
import select
import threading
import time

import numpy as np
import pytest

from tests.workers.link.pair import (
    AUDIO_N,
    SMALL,
    WAIT_S,
    H,
    W,
    all_segments,
    frame_for,
    make_link,
    pump_until,
)
from workers.link import channel as channel_mod
from workers.link.outbox import MAX_BACKLOG_MESSAGES
from workers.link.shm import SEGMENT_PREFIX
from workers.link.wire import (
    DTYPE_CODES,
    KIND_AUDIO,
    KIND_VIDEO,
    LAYOUT_CODES,
    MSG_FRAME,
    MSG_RELEASE,
    SLOT_MESSAGE,
    Args,
    Close,
    Control,
    Error,
    Message,
    Outputs,
    SlotHeader,
    WireError,
)

pytestmark = pytest.mark.usefixtures("no_leaked_segments")



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


def test_a_zero_length_datagram_reads_as_the_peer_leaving(raw):
    raw.send(b"")
    raw.side.ch.pump()
    assert raw.side.closed == ["peer closed the link"]


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
