"""workers/link/connect.py: starting a session (offer_link), and the blocking client the tests use
(tests/workers/link/blocking.py's connect_worker) against a fake worker socket.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.workers.link.blocking import connect_worker, socket_pair
from tests.workers.link.pair import (
    SMALL,
    WAIT_S,
    Side,
    own_segments,
    pump_until,
)
from workers.link.connect import offer_link
from workers.link.framing import CONTROL_FRAGMENT_BYTES
from workers.link.shm import Segment
from workers.link.wire import (
    Close,
    Control,
    Hello,
    Message,
    Ready,
)

pytestmark = pytest.mark.usefixtures("no_leaked_segments")



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
