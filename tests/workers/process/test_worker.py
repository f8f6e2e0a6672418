"""workers/process/actor.py without Ray: a real Worker in this process, driven over a real link.

The test plays the gateway with tests/workers/link/blocking.py's connect_worker. Handlers that must not
return (a stuck handler makes the worker call os._exit) run in a worker subprocess instead.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import shm_segments, wait_until
from tests.workers.harness import WAIT_S, wait_idle
from tests.workers.link.blocking import connect_worker
from tests.workers.process.worker_process import worker_process_fixture
from workers.handlers import AdditionalOutputs, CloseStream
from workers.link.channel import FrameChannel
from workers.link.connect import worker_socket
from workers.link.shm import SEGMENT_PREFIX, Geometry, Segment
from workers.link.wire import (
    PIXFMT_I420,
    SLOT_HEADER_BYTES,
    STREAM_LENGTH,
    Args,
    Close,
    Control,
    Error,
    Hello,
    Message,
    Outputs,
    Ready,
)
from workers.process.convert import PixelConverter, as_rgb24

REPO = Path(__file__).resolve().parents[3]
H, W = 48, 64
GEOMETRY = Geometry(
    video_slots=4,
    video_slot_bytes=SLOT_HEADER_BYTES + H * W * 3,
    audio_slots=8,
    audio_slot_bytes=SLOT_HEADER_BYTES + 960 * 2 * 2,
)
# the worker's frames come back as I420: a picture constant over each 2x2 block (frame_of)
# returns within rounding of the limited-range YUV steps (2 at most, measured)
I420_ROUND_TRIP_TOLERANCE = 3


pytestmark = pytest.mark.usefixtures("no_leaked_segments")


# --- handlers (module level: they travel to the worker by value, as an app's would) ----------


def invert(frame: np.ndarray) -> np.ndarray:
    return 255 - frame


def fail_on_3(frame: np.ndarray) -> np.ndarray:
    if frame[0, 0, 0] == 3:
        raise ValueError("bad frame 3")
    return frame


def fill_with_args(frame: np.ndarray, level: Any, label: str) -> Any:
    if isinstance(level, np.ndarray):
        level = int(level.sum())
    return np.full_like(frame, level), AdditionalOutputs(label, level)


def outputs_generator(frame: np.ndarray) -> Any:
    v = int(frame[0, 0, 0])
    yield AdditionalOutputs(v, "before")
    yield frame
    yield AdditionalOutputs(v, "after")


def outputs_only(frame: np.ndarray) -> AdditionalOutputs:
    return AdditionalOutputs(int(frame[0, 0, 0]))


def close_on_9(frame: np.ndarray) -> Any:
    if frame[0, 0, 0] == 9:
        return CloseStream("bye from the handler")
    return frame


BIG = b"z" * (2 * 1024 * 1024)


def big_output_then_close(frame: np.ndarray) -> Any:
    yield AdditionalOutputs(BIG)
    yield CloseStream("done")


def gray(frame: np.ndarray) -> np.ndarray:
    return frame[:, :, 0]


def unsendable_output(frame: np.ndarray) -> Any:
    return frame, AdditionalOutputs(object())


# --- helpers ---------------------------------------------------------------------------------


class Gateway:
    """The gateway's side of one session, driven synchronously."""

    def __init__(self, worker: Any, args: list[Any] | None = None, args_set: bool = False, tcp: bool = False) -> None:
        self.controls: list[Control] = []
        self.closed: list[str] = []
        endpoint = worker.tcp_endpoint if tcp else worker.endpoint
        hello = Hello(uuid.uuid4().hex, "", "", "send-receive", "video", list(args or []), args_set, token=worker.token)
        self.ch: FrameChannel
        self.ch, self.ready = connect_worker(
            endpoint, hello, WAIT_S, GEOMETRY, on_control=self.controls.append, on_closed=self.closed.append
        )

    def pump_until(self, pred: Callable[[], Any], timeout: float = WAIT_S) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            if not self.ch.closed:
                self.ch.pump()
                if self.ch.has_backlog:
                    self.ch.flush()
            value = pred()
            if value or time.monotonic() > deadline:
                return value
            if not self.ch.closed:
                select.select([self.ch.sock], [], [], 0.02)
            else:
                time.sleep(0.02)

    def roundtrip(self, frame: np.ndarray, pts: int) -> tuple[Any, np.ndarray]:
        """Send one frame and wait for the worker's frame with the same pts."""
        assert self.ch.send_video(frame, pts=pts, time_base=(1, 90_000))
        got: list[tuple[Any, np.ndarray]] = []

        def arrived() -> bool:
            out = self.ch.take_video()
            if out is not None:
                header, view = out
                rgb = PixelConverter().to_rgb(*self.ch.i420_planes(header)) if header.layout == PIXFMT_I420 else view.copy()
                got.append((header, rgb))
                self.ch.release_video()
            return bool(got) and got[-1][0].pts == pts

        assert self.pump_until(arrived), f"no output for pts {pts}"
        return got[-1]

    def of_type(self, cls: type) -> list[Any]:
        return [m for m in self.controls if isinstance(m, cls)]

    def close(self) -> None:
        self.ch.close("test done")


