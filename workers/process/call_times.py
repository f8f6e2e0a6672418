"""How long a session's handler calls took: the worker's side of ``HandlerStats``."""

from __future__ import annotations

import bisect
import threading

from workers.link.wire import HANDLER_BUCKET_COUNT, HANDLER_BUCKETS_S, HandlerStats


class CallTimes:
    """How long a session's handler calls took, in the fixed buckets of ``HANDLER_BUCKETS_S``.

    Timed: the calls that take an input (a frame or audio function, ``receive``,
    ``video_receive``): ``emit``/``video_emit`` and generators block until they have
    something, so their time would be waiting, not work. Per call: two clock reads, a
    bisect into a constant tuple and an uncontended lock (an AudioVideoStreamHandler's
    receive threads record at once); nothing is allocated that a float result does not need.
    The session's stats thread sends the totals to the gateway (``HandlerStats``)."""

    __slots__ = ("counts", "sum_s", "_lock")

    def __init__(self) -> None:
        self.counts = [0] * HANDLER_BUCKET_COUNT
        self.sum_s = 0.0
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        # bisect_left: a call of exactly a bound counts in that bound's bucket ("le")
        i = bisect.bisect_left(HANDLER_BUCKETS_S, seconds)
        with self._lock:
            self.counts[i] += 1
            self.sum_s += seconds

    def report(self) -> HandlerStats:
        with self._lock:
            return HandlerStats(list(self.counts), self.sum_s)


__all__ = ["CallTimes"]
