"""The link's two framings: how one message goes on a socket and how whole messages come off it.

Same host: a connected Unix SOCK_SEQPACKET socket keeps message boundaries, so one message is
one datagram and a frame message names its slot in shared memory (:class:`DatagramFraming`).
Worker on another host: TCP is a byte stream, so each message goes behind its length
(``wire.STREAM_LENGTH``) and a frame message carries its slot's bytes, for the peer's private
copy of the segment (:class:`StreamFraming`). Both read with one loop (:meth:`Framing.receive`),
so a failed read, the peer leaving and a message that breaks the format end the link the same
way on either.

A control message larger than :data:`CONTROL_FRAGMENT_BYTES` goes in parts on either framing
(:func:`control_fragments`, put back together by :class:`ControlParts`).
"""

from __future__ import annotations

import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

from workers.link.wire import MSG_CONTROL, STREAM_LENGTH, WireError

CONTROL_FRAGMENT_BYTES = 48 * 1024  # a control message is cut in datagrams this large
MSG_PART = ord("P")  # a non-final fragment of a control message; the final one is "C"
MAX_CONTROL_BYTES = 16 * 1024 * 1024  # a control message larger than this is refused
DATAGRAM_READ_BYTES = CONTROL_FRAGMENT_BYTES + 64  # receive buffer: the largest datagram a peer sends, and room
STREAM_READ_BYTES = 256 * 1024  # TCP form: first size of the receive buffer (it grows to one frame)

Deliver = Callable[[memoryview, int], None]  # acts on one message of n bytes at the start of the view


def control_fragments(data: bytes) -> list[tuple[bytes | memoryview, ...]]:
    """An encoded control message as the messages that carry it, each as its parts: itself
    when it fits one fragment, else "P" parts and a final "C". Raises before anything is
    sent when it is over :data:`MAX_CONTROL_BYTES`."""
    if len(data) > MAX_CONTROL_BYTES:
        raise WireError(f"control message of {len(data)} bytes exceeds {MAX_CONTROL_BYTES}")
    if len(data) <= CONTROL_FRAGMENT_BYTES:
        return [(data,)]
    body = memoryview(data)[1:]
    step = CONTROL_FRAGMENT_BYTES - 1
    chunks = [body[i : i + step] for i in range(0, len(body), step)]
    part, final = bytes((MSG_PART,)), bytes((MSG_CONTROL,))
    messages: list[tuple[bytes | memoryview, ...]] = [(part, chunk) for chunk in chunks[:-1]]
    messages.append((final, chunks[-1]))
    return messages


class ControlParts:
    """A fragmented control message being put back together, bounded by :data:`MAX_CONTROL_BYTES`."""

    def __init__(self, what: str) -> None:
        self._what = what  # for the error: "control message", "hello"
        self._parts: list[bytes] = []
        self._bytes = 0

    def __bool__(self) -> bool:
        return bool(self._parts)

    def add(self, part: bytes | memoryview) -> None:
        """A part's body (the message without its type byte)."""
        self._bytes += len(part)
        if self._bytes > MAX_CONTROL_BYTES:
            raise WireError(f"fragmented {self._what} exceeds the limit")
        self._parts.append(bytes(part))

    def join(self, final: bytes | memoryview) -> bytes:
        """The whole message, ending with the ``final`` one: its type byte, then every body."""
        self.add(final[1:])
        data = bytes(final[:1]) + b"".join(self._parts)
        self._parts.clear()
        self._bytes = 0
        return data


class Framing(ABC):
    """One socket's framing. The channel keeps what goes out (its backlog); this reads."""

    carries_slots: ClassVar[bool]  # a frame message carries its slot's bytes (the TCP form)

    def __init__(self, sock: socket.socket, max_message: int) -> None:
        self.sock = sock
        self.max_message = max_message  # the largest message the peer may send
        # Datagram form: the peer has closed its end (a send failed), or Linux reported that
        # it closed with messages of ours unread. What it sent before closing -- its Close
        # among them -- still waits to be read: the reader ends the channel when it gets
        # there, not the failed send (test-found: a worker's CloseStream reached the gateway
        # as "link error: Connection reset by peer", the Close behind it unread, and the
        # session counted as a worker death).
        self.hung_up = False

    @abstractmethod
    def message(self, *parts: bytes | memoryview) -> bytes | memoryview:
        """One message, from its parts in order, as it goes on the socket."""

    @abstractmethod
    def back_to_back(self, messages: list[bytes]) -> list[bytes | memoryview]:
        """Messages that must go out in order with nothing between them (a Close and the
        control just ahead of it), as the sends that carry them."""

    def peer_left(self, error: BaseException) -> bool:
        """Whether a failed send means only that the peer closed its end, what it sent before
        still to be read (see ``hung_up``). On a stream any failure ends the link."""
        return False

    def receive(self, deliver: Deliver, stopped: Callable[[], bool]) -> str | None:
        """Read every message waiting on the socket and hand each to ``deliver`` until
        ``stopped()``. Never blocks. The reason the link ended, or None while it is up."""
        while not stopped():
            try:
                n = self._recv()
            except (BlockingIOError, InterruptedError):
                return None
            except ConnectionResetError as exc:
                if self._reset_is_hang_up():
                    continue
                return f"link error: {exc}"
            except OSError as exc:
                return f"link error: {exc}"
            if n == 0:
                return "peer closed the link"
            try:
                self._deliver(n, deliver, stopped)
            except WireError as exc:
                # a peer that breaks the format is not trusted with the session any longer
                return f"protocol error: {exc}"
        return None

    @abstractmethod
    def _recv(self) -> int:
        """One read from the socket into the receive buffer: the bytes read, 0 at its end."""

    @abstractmethod
    def _deliver(self, n: int, deliver: Deliver, stopped: Callable[[], bool]) -> None:
        """Hand on every message the last read of ``n`` bytes completed."""

    def _reset_is_hang_up(self) -> bool:
        return False

    @staticmethod
    @abstractmethod
    def read_message(conn: socket.socket, deadline: float) -> bytes:
        """Blocking, before a channel exists: one message (a session's hello or a part of it),
        b"" when the link closed first. TimeoutError past ``deadline`` (time.monotonic())."""


