"""What one side of the link sends, in order and never blocking: a message the socket cannot
take yet waits in a bounded backlog behind the earlier ones, and leaves on :meth:`Outbox.flush`
(the owner calls it when the socket is writable). Both framings send through it; only what a
message looks like differs (``framing.py``).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections import deque

from workers.link.framing import Framing

MAX_BACKLOG_MESSAGES = 4096  # messages queued for a peer that stopped reading; past it the channel closes


class Outbox:
    """The sending side of one socket. Thread-safe: the reader and handler threads both send."""

    def __init__(self, sock: socket.socket, framing: Framing) -> None:
        self.sock = sock
        self.framing = framing
        self._lock = threading.Lock()
        self._backlog: deque[bytes | memoryview] = deque()

    @property
    def waiting(self) -> bool:
        """Messages wait for the socket to become writable."""
        return bool(self._backlog)

    def send(self, data: bytes | memoryview, must: bool) -> bool:
        """Send one message. A message that must arrive waits in the backlog behind earlier
        ones when the socket is full; one that need not is dropped (False). False too once the
        peer hung up. Raises OSError when the link failed (see :meth:`peer_left`)."""
        if self.framing.hung_up:
            return False
        with self._lock:
            if self._backlog:
                if not must:
                    return False
                self._backlog.append(data)
                self._flush_locked()
                return True
            try:
                sent = self.sock.send(data)
                if sent < len(data):  # TCP takes part of a message: the rest goes first later
                    self._backlog.append(memoryview(data)[sent:])
            except BlockingIOError:
                if not must:
                    return False
                self._backlog.append(data)
        return True

    def peer_left(self, error: BaseException) -> bool:
        """True (and nothing more goes out) when a send failed because the peer closed its
        end of a datagram link: see ``Framing.hung_up``. Any other failure ends the link."""
        if not self.framing.peer_left(error):
            return False
        with self._lock:
            self.framing.hung_up = True
            self._backlog.clear()  # nothing will ever take it
        return True

    def flush(self) -> None:
        """Send what the socket takes now. ConnectionError when the link failed."""
        with self._lock:
            self._flush_locked()

    def drain(self, timeout: float) -> bool:
        """Blocking: flush the backlog, waiting for the socket to be writable. True when empty."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                try:
                    self._flush_locked()
                except ConnectionError:
                    return False
                if not self._backlog:
                    return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([], [self.sock], [], left)

    def _flush_locked(self) -> None:
        while self._backlog:
            head = self._backlog[0]
            try:
                sent = self.sock.send(head)
            except BlockingIOError:
                break
            except OSError as exc:
                raise ConnectionError(str(exc)) from exc
            if sent < len(head):
                self._backlog[0] = memoryview(head)[sent:]
                break
            self._backlog.popleft()
        if len(self._backlog) > MAX_BACKLOG_MESSAGES:
            # the peer has stopped reading: treat it as gone rather than buffer without bound
            self._backlog.clear()
            raise ConnectionError("peer stopped reading")
