"""An event loop's stall guard: who holds the loop, said once per stall (issue 21).

A media process carries every session on one event loop; a callback that blocks it (a
codec, a handler's callback, a slow syscall, a GC pause) freezes all of them, and the load
sampler only sees it afterwards as lag. The guard, after LiveKit's blockguard, is a
watchdog THREAD reading a timestamp the loop stamps every STALL_BEAT_S (a ``call_later``
chain: nothing on the per-frame path). When the loop is overdue past ``warn_s``
(``gateway.loop_stall_warn_ms``) the thread logs one warning with the stack of the loop's
thread at that moment (the code holding it) and how long it has been stalled, and when
the loop beats again one INFO line with the stall's whole duration. Meanwhile :attr:`stalled`
is true, so a readiness probe answered off the loop can say so (MediaProcess.loop_stall).

The watchdog reads the stamp without a lock: a float attribute is written and read whole
under the GIL. It can see a stall only while it gets the GIL itself; a C call that holds the
GIL stalls the watchdog too, and is reported when the GIL comes back (if still stalled).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback

log = logging.getLogger("rtcpool.media.stall")

# how often the loop stamps its heartbeat: one timer callback per beat (20 a second is
# nothing beside a session's packets), and short against any useful threshold, so the
# stall measured is within one beat of the real one
STALL_BEAT_S = 0.05
# how often the watchdog thread looks at the stamp: a stall is reported within this much
# of passing its threshold; the thread sleeps in an Event wait between looks
STALL_CHECK_S = 0.05
STALL_JOIN_TIMEOUT_S = 1.0  # stop() waits this long for the watchdog thread to end
# frames of the loop's stack a warning carries, the innermost kept: enough to reach from
# the blocking call out to the loop's callback under Ray's actor machinery, not a page of it
# (uvloop and Ray's Cython frames do not show: the stack starts at the callback the loop ran)
STALL_STACK_FRAMES = 40


class StallGuard:
    """Watches the running loop of the thread that calls :meth:`start`; ``warn_s`` <= 0:
    disabled (start() does nothing, :attr:`stalled` stays false)."""

    def __init__(self, warn_s: float, beat_s: float = STALL_BEAT_S, check_s: float = STALL_CHECK_S) -> None:
        self.warn_s = warn_s
        self._beat_s = beat_s
        self._check_s = check_s
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0  # threading.get_ident() of the loop's thread
        self._timer: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._last_beat = 0.0  # monotonic time of the loop's last beat (written on the loop)
        self._stall_since: float | None = None  # when the current stall's beat was due (watchdog only)
        self.stalls = 0  # stalls warned about since start

    @property
    def enabled(self) -> bool:
        return self.warn_s > 0

    @property
    def stalled(self) -> bool:
        """The loop is overdue past ``warn_s`` now (read from any thread)."""
        return self._stall_since is not None

    @property
    def stall_s(self) -> float:
        """How long the current stall has lasted so far, in seconds; 0.0 when not stalled."""
        since = self._stall_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def start(self) -> None:
        """Start beating on the running loop and watching from a thread. Called on the
        loop's thread (the stack the warning shows is this thread's); a second call is a no-op."""
        if not self.enabled or self._thread is not None or self._stop.is_set():
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._last_beat = time.monotonic()
        self._timer = self._loop.call_later(self._beat_s, self._beat)
        self._thread = threading.Thread(target=self._watch, name="rtcpool-stall-guard", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        # on the loop: the stamp, and the next beat (none once stopping: the chain ends itself,
        # since a TimerHandle may not be cancelled from another thread)
        self._last_beat = time.monotonic()
        if self._stop.is_set() or self._loop is None:
            self._timer = None
            return
        self._timer = self._loop.call_later(self._beat_s, self._beat)

    def _watch(self) -> None:
        while not self._stop.wait(self._check_s):
            self.check()

    def check(self) -> None:
        """One look at the loop (the watchdog thread's, every STALL_CHECK_S)."""
        if self._loop is None or not self._loop.is_running():
            return  # a loop that has stopped (its owner's shutdown) is gone, not stalled
        last = self._last_beat
        due = last + self._beat_s  # the beat that has not come was due then
        now = time.monotonic()
        if self._stall_since is None:
            if now - due > self.warn_s:
                self._stall_since = due
                self.stalls += 1
                self._warn(now - due)
        elif due > self._stall_since:  # the loop beat again: the stall is over
            took = last - self._stall_since
            self._stall_since = None
            # INFO: the warning was the news; this line only closes it with the whole duration
            log.info("event loop stall ended after %.2f s", took, extra={"rtcpool": {"event": "loop_stall_ended", "stall_s": round(took, 3)}})

    def _warn(self, stalled_s: float) -> None:
        frame = sys._current_frames().get(self._loop_thread)
        stack = "".join(traceback.format_stack(frame, limit=STALL_STACK_FRAMES)) if frame is not None else "(no stack: the loop's thread is gone)\n"
        del frame  # a frame held here would keep the loop's locals alive
        log.warning(
            "event loop stalled for %.2f s (over gateway.loop_stall_warn_ms = %.0f); its thread is at:\n%s",
            stalled_s, 1000 * self.warn_s, stack.rstrip(),
            extra={"rtcpool": {"event": "loop_stall", "stall_s": round(stalled_s, 3)}},
        )  # fmt: skip

    def stop(self, timeout_s: float = STALL_JOIN_TIMEOUT_S) -> None:
        """Stop watching and beating; waits up to ``timeout_s`` for the thread. Safe twice,
        from any thread (off the loop, the beat chain ends at its next beat). A stopped
        guard does not start again."""
        self._halt()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        self._stall_since = None

    async def aclose(self) -> None:
        """:meth:`stop` from a coroutine: the join waits on a thread, not on the loop."""
        self._halt()
        if self._thread is not None:
            await asyncio.to_thread(self.stop)

    def _halt(self) -> None:
        self._stop.set()
        if self._timer is not None and threading.get_ident() == self._loop_thread:
            self._timer.cancel()
            self._timer = None
