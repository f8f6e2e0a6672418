"""Blocking clients of the link for tests and benchmarks: they play the gateway from a plain
thread, where the gateway itself runs the link from its event loop."""

from __future__ import annotations

import select
import socket
import time
from typing import Any

from workers.link.channel import FrameChannel
from workers.link.connect import offer_link, worker_socket
from workers.link.shm import Geometry
from workers.link.wire import Control, Hello, Ready


def connect_worker(endpoint: str, hello: Hello, timeout: float, geometry: Geometry | None = None, **callbacks: Any) -> tuple[FrameChannel, Ready]:
    """Blocking: connect to a worker's endpoint and start a session (benchmarks, tools)."""
    sock, address = worker_socket(endpoint)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    ready: list[Ready] = []
    user_control = callbacks.pop("on_control", None)

    def first(msg: Control) -> None:
        if isinstance(msg, Ready) and not ready:
            ready.append(msg)
        elif user_control is not None:
            user_control(msg)

    channel = offer_link(sock, hello, geometry, on_control=first, **callbacks)
    deadline = time.monotonic() + timeout
    while not ready and not channel.closed:
        left = deadline - time.monotonic()
        if left <= 0:
            channel.close("worker did not answer")
            raise TimeoutError(f"worker at {endpoint!r} sent no ready within {timeout} s")
        select.select([sock], [sock] if channel.has_backlog else [], [], left)
        channel.pump()  # flushes the backlog (a large Hello's fragments) too
    if not ready:
        reason = channel.close_reason
        channel.close(reason)
        raise ConnectionError(f"worker closed the session: {reason}")
    channel.on_control = user_control
    return channel, ready[0]


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """A connected SEQPACKET pair, for tests and same-process use."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