def frame_of(value: int) -> np.ndarray:
    f = np.full((H, W, 3), value, dtype=np.uint8)
    # not flat, a real picture; constant over each 2x2 block, so that I420's one chroma
    # sample per block loses nothing of it
    f[2:, 2:, 1] = (np.arange(2, W, dtype=np.uint8) // 2 * 6)[None, :]
    return f


def assert_pixels_near(out: np.ndarray, expected: np.ndarray) -> None:
    assert out.shape == expected.shape and out.dtype == np.uint8
    np.testing.assert_allclose(out.astype(int), expected.astype(int), atol=I420_ROUND_TRIP_TOLERANCE, rtol=0)


# --- sessions ----------------------------------------------------------------------------------


LINKS = pytest.mark.parametrize("tcp", [False, True], ids=["shm", "tcp"])


@LINKS
def test_frames_come_back_processed(make_worker, tcp):
    worker = make_worker(invert)
    info = worker.ready()
    assert info.pid == os.getpid() and info.endpoint == worker.endpoint
    assert worker.endpoint.startswith(f"\0rtcpool-{os.getuid()}-{os.getpid()}-")
    assert info.tcp_endpoint == worker.tcp_endpoint and info.token == worker.token
    before = shm_segments()
    gw = Gateway(worker, tcp=tcp)
    # the TCP form shares no memory: no segment exists for it
    assert len(shm_segments() - before) == (0 if tcp else 2)
    assert gw.ch.stream is tcp
    assert isinstance(gw.ready, Ready) and gw.ready.pid == os.getpid()
    for i in range(1, 31):
        frame = frame_of(i * 8)
        header, out = gw.roundtrip(frame, pts=i * 3000)
        assert_pixels_near(out, 255 - frame)
        assert (header.time_base_num, header.time_base_den) == (1, 90_000)
    stats = worker.stats()
    assert stats.busy is True
    assert stats.channel is not None and stats.channel.video_received >= 30
    # the worker counts a frame just after sending it: the gateway may have it first
    assert wait_until(lambda: worker.stats().channel.video_sent == 30, WAIT_S)
    assert gw.of_type(Error) == []
    gw.close()
    wait_idle(worker, 1)
    assert worker.stats().busy is False


def test_handler_exception_reported_and_session_continues(make_worker):
    worker = make_worker(fail_on_3)
    gw = Gateway(worker)
    gw.roundtrip(frame_of(1), pts=1)
    assert gw.ch.send_video(frame_of(3), pts=2)
    assert gw.pump_until(lambda: gw.of_type(Error))
    (err,) = gw.of_type(Error)
    assert err.message == "ValueError: bad frame 3"
    _, out = gw.roundtrip(frame_of(4), pts=3)
    assert_pixels_near(out, frame_of(4))
    assert not gw.ch.closed
    gw.close()
    wait_idle(worker, 1)


def test_args_from_hello_and_updates_reach_the_handler(make_worker):
    worker = make_worker(fill_with_args)
    gw = Gateway(worker, args=[7, "first"], args_set=True)
    _, out = gw.roundtrip(frame_of(0), pts=1)
    assert (out == 7).all()
    # an Args update precedes the next frame on the link, so that frame sees it
    gw.ch.send_control(Args([42, "second"]))
    _, out = gw.roundtrip(frame_of(0), pts=2)
    assert (out == 42).all()
    gw.ch.send_control(Args([np.array([1, 2, 3]), "array"]))
    _, out = gw.roundtrip(frame_of(0), pts=3)
    assert (out == 6).all()
    assert gw.pump_until(lambda: len(gw.of_type(Outputs)) == 3)
    assert [o.values for o in gw.of_type(Outputs)] == [["first", 7], ["second", 42], ["array", 6]]
    gw.close()
    wait_idle(worker, 1)


def test_args_of_one_session_do_not_leak_into_the_next(make_worker):
    worker = make_worker(fill_with_args)
    gw = Gateway(worker, args=[1, "a"], args_set=True)
    gw.ch.send_control(Args([99, "changed"]))
    _, out = gw.roundtrip(frame_of(0), pts=1)
    assert (out == 99).all()
    gw.close()
    wait_idle(worker, 1)
    gw = Gateway(worker, args=[5, "b"], args_set=True)
    _, out = gw.roundtrip(frame_of(0), pts=1)
    assert (out == 5).all()
    gw.close()
    wait_idle(worker, 2)


def test_additional_outputs_arrive_in_order_with_rising_seq(make_worker):
    worker = make_worker(outputs_generator)
    gw = Gateway(worker)
    for i in range(1, 8):
        _, out = gw.roundtrip(frame_of(i), pts=i)
        assert_pixels_near(out, frame_of(i))
        assert gw.pump_until(lambda i=i: len(gw.of_type(Outputs)) == 2 * i)
    outputs = gw.of_type(Outputs)
    assert [o.seq for o in outputs] == list(range(1, 15))
    assert [o.values for o in outputs] == [[i, tag] for i in range(1, 8) for tag in ("before", "after")]
    gw.close()
    wait_idle(worker, 1)


def test_outputs_alone_send_no_frame(make_worker):
    worker = make_worker(outputs_only)
    gw = Gateway(worker)
    for i in range(1, 4):
        assert gw.ch.send_video(frame_of(i), pts=i)
        assert gw.pump_until(lambda i=i: len(gw.of_type(Outputs)) == i)
    assert [o.values for o in gw.of_type(Outputs)] == [[1], [2], [3]]
    assert [o.seq for o in gw.of_type(Outputs)] == [1, 2, 3]
    assert gw.ch.take_video() is None
    assert gw.ch.stats.video_received == 0
    gw.close()
    wait_idle(worker, 1)


def test_an_output_that_cannot_be_sent_is_an_error_not_the_end(make_worker):
    worker = make_worker(unsendable_output)
    gw = Gateway(worker)
    assert gw.ch.send_video(frame_of(1), pts=1)
    assert gw.pump_until(lambda: gw.of_type(Error))
    assert "cannot send a value of type object" in gw.of_type(Error)[0].message
    assert not gw.ch.closed
    gw.close()
    wait_idle(worker, 1)


def test_video_output_is_converted_to_rgb24(make_worker):
    worker = make_worker(gray)
    gw = Gateway(worker)
    frame = frame_of(77)
    _, out = gw.roundtrip(frame, pts=5)
    assert out.shape == (H, W, 3)
    for c in range(3):
        assert_pixels_near(out[:, :, c], frame[:, :, 0])
    gw.close()
    wait_idle(worker, 1)


def test_close_stream_ends_the_session_with_end_stream(make_worker):
    worker = make_worker(close_on_9)
    gw = Gateway(worker)
    gw.roundtrip(frame_of(1), pts=1)
    assert gw.ch.send_video(frame_of(9), pts=2)
    assert gw.pump_until(lambda: gw.closed)
    (end,) = [m for m in gw.of_type(Message) if m.type == "end_stream"]
    assert "bye from the handler" in str(end.data)
    assert gw.controls.index(end) == len(gw.controls) - 1, "end_stream is the last word"
    assert isinstance(gw.ch.peer_close, Close), "the worker closes cleanly, not by dying"
    gw.ch.close(notify=False)
    wait_idle(worker, 1)
    # the worker is ready for the next user
    gw2 = Gateway(worker)
    _, out = gw2.roundtrip(frame_of(2), pts=1)
    assert_pixels_near(out, frame_of(2))
    gw2.close()
    wait_idle(worker, 2)


@LINKS
def test_last_words_before_close_stream_are_delivered(make_worker, tcp):
    """A large output then CloseStream: both arrive, then a clean Close (not a "crash")."""
    worker = make_worker(big_output_then_close)
    gw = Gateway(worker, tcp=tcp)
    assert gw.ch.send_video(frame_of(1), pts=1)
    assert gw.pump_until(lambda: gw.closed)
    assert [type(m) for m in gw.controls] == [Outputs, Message]
    assert gw.controls[0].values == [BIG]
    assert gw.controls[1].type == "end_stream"
    assert isinstance(gw.ch.peer_close, Close)
    gw.ch.close(notify=False)
    wait_idle(worker, 1)


@LINKS
def test_gateway_close_is_answered_and_the_worker_serves_again(make_worker, tcp):
    worker = make_worker(invert)
    for n in range(1, 4):
        gw = Gateway(worker, tcp=tcp)
        gw.roundtrip(frame_of(n), pts=n)
        gw.ch.send_control(Close("the user left"))
        assert gw.pump_until(lambda gw=gw: gw.closed)
        # the worker's own Close comes back, with the session's reason
        assert isinstance(gw.ch.peer_close, Close)
        assert gw.closed == ["the user left"]
        gw.ch.close(notify=False)
        wait_idle(worker, n)


def test_gateway_vanishing_ends_the_session(make_worker):
    worker = make_worker(invert)
    gw = Gateway(worker)
    gw.roundtrip(frame_of(1), pts=1)
    gw.ch.sock.close()  # a gateway process that died says nothing
    wait_idle(worker, 1)
    gw.ch.close(notify=False)  # unlink the segments this side owns
    gw2 = Gateway(worker)
    gw2.roundtrip(frame_of(2), pts=1)
    gw2.close()
    wait_idle(worker, 2)


def test_worker_shutdown_ends_an_active_session(make_worker):
    worker = make_worker(invert)
    gw = Gateway(worker)
    gw.roundtrip(frame_of(1), pts=1)
    worker.shutdown()
    assert gw.pump_until(lambda: gw.closed)
    assert gw.closed == ["worker shutting down"]
    gw.ch.close(notify=False)
    with pytest.raises(OSError):
        Gateway(worker)


def test_a_large_hello_is_accepted(make_worker):
    """A Hello carries the inputs' initial values, which may not fit one datagram."""
    worker = make_worker(fill_with_args)
    big = "x" * 300_000
    gw = Gateway(worker, args=[3, big], args_set=True)
    _, out = gw.roundtrip(frame_of(0), pts=1)
    assert (out == 3).all()
    assert gw.pump_until(lambda: gw.of_type(Outputs))
    assert gw.of_type(Outputs)[0].values == [big, 3]
    gw.close()
    wait_idle(worker, 1)


# --- refused sessions ------------------------------------------------------------------------------


def _raw_session(endpoint: str, first: bytes) -> bytes:
    """Connect, send one message, return what the worker answers (b"" when it hangs up)."""
    sock, address = worker_socket(endpoint)
    sock.settimeout(WAIT_S)
    try:
        sock.connect(address)
        if sock.type == socket.SOCK_STREAM:
            first = STREAM_LENGTH.pack(len(first)) + first
        sock.sendall(first)
        try:
            return sock.recv(65536)
        except ConnectionResetError:
            return b""
    finally:
        sock.close()


def _hello(token: str, up: str = "", down: str = "", geometry: list[int] | None = None) -> bytes:
    return Hello("s", up, down, "send-receive", "video", token=token, geometry=geometry or []).encode()


TCP_GEOMETRY = [GEOMETRY.video_slots, GEOMETRY.video_slot_bytes, GEOMETRY.audio_slots, GEOMETRY.audio_slot_bytes]
BAD_FIRST_MESSAGES: dict[str, tuple[bool, Callable[[str], bytes]]] = {
    # id: (over TCP, the first message given the worker's token)
    "args": (False, lambda t: Args([1]).encode()),  # not a hello
    "garbage": (False, lambda t: b"C\xc1"),  # not msgpack
    "slot-message": (False, lambda t: b"F\x01\x00\x00"),  # not a control
    "no-token": (False, lambda t: _hello("")),
    "wrong-token": (False, lambda t: _hello("0" * len(t))),
    "missing-segments": (False, lambda t: _hello(t, f"{SEGMENT_PREFIX}0-missing", f"{SEGMENT_PREFIX}0-missing")),
    "foreign-segments": (False, lambda t: _hello(t, "psm_foreign", "psm_foreign")),
    "tcp-garbage": (True, lambda t: b"C\xc1"),
    "tcp-no-token": (True, lambda t: _hello("", geometry=TCP_GEOMETRY)),
    "tcp-wrong-token": (True, lambda t: _hello(t[::-1], geometry=TCP_GEOMETRY)),
    "tcp-no-geometry": (True, lambda t: _hello(t)),
    "tcp-huge-geometry": (True, lambda t: _hello(t, geometry=[1, 2**31, 1, 2**31])),
    "tcp-tiny-slots": (True, lambda t: _hello(t, geometry=[1, 8, 1, 8])),
    "tcp-oversize-length": (True, lambda t: b"C" * 100_000),
}


@pytest.mark.parametrize("case", list(BAD_FIRST_MESSAGES))
def test_a_bad_first_message_is_refused_and_the_worker_goes_on(make_worker, case):
    tcp, first = BAD_FIRST_MESSAGES[case]
    worker = make_worker(invert)
    assert _raw_session(worker.tcp_endpoint if tcp else worker.endpoint, first(worker.token)) == b""
    assert worker.sessions_served == 0
    gw = Gateway(worker, tcp=tcp)
    gw.roundtrip(frame_of(1), pts=1)
    gw.close()
    wait_idle(worker, 1)


def test_a_second_gateway_waits_for_the_first_session(make_worker):
    worker = make_worker(invert)
    first = Gateway(worker)
    first.roundtrip(frame_of(1), pts=1)
    # one session at a time: a second connect is queued, its Ready comes when the first ends
    with pytest.raises(TimeoutError):
        connect_worker(worker.endpoint, Hello("second", "", "", "send-receive", "video", token=worker.token), 1.0, GEOMETRY)
    first.close()
    wait_idle(worker, 1)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a peer as another user")
def test_a_peer_of_another_uid_is_refused(make_worker):
    worker = make_worker(invert)
    # real segments: without the uid check this hello would start a session (and get Ready)
    up, down = Segment.create(GEOMETRY), Segment.create(GEOMETRY)
    hello = Hello("s", up.name, down.name, "send-receive", "video", token=worker.token).encode()
    child = textwrap.dedent(
        """
        import socket, sys
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.settimeout(30)
        s.connect(bytes.fromhex(sys.argv[1]).decode())
        try:  # the worker may hang up before the hello is even sent
            s.send(bytes.fromhex(sys.argv[2]))
            got = len(s.recv(65536))
        except (BrokenPipeError, ConnectionResetError):
            got = 0
        print("UID", __import__("os").getuid(), "GOT", got)
        """
    )
    try:
        result = subprocess.run(
            ["/usr/bin/python3", "-c", child, worker.endpoint.encode().hex(), hello.hex()],
            user=65534,
            group=65534,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        up.close()
        down.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["UID", "65534", "GOT", "0"], "the worker hung up without a word"
    assert worker.sessions_served == 0
    gw = Gateway(worker)  # and it still serves its own user
    gw.roundtrip(frame_of(1), pts=1)
    gw.close()
    wait_idle(worker, 1)


# --- handlers that will not stop: in a worker subprocess ---------------------------------------------

worker_process = worker_process_fixture("""
def stuck(frame):
    print("CALLED", flush=True)
    time.sleep(3600)

def endless(frame):
    def frames():
        while True:
            time.sleep(0.01)
            yield frame
    return frames()

HANDLERS = {"stuck": stuck, "endless": endless}
""")


@pytest.mark.slow  # over 2 s: out of the quick subset
def test_a_handler_that_never_returns_makes_the_worker_exit(worker_process):
    wp = worker_process("stuck")
    gw = Gateway(wp)
    assert gw.ch.send_video(frame_of(1), pts=1)
    wp.expect("CALLED")
    gw.ch.send_control(Close("the user left"))
    assert gw.pump_until(lambda: gw.closed)
    assert isinstance(gw.ch.peer_close, Close) and gw.ch.peer_close.retire is True, "it says it will not serve again"
    gw.ch.close(notify=False)
    assert wp.proc.wait(WAIT_S) == 3
    with pytest.raises(OSError):
        Gateway(wp)


@pytest.mark.slow  # over 2 s: out of the quick subset
def test_an_endless_generator_stops_with_its_session(worker_process):
    wp = worker_process("endless")
    gw = Gateway(wp)
    gw.roundtrip(frame_of(1), pts=1)
    gw.ch.send_control(Close("enough"))
    assert gw.pump_until(lambda: gw.closed)
    assert gw.ch.peer_close is not None and gw.ch.peer_close.retire is False
    gw.ch.close(notify=False)
    # the worker did not have to exit: it takes the next session
    gw2 = Gateway(wp)
    gw2.roundtrip(frame_of(2), pts=1)
    gw2.close()
    assert wp.proc.poll() is None


# --- as_rgb24 ---------------------------------------------------------------------------------------


def test_as_rgb24_passes_rgb_uint8_through():
    f = frame_of(5)
    assert as_rgb24(f) is f


def test_as_rgb24_gray_is_replicated():
    g = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = as_rgb24(g)
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], g)


