"""A session's handler threads at its end: which returned, which are parked (blocked in the
handler, using no CPU: left behind, they only hold memory) and which still run (stuck: the
worker retires rather than let them compete with the next session)."""

from __future__ import annotations

import threading
import time

PARKED_THREAD_CPU_S = 0.05  # a handler thread using less CPU than this while joined is parked, not busy


def _thread_cpu_s(thread: threading.Thread) -> float:
    """CPU seconds a live thread has used (0 once it has ended)."""
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))  # type: ignore[arg-type]
    except (OSError, TypeError, ValueError):
        return 0.0


def join_handler_threads(
    threads: list[threading.Thread], timeout: float, can_park: bool
) -> tuple[list[threading.Thread], bool]:
    """Join a session's handler threads for up to ``timeout`` s. Returns the ones still
    blocked inside the handler and using no CPU (parked: the seeds' EchoHandler waits in
    ``queue.get()`` forever once the audio stops), and whether any other is still alive
    (stuck). With ``can_park`` False every thread still alive is stuck."""
    cpu0 = {t: _thread_cpu_s(t) for t in threads}
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t for t in threads if t.is_alive()]
    if not can_park:
        return [], bool(alive)
    parked = [t for t in alive if _thread_cpu_s(t) - cpu0[t] < PARKED_THREAD_CPU_S]
    return parked, len(parked) < len(alive)


__all__ = ["join_handler_threads"]