class DatagramFraming(Framing):
    """SOCK_SEQPACKET: the kernel keeps each message whole; frames stay in shared memory."""

    carries_slots = False

    def __init__(self, sock: socket.socket, max_message: int) -> None:
        super().__init__(sock, max_message)
        self._buf = bytearray(DATAGRAM_READ_BYTES)
        self._view = memoryview(self._buf)
        self._reset_read = False

    def message(self, *parts: bytes | memoryview) -> bytes | memoryview:
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def back_to_back(self, messages: list[bytes]) -> list[bytes | memoryview]:
        return list(messages)

    def peer_left(self, error: BaseException) -> bool:
        cause = error.__cause__ if error.__cause__ is not None else error
        return isinstance(cause, (BrokenPipeError, ConnectionResetError))

    def _recv(self) -> int:
        return self.sock.recv_into(self._buf)

    def _reset_is_hang_up(self) -> bool:
        # Linux reports a peer that closed with messages of ours unread once, on this
        # read, ahead of what the peer sent before closing: read those, then the end
        if self._reset_read:
            return False
        self._reset_read = self.hung_up = True
        return True

    def _deliver(self, n: int, deliver: Deliver, stopped: Callable[[], bool]) -> None:
        deliver(self._view, n)

    @staticmethod
    def read_message(conn: socket.socket, deadline: float) -> bytes:
        _set_timeout(conn, deadline)
        return conn.recv(DATAGRAM_READ_BYTES)


class StreamFraming(Framing):
    """TCP: each message behind its length; a frame message carries its slot's bytes."""

    carries_slots = True

    def __init__(self, sock: socket.socket, max_message: int) -> None:
        super().__init__(sock, max_message)
        self._buf = bytearray(STREAM_READ_BYTES)
        self._view = memoryview(self._buf)
        self._len = 0  # bytes in _buf not yet delivered

    def message(self, *parts: bytes | memoryview) -> bytes | memoryview:
        return b"".join((STREAM_LENGTH.pack(sum(len(p) for p in parts)), *parts))

    def back_to_back(self, messages: list[bytes]) -> list[bytes | memoryview]:
        # one send: a part of a message must not precede the Close
        return [b"".join(self.message(m) for m in messages)]

    def _recv(self) -> int:
        return self.sock.recv_into(self._view[self._len :])

    def _deliver(self, n: int, deliver: Deliver, stopped: Callable[[], bool]) -> None:
        """Deliver every complete message in the buffer, keep the rest."""
        size_bytes = STREAM_LENGTH.size
        self._len += n
        buf, pos, end = self._buf, 0, self._len
        while end - pos >= size_bytes:
            (size,) = STREAM_LENGTH.unpack_from(buf, pos)
            if size == 0 or size > self.max_message:
                raise WireError(f"message of {size} bytes (at most {self.max_message})")
            stop = pos + size_bytes + size
            if stop > end:
                if size_bytes + size > len(buf):
                    self._grow(pos, size_bytes + size)
                    buf, end, pos = self._buf, self._len, 0
                break
            deliver(self._view[pos + size_bytes : stop], size)
            pos = stop
            if stopped():
                return
        if pos:
            rest = end - pos
            buf[:rest] = buf[pos:end]  # same length: the buffer is never resized under a view
            self._len = rest

    def _grow(self, start: int, need: int) -> None:
        """Make room for one message of ``need`` bytes; what is buffered from ``start`` moves along."""
        rest = self._len - start
        grown = bytearray(need)
        grown[:rest] = self._buf[start : self._len]
        self._buf, self._view, self._len = grown, memoryview(grown), rest

    @staticmethod
    def read_message(conn: socket.socket, deadline: float) -> bytes:
        head = _read_exact(conn, STREAM_LENGTH.size, deadline)
        if not head:
            return b""
        (size,) = STREAM_LENGTH.unpack(head)
        if size == 0 or size > CONTROL_FRAGMENT_BYTES + 1:
            raise WireError(f"first message of {size} bytes is not a control message")
        return _read_exact(conn, size, deadline)


def framing_for(sock: socket.socket) -> type[Framing]:
    """The framing of a connected socket: by length on TCP, by datagram on SEQPACKET."""
    return StreamFraming if sock.type == socket.SOCK_STREAM else DatagramFraming


def _read_exact(conn: socket.socket, n: int, deadline: float) -> bytes:
    out = bytearray()
    while len(out) < n:
        _set_timeout(conn, deadline)
        chunk = conn.recv(n - len(out))
        if not chunk:
            if out:
                raise WireError("the link closed in the middle of a message")
            return b""
        out += chunk
    return bytes(out)


def _set_timeout(conn: socket.socket, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("no hello in time")
    conn.settimeout(left)