def test_as_rgb24_drops_alpha():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 255
    out = as_rgb24(rgba)
    assert out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [10, 20, 30]


def test_as_rgb24_float_in_unit_range_is_scaled():
    f = np.array([[[0.0, 0.5, 1.0]]], dtype=np.float32)
    assert as_rgb24(f).tolist() == [[[0, 127, 255]]]


def test_as_rgb24_float_above_one_is_taken_as_0_255_and_clipped():
    f = np.array([[[-5.0, 128.7, 300.0]]])
    assert as_rgb24(f).tolist() == [[[0, 128, 255]]]


def test_as_rgb24_wide_ints_are_clipped():
    f = np.array([[[-1, 256, 1000]]], dtype=np.int32)
    assert as_rgb24(f).tolist() == [[[0, 255, 255]]]


def test_as_rgb24_accepts_nested_lists():
    assert as_rgb24([[[1, 2, 3]]]).tolist() == [[[1, 2, 3]]]


@pytest.mark.parametrize("shape", [(4,), (2, 2, 2), (2, 2, 1), (2, 2, 5), (1, 2, 2, 3), ()])
def test_as_rgb24_wrong_shapes_raise(shape):
    with pytest.raises(ValueError, match=r"must be \(H, W, 3\)"):
        as_rgb24(np.zeros(shape, dtype=np.uint8))
