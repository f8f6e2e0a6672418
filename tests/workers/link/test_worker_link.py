"""How a worker takes a session: a token per lease, and hellos read off the accept loop.

A real Worker in this process (no Ray), a real link from tests/workers/link/blocking.py's connect_worker. The
scheduler's side (minting a token per lease, arming the worker over Ray) is proven in
tests/control/test_scheduler.py.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from runtime import constants as C
from tests.conftest import wait_until
from tests.workers.harness import WAIT_S, wait_idle
from tests.workers.link.blocking import connect_worker
from workers.link.channel import FrameChannel
from workers.link.connect import worker_socket
from workers.link.shm import Geometry
from workers.link.wire import PIXFMT_I420, SLOT_HEADER_BYTES, STREAM_LENGTH, Close, Control, Hello
from workers.process.actor import HELLO_TIMEOUT_S, Worker
from workers.process.convert import PixelConverter
from workers.process.loader import make_spec

H, W = 16, 16
GEOMETRY = Geometry(
    video_slots=4,
    video_slot_bytes=SLOT_HEADER_BYTES + H * W * 3,
    audio_slots=4,
    audio_slot_bytes=SLOT_HEADER_BYTES + 960 * 2 * 2,
)
TCP_GEOMETRY = [GEOMETRY.video_slots, GEOMETRY.video_slot_bytes, GEOMETRY.audio_slots, GEOMETRY.audio_slot_bytes]
SILENT_PEERS = 3  # read inline, these would hold a session start for 3 x the hello timeout


def invert(frame: np.ndarray) -> np.ndarray:
    return 255 - frame


pytestmark = pytest.mark.usefixtures("no_leaked_segments")


@pytest.fixture
def worker(make_worker: Callable[..., Worker]) -> Worker:
    return make_worker(invert)


@pytest.fixture
def silent() -> Iterator[Callable[[str], socket.socket]]:
    """Peers that connect and say nothing (a port scanner, a load balancer's health check)."""
    opened: list[socket.socket] = []

    def connect(endpoint: str) -> socket.socket:
        sock, address = worker_socket(endpoint)
        sock.settimeout(WAIT_S)
        sock.connect(address)
        opened.append(sock)
        return sock

    yield connect
    for sock in opened:
        sock.close()


def open_session(worker: Worker, token: str, tcp: bool = True, timeout: float = C.WORKER_CONNECT_TIMEOUT_S) -> FrameChannel:
    """The gateway's start of a session, with the gateway's own wait for Ready."""
    hello = Hello(uuid.uuid4().hex, "", "", "send-receive", "video", token=token)
    ch, _ready = connect_worker(worker.tcp_endpoint if tcp else worker.endpoint, hello, timeout, GEOMETRY)
    return ch


def roundtrip(ch: FrameChannel, value: int) -> np.ndarray:
    frame = np.full((H, W, 3), value, dtype=np.uint8)
    assert ch.send_video(frame, pts=value, time_base=(1, 90_000))
    got: list[np.ndarray] = []

    def arrived() -> bool:
        ch.pump()
        out = ch.take_video()
        if out is not None:
            header, view = out
            # the worker sends I420: a flat gray comes back within 1 (measured for every level)
            got.append(PixelConverter().to_rgb(*ch.i420_planes(header)) if header.layout == PIXFMT_I420 else view.copy())
            ch.release_video()
        return bool(got)

    assert wait_until(arrived, WAIT_S, interval=0.01), "no frame came back"
    np.testing.assert_allclose(got[-1].astype(int), 255 - frame.astype(int), atol=1, rtol=0)
    return got[-1]


def first_reply(endpoint: str, token: str) -> Control | None:
    """Send a TCP hello by hand; the worker's first message (None: it hung up or said nothing)."""
    sock, address = worker_socket(endpoint)
    sock.settimeout(WAIT_S)
    try:
        sock.connect(address)
        data = Hello("raw", "", "", "send-receive", "video", token=token, geometry=TCP_GEOMETRY).encode()
        sock.sendall(STREAM_LENGTH.pack(len(data)) + data)
        head = sock.recv(STREAM_LENGTH.size, socket.MSG_WAITALL)
        if len(head) < STREAM_LENGTH.size:
            return None
        (size,) = STREAM_LENGTH.unpack(head)
        return Control.decode(sock.recv(size, socket.MSG_WAITALL))
    except (ConnectionResetError, TimeoutError):
        return None
    finally:
        sock.close()


# --- hellos are read off the accept loop -----------------------------------------------------------


@pytest.mark.parametrize("tcp", [True, False], ids=["tcp", "shm"])
def test_silent_peers_connected_first_do_not_hold_up_a_session(worker, silent, tcp):
    for _ in range(SILENT_PEERS):
        silent(worker.tcp_endpoint)
    silent(worker.endpoint)
    started = time.monotonic()
    ch = open_session(worker, worker.token, tcp=tcp)  # within the gateway's own Ready wait
    assert time.monotonic() - started < C.WORKER_CONNECT_TIMEOUT_S
    roundtrip(ch, 10)
    # one more silent peer while the session runs: the session does not notice
    silent(worker.tcp_endpoint)
    roundtrip(ch, 20)
    ch.close("done")
    wait_idle(worker, 1)
    # and the next session starts as promptly, with every silent peer still connected
    ch = open_session(worker, worker.token, tcp=tcp)
    roundtrip(ch, 30)
    ch.close("done")
    wait_idle(worker, 2)


@pytest.mark.slow
def test_a_silent_peer_is_hung_up_on_after_the_hello_timeout(worker, silent):
    sock = silent(worker.tcp_endpoint)
    started = time.monotonic()
    assert sock.recv(1) == b"", "the worker hangs up on a peer that says nothing"
    assert HELLO_TIMEOUT_S * 0.5 <= time.monotonic() - started < WAIT_S


# --- one session per token -------------------------------------------------------------------------


def test_an_armed_token_opens_one_session_and_replaces_the_one_before(worker):
    old = worker.token
    token = secrets.token_hex(16)
    worker.arm(token)
    assert first_reply(worker.tcp_endpoint, old) is None, "the token armed before is void"
    ch = open_session(worker, token)
    roundtrip(ch, 5)
    ch.close("done")
    wait_idle(worker, 1)
    assert first_reply(worker.tcp_endpoint, token) is None, "a spent token opens nothing"
    assert worker.token not in (old, token), "after a session the worker arms a token nobody knows"
    assert worker.sessions_served == 1
    with pytest.raises(ValueError, match="128 bits"):
        worker.arm("short")


def test_a_second_valid_hello_while_one_waits_is_refused_with_a_close(worker):
    first = open_session(worker, worker.token)
    roundtrip(first, 1)
    # the next lease's token arrives while this session still runs (its lease was released
    # as its link closed): that hello waits for the serve thread instead of failing
    waiting_token = secrets.token_hex(16)
    worker.arm(waiting_token)
    second: list[Any] = []
    opener = threading.Thread(target=lambda: second.append(open_session(worker, waiting_token, timeout=WAIT_S)))
    opener.start()
    assert wait_until(lambda: worker.token != waiting_token, WAIT_S), "the waiting hello was not read"
    # another valid hello now has no place: it is told so, not left to time out
    extra = secrets.token_hex(16)
    worker.arm(extra)
    reply = first_reply(worker.tcp_endpoint, extra)
    assert isinstance(reply, Close) and "busy" in reply.reason
    first.close("done")
    opener.join(WAIT_S)
    [ch] = second
    roundtrip(ch, 2)
    ch.close("done")
    wait_idle(worker, 2)


def test_the_tcp_listener_binds_the_address_it_is_given():
    """The embedded local Ray binds workers' TCP listeners to loopback (any other host is
    shut out); the address comes from the worker's init argument."""
    w = Worker(make_spec(invert, 0), event_id="t-link-host", tcp_host="127.0.0.2")
    try:
        assert w.tcp_endpoint.startswith("tcp://127.0.0.2:")
        ch = open_session(w, w.token)
        roundtrip(ch, 7)
        ch.close("done")
        wait_idle(w, 1)
    finally:
        w.shutdown()
