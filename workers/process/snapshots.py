"""A handler's state kept outside its worker, so a worker that takes its session over can
restore it (docs/failover.md).

A handler opts in by defining ``snapshot()`` and ``restore(value)`` (workers/handlers.py).
The worker sends ``snapshot()``, packed, as a :class:`~workers.link.wire.Snapshot` control
message: every ``snapshot_interval_s`` from the session's stats thread, and when the handler
calls ``save_state()`` (at most that often; a request too soon is sent when the interval is
up). The media process keeps the latest, opaque; a new worker gets it in its Hello and the
handler copy's ``restore()`` runs before its first frame.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from workers.link.wire import Snapshot, packb, unpackb

log = logging.getLogger("rtcpool.worker")


class Snapshots:
    """One session's snapshots. ``send`` puts a control message on the session's link."""

    def __init__(self, handler: Any, send: Callable[[Snapshot], None], interval_s: float, max_bytes: int) -> None:
        take = getattr(handler, "snapshot", None)
        self._take: Callable[[], Any] | None = take if callable(take) and interval_s > 0 else None
        self._send = send
        self.interval_s = interval_s
        self.max_bytes = max_bytes
        self._lock = threading.Lock()  # the stats thread and a handler thread may both send
        self._last_at = float("-inf")  # monotonic, of the last snapshot taken
        self._last: bytes | None = None  # the last one sent: an unchanged state is not sent again
        self._warned: set[str] = set()
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return self._take is not None

    def request(self) -> None:
        """The handler's save_state(): now, or when the interval since the last is up."""
        if self._take is None:
            return
        if time.monotonic() - self._last_at >= self.interval_s:
            self.take()

    def tick(self, now: float) -> None:
        """The stats thread's call: a snapshot once the interval since the last is up."""
        if self._take is not None and now - self._last_at >= self.interval_s:
            self.take()

    def take(self) -> None:
        take = self._take
        if take is None:
            return
        with self._lock:
            self._last_at = time.monotonic()
            try:
                packed = packb(take())
            except Exception as exc:  # the handler's bug (or a value msgpack cannot hold): said once
                self._warn_once("failed", f"snapshot() failed, the handler's state is not kept: {type(exc).__name__}: {exc}")
                return
            if packed == self._last:
                return
            if len(packed) > self.max_bytes:
                self._warn_once("large", f"snapshot() gave {len(packed)} bytes, over the {self.max_bytes}-byte limit: not kept")
                return
            self._last = packed
            try:
                self._send(Snapshot(packed))
                self.sent += 1
            except Exception:
                pass  # a failed link ends the session by its own path

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("%s", message)


def restore(handler: Any, state: bytes | None) -> bool:
    """Give a new handler copy the state its session's last worker saved; True if it took it.
    Raises what the handler's restore() raises."""
    fn = getattr(handler, "restore", None)
    if not isinstance(state, bytes) or not callable(fn):
        return False
    fn(unpackb(state))
    return True
