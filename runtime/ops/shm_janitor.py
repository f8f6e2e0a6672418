"""Remove the shared-memory segments of rtcpool processes that died without removing them.

A session's two segments (``workers/link/shm.py``) are unlinked by the process that made
them when the session ends. A process killed with SIGKILL (an OOM kill, a harness, Ray
ending a dead driver's actors) unlinks nothing, and /dev/shm is memory: a 1080p session's
segments hold ~52 MiB until the host reboots (issue 20, item 22: 313 MB left by killed
servers). So a gateway sweeps /dev/shm when it starts, before its space check, and every
``gateway.shm_janitor_interval_s`` after that.

A segment is removed only when all of these hold, so a live session's never is:

* its name is ``rtcpool-<pid>-<pid namespace>-...`` (``Segment.create``), and that
  namespace is ours (``/proc/self/ns/pid``): a /dev/shm shared with a container that has
  pids of its own (``--ipc=host``) holds names whose pids mean nothing here. Names of the
  older form (no namespace) are left alone: they cannot be told apart;
* the file belongs to this user (``st_uid``): another user's segments are theirs to mind,
  and we could not map them anyway;
* its creator is gone: no process has that pid, or the process that has it now started
  after the segment was last written (st_mtime), so it cannot have made it (the pid was
  reused), and does not map it either. Start times were chosen over /proc/<pid>/cmdline,
  which cannot tell a restarted rtcpool that got the same pid from the dead one. A start
  time is known to a clock tick (10 ms) and the two clocks compared are read apart, hence
  PID_REUSE_MARGIN_S; the map check (/proc/<pid>/maps) keeps a live creator's segment
  should the wall clock have been stepped forward since it was made. It is not the only
  check: a creator maps its segment only from just after it makes it.

Removing the name frees nothing a live process still maps (a worker attached to a dead
gateway's segment keeps its mapping until it lets go); the pages go with the last mapping.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass

from workers.link.shm import SEGMENT_PREFIX, pid_namespace

log = logging.getLogger("rtcpool.shm")

SHM_DIR = "/dev/shm"  # where POSIX shm_open puts segments on Linux
# a live pid counts as reused only if its process started this long after the segment was
# last written: the start time is in clock ticks since boot, read against the wall clock
PID_REUSE_MARGIN_S = 2.0
MIB = 1024 * 1024  # bytes, for the log line
STOP_JOIN_S = 1.0  # stop(): how long to wait for a sweep in progress (one listdir, some stats)


@dataclass(frozen=True)
class Sweep:
    """What one sweep removed."""

    segments: int
    bytes: int  # their sizes (st_size) in all


def creator_of(name: str, namespace: str) -> int | None:
    """The creator pid in a segment name of ours made in ``namespace``, else None."""
    if not name.startswith(SEGMENT_PREFIX):
        return None
    parts = name[len(SEGMENT_PREFIX) :].split("-")
    if len(parts) < 3 or not parts[0].isdigit() or parts[1] != namespace:
        return None
    return int(parts[0])


def process_started_at(pid: int) -> float | None:
    """When process ``pid`` started, in wall-clock seconds; None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError):
        return None
    # field 22, starttime, in clock ticks after boot; the command (field 2) may hold spaces
    # and parentheses, so count from the last ')'
    fields = stat[stat.rindex(b")") + 2 :].split()
    started_after_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return time.time() - (uptime - started_after_boot)


def maps_file(pid: int, path: str) -> bool:
    """Whether process ``pid`` has ``path`` mapped (False if its maps cannot be read: then it
    is not this user's process, and so not the creator of this user's segment)."""
    needle = (" " + path + "\n").encode()
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            return needle in f.read()
    except OSError:
        return False


def creator_gone(pid: int, path: str, written_at: float, margin_s: float = PID_REUSE_MARGIN_S) -> bool:
    """True when no live process can have made the segment at ``path``, last written at
    ``written_at``, and pid ``pid`` is not using it."""
    started = process_started_at(pid)
    if started is None:
        return True  # no such process (or it ended while we looked)
    return started > written_at + margin_s and not maps_file(pid, path)


def sweep(shm_dir: str = SHM_DIR, margin_s: float = PID_REUSE_MARGIN_S) -> Sweep:
    """Remove this user's rtcpool segments in ``shm_dir`` whose creator is gone; log one line
    when any was removed. Cheap: one listdir, one stat per rtcpool name."""
    namespace = pid_namespace()
    if namespace is None:
        return Sweep(0, 0)  # no /proc (not Linux): creators cannot be checked
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return Sweep(0, 0)
    uid, removed, freed = os.getuid(), 0, 0
    for name in names:
        pid = creator_of(name, namespace)
        if pid is None or pid == os.getpid():
            continue
        path = os.path.join(shm_dir, name)
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            continue  # removed meanwhile (its session ended)
        if st.st_uid != uid or not creator_gone(pid, path, st.st_mtime, margin_s):
            continue
        with contextlib.suppress(FileNotFoundError):  # another gateway's janitor was first
            os.unlink(path)
            removed += 1
            freed += st.st_size
    if removed:
        log.warning(
            "removed %d shared-memory segment(s), %.1f MiB, left in %s by rtcpool processes that died",
            removed,
            freed / MIB,
            shm_dir,
        )
    return Sweep(removed, freed)


class Janitor:
    """Sweeps every ``interval_s`` on a daemon thread until :meth:`stop` (0: never)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.interval_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rtcpool-shm-janitor", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                sweep()
            except Exception as exc:  # a janitor must not take the gateway down
                log.warning("shared-memory sweep failed: %s", exc)

    def stop(self) -> None:
        """Safe to call twice; a sweep in progress finishes."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=STOP_JOIN_S)


_janitor: Janitor | None = None  # one per process, however many gateways it runs
_janitor_lock = threading.Lock()


def start_janitor(interval_s: float) -> Sweep:
    """Sweep now, and every ``interval_s`` from a thread of this process's (started once)."""
    global _janitor
    done = sweep()
    with _janitor_lock:
        if _janitor is None:
            _janitor = Janitor(interval_s)
            _janitor.start()
    return done
