"""Starting a session on the link: the gateway offers it, the worker reads the offer.

The gateway connects to the worker's endpoint (:func:`worker_socket`: ``tcp://host:port`` on
another node, a Unix SEQPACKET address on this one), creates both segments and sends the
worker its Hello (:func:`offer_link`); the worker's Ready comes back as the channel's first
control. The worker reads that Hello before any channel exists (:func:`read_first_control`),
checks its token, and on TCP allocates the geometry the Hello asks for
(:func:`geometry_from_hello`).
"""

from __future__ import annotations

import socket
import time
from typing import Any

from workers.link.channel import FrameChannel
from workers.link.framing import MSG_PART, ControlParts, framing_for
from workers.link.shm import Geometry, LocalSegment, Segment
from workers.link.wire import SLOT_HEADER_BYTES, Control, Hello, WireError

MAX_STREAM_GEOMETRY_BYTES = 512 * 1024 * 1024  # TCP form: a Hello asking for larger segments is refused
TCP_SCHEME = "tcp://"  # a worker endpoint "tcp://host:port" is reached over TCP, any other is a Unix socket


def offer_link(sock: socket.socket, hello: Hello, geometry: Geometry | None = None, **callbacks: Any) -> FrameChannel:
    """Gateway side of a new session on a connected socket: create both segments (this side
    owns them), send the worker its Hello naming them, and return the channel. The worker's
    Ready arrives as the channel's first control message. On a TCP socket the segments are
    private (:class:`LocalSegment`) and the Hello gives their geometry instead of names."""
    geometry = geometry or Geometry()
    make = LocalSegment if sock.type == socket.SOCK_STREAM else Segment.create
    up = make(geometry)
    try:
        down = make(geometry)
    except Exception:
        up.close()
        raise
    hello.up_segment, hello.down_segment = up.name, down.name
    if sock.type == socket.SOCK_STREAM:
        hello.geometry = [geometry.video_slots, geometry.video_slot_bytes, geometry.audio_slots, geometry.audio_slot_bytes]
    # Test-found: the Hello went out as one datagram, so initial args over the worker's 64 KiB
    # read were cut (session refused) and over the socket buffer (~208 KiB) failed with
    # EMSGSIZE. Through the channel it is fragmented like any control; what the socket cannot
    # take yet waits in the backlog (the owner flushes on writable, as for any control).
    channel = FrameChannel(sock, tx=up, rx=down, **callbacks)
    on_closed, channel.on_closed = channel.on_closed, None  # a failure here raises instead
    try:
        channel.send_control(hello)
        if channel.closed or channel.hung_up:
            raise ConnectionError(f"could not send hello: {channel.close_reason or 'the peer closed'}")
    except Exception:
        up.close()
        down.close()
        raise
    channel.on_closed = on_closed
    return channel


def worker_socket(endpoint: str) -> tuple[socket.socket, Any]:
    """A socket for a worker endpoint and the address to connect it to: ``tcp://host:port``
    (another node) or a Unix SEQPACKET address (this node)."""
    if endpoint.startswith(TCP_SCHEME):
        host, _, port = endpoint[len(TCP_SCHEME) :].rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        # frame hand-offs and releases are small messages: Nagle would hold them for an ACK
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, (host, int(port))
    return socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET), endpoint


def read_first_control(conn: socket.socket, timeout: float) -> Control:
    """Blocking: a session's first control message (the Hello), fragments reassembled, on
    either form of the link. Reads exactly that message: the channel takes over after it.
    Test-found: it was read as one datagram of at most 64 KiB, so a Hello with large initial
    args was cut and the session refused."""
    deadline = time.monotonic() + timeout
    read_message = framing_for(conn).read_message
    parts = ControlParts("hello")
    while True:
        data = read_message(conn, deadline)
        if not data:
            raise WireError("the link closed before hello")
        if data[0] != MSG_PART:
            break
        parts.add(data[1:])
    if parts:
        data = parts.join(data)
    return Control.decode(data)


def geometry_from_hello(values: list[int]) -> Geometry:
    """The slot layout a TCP Hello asks for, checked: the peer chooses it, this side allocates it."""
    if len(values) != 4 or not all(isinstance(v, int) and v > 0 for v in values):
        raise WireError(f"hello geometry must be four positive integers, got {values!r}")
    geometry = Geometry(*values)
    if min(geometry.video_slot_bytes, geometry.audio_slot_bytes) <= SLOT_HEADER_BYTES:
        raise WireError("hello geometry has slots smaller than their header")
    if geometry.size > MAX_STREAM_GEOMETRY_BYTES:
        raise WireError(f"hello geometry of {geometry.size} bytes exceeds {MAX_STREAM_GEOMETRY_BYTES}")
    return geometry

