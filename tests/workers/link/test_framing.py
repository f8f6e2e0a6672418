"""workers/link/framing.py: through two FrameChannels, control fragments on the wire and their
limits and the TCP form (a byte stream, messages behind their length, frames carrying their
slot); then each framing alone on a bare socket pair, which must read and fail alike.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from tests.workers.link.blocking import socket_pair
from tests.workers.link.pair import (
    AUDIO_N,
    SMALL,
    WAIT_S,
    H,
    W,
    frame_for,
    make_link,
    pump_until,
)
from workers.link import framing as framing_mod
from workers.link.channel import FrameChannel
from workers.link.framing import (
    CONTROL_FRAGMENT_BYTES,
    MAX_CONTROL_BYTES,
    MSG_PART,
    ControlParts,
    DatagramFraming,
    Framing,
    StreamFraming,
    control_fragments,
    framing_for,
)
from workers.link.shm import Geometry, Segment
from workers.link.wire import (
    KIND_VIDEO,
    MSG_CONTROL,
    MSG_FRAME,
    MSG_RELEASE,
    SLOT_HEADER_BYTES,
    SLOT_MESSAGE,
    STREAM_LENGTH,
    Args,
    Close,
    Control,
    Error,
    Message,
    Outputs,
    WireError,
)

pytestmark = pytest.mark.usefixtures("no_leaked_segments")



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


# --- the TCP form: a byte stream, messages behind their length, frames carrying their slot ---------


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
    gw.ch.outbox.sock = raw_a
    frame = np.arange(H * W * 3, dtype=np.uint8).reshape(H, W, 3)
    assert gw.ch.send_video(frame, pts=5)
    assert gw.ch.send_audio(np.full((1, AUDIO_N), 7, dtype=np.int16), 48_000, pts=9)
    gw.ch.send_control(Message("hi", [1, 2]))
    raw_b.setblocking(False)
    data = raw_b.recv(1 << 20)
    gw.ch.outbox.sock = real
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


# --- the framings alone: one receive loop, the same reasons on both ------------------------------


def _framing_pair(kind: str) -> tuple[Framing, socket.socket]:
    """A framing on one end of a socket pair of its kind, and the bare other end."""
    sock_type = socket.SOCK_STREAM if kind == "stream" else socket.SOCK_SEQPACKET
    a, b = socket.socketpair(socket.AF_UNIX, sock_type)
    a.setblocking(False)
    return framing_for(a)(a, CONTROL_FRAGMENT_BYTES + 1), b


@pytest.mark.parametrize("kind", ["datagram", "stream"])
def test_framing_for_picks_by_socket_type(kind):
    framing, peer = _framing_pair(kind)
    with framing.sock, peer:
        assert type(framing) is (StreamFraming if kind == "stream" else DatagramFraming)
        assert framing.carries_slots is (kind == "stream")


@pytest.mark.parametrize("kind", ["datagram", "stream"])
def test_receive_delivers_whole_messages_then_reports_the_peer_leaving(kind):
    framing, peer = _framing_pair(kind)
    with framing.sock, peer:
        for body in (b"C1", b"C22", b"C333"):
            peer.sendall(framing.message(body))
        got: list[bytes] = []
        assert framing.receive(lambda view, n: got.append(bytes(view[:n])), lambda: False) is None
        assert got == [b"C1", b"C22", b"C333"]
        peer.close()
        assert framing.receive(lambda view, n: got.append(b"late"), lambda: False) == "peer closed the link"
        assert got == [b"C1", b"C22", b"C333"]


@pytest.mark.parametrize("kind", ["datagram", "stream"])
def test_receive_turns_a_wire_error_into_a_protocol_error_on_either_framing(kind):
    framing, peer = _framing_pair(kind)
    with framing.sock, peer:
        peer.sendall(framing.message(b"Zbad"))

        def refuse(view: memoryview, n: int) -> None:
            raise WireError("unknown link message type 90")

        assert framing.receive(refuse, lambda: False) == "protocol error: unknown link message type 90"


@pytest.mark.parametrize("kind", ["datagram", "stream"])
def test_receive_stops_as_soon_as_told(kind):
    framing, peer = _framing_pair(kind)
    with framing.sock, peer:
        peer.sendall(framing.message(b"C1"))
        peer.sendall(framing.message(b"C2"))
        got: list[bytes] = []
        assert framing.receive(lambda view, n: got.append(bytes(view[:n])), lambda: bool(got)) is None
        assert got == [b"C1"]


@pytest.mark.parametrize("kind", ["datagram", "stream"])
def test_read_message_reads_exactly_one_message_and_times_out(kind):
    framing, peer = _framing_pair(kind)
    conn = framing.sock
    conn.setblocking(True)
    with conn, peer:
        peer.sendall(framing.message(b"C" + b"x" * 100))
        peer.sendall(framing.message(b"Cnext"))
        assert type(framing).read_message(conn, time.monotonic() + WAIT_S) == b"C" + b"x" * 100
        assert type(framing).read_message(conn, time.monotonic() + WAIT_S) == b"Cnext"
        with pytest.raises(TimeoutError):  # the socket's own timeout, or the deadline passed before a read
            type(framing).read_message(conn, time.monotonic() + 0.05)
        peer.close()
        assert type(framing).read_message(conn, time.monotonic() + WAIT_S) == b""


def test_stream_read_message_refuses_a_length_no_control_has_and_a_cut_message():
    framing, peer = _framing_pair("stream")
    conn = framing.sock
    conn.setblocking(True)
    with conn, peer:
        peer.sendall(STREAM_LENGTH.pack(CONTROL_FRAGMENT_BYTES + 2))
        with pytest.raises(WireError, match="is not a control message"):
            StreamFraming.read_message(conn, time.monotonic() + WAIT_S)
    framing, peer = _framing_pair("stream")
    conn = framing.sock
    conn.setblocking(True)
    with conn:
        peer.sendall(STREAM_LENGTH.pack(10) + b"C12")
        peer.close()
        with pytest.raises(WireError, match="in the middle of a message"):
            StreamFraming.read_message(conn, time.monotonic() + WAIT_S)


@pytest.mark.parametrize("size", [1, CONTROL_FRAGMENT_BYTES, CONTROL_FRAGMENT_BYTES + 1, 5 * CONTROL_FRAGMENT_BYTES])
def test_control_fragments_join_back_to_the_message(size):
    data = b"C" + bytes(range(256)) * (size // 256) + b"z" * (size % 256 - 1 if size % 256 else 0)
    data = data[:size] if len(data) >= size else data + b"y" * (size - len(data))
    messages = control_fragments(data)
    assert all(sum(len(p) for p in parts) <= CONTROL_FRAGMENT_BYTES for parts in messages)
    if len(messages) == 1:
        assert messages == [(data,)]
        return
    parts = ControlParts("control message")
    for head, body in messages[:-1]:
        assert head == bytes((MSG_PART,))
        parts.add(body)
    assert messages[-1][0] == bytes((MSG_CONTROL,))
    assert parts.join(b"".join(messages[-1])) == data
    assert not parts  # ready for the next message


def test_control_parts_refuse_more_than_the_limit(monkeypatch):
    monkeypatch.setattr(framing_mod, "MAX_CONTROL_BYTES", 10)
    parts = ControlParts("hello")
    parts.add(b"12345")
    with pytest.raises(WireError, match="fragmented hello exceeds the limit"):
        parts.add(b"123456")
    with pytest.raises(WireError, match="exceeds 10"):
        control_fragments(b"C" + b"x" * 10)
