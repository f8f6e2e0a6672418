"""Whether /dev/shm can hold the frame slots the gateway is configured for.

Each session on this node has two shared-memory segments (gateway -> worker and back,
``workers/link/connect.py``'s ``offer_link``), each sized by :class:`~workers.link.shm.Geometry`.
/dev/shm is a tmpfs: a segment is created at full size but takes pages only when they are
written, so a /dev/shm too small for the configured slots does not fail at start-up or at
an offer. It fails later, in the middle of a frame, with SIGBUS in whichever process
writes the first page that does not fit. Docker gives a container 64 MiB of /dev/shm, less
than two sessions at the default pixel limit. Checked at start-up instead, with a message
that says what to change.

The check counts every page of every segment: video slots are RGB24-sized (the fallback
form), so a stream sending I420 touches about half of them, but a frame that falls back to
RGB24 touches all, and the check is for the worst case.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workers.link.shm import Geometry
from workers.link.wire import SLOT_HEADER_BYTES

if TYPE_CHECKING:
    from runtime.config import Config

SHM_PATH = "/dev/shm"  # where Python's SharedMemory (POSIX shm_open) puts segments on Linux
SEGMENTS_PER_SESSION = 2  # one segment per direction (connect.offer_link)
VIDEO_BYTES_PER_PIXEL = 3  # a video slot holds a largest frame as RGB24 (channel.Geometry)
MIB = 1024 * 1024  # bytes, for messages


@dataclass(frozen=True)
class ShmReport:
    """What /dev/shm holds against what the configured slots need, in bytes."""

    path: str
    needed_bytes: int
    free_bytes: int | None  # None: the path does not exist (no tmpfs to check, e.g. macOS)
    total_bytes: int | None

    @property
    def ok(self) -> bool:
        return self.free_bytes is None or self.free_bytes >= self.needed_bytes


def geometry_for(config: Config) -> Geometry:
    """The slot geometry of a session under ``config`` (as ``MediaEngine`` builds it:
    video slots hold ``gateway.max_frame_pixels`` as RGB24)."""
    return Geometry(video_slot_bytes=SLOT_HEADER_BYTES + config.gateway.max_frame_pixels * VIDEO_BYTES_PER_PIXEL)


def segment_bytes(geometry: Geometry) -> int:
    """Bytes of /dev/shm one segment can take once every slot has been written: its size,
    rounded up to whole pages (tmpfs allocates pages)."""
    page = os.sysconf("SC_PAGE_SIZE")
    return -(-geometry.size // page) * page


def needed_for(config: Config, sessions: int) -> int:
    """Bytes of /dev/shm that ``sessions`` concurrent sessions on this node can take."""
    return sessions * SEGMENTS_PER_SESSION * segment_bytes(geometry_for(config))


def check_shm(needed_bytes: int, path: str = SHM_PATH) -> ShmReport:
    """Free and total space of the filesystem at ``path``, against ``needed_bytes``."""
    try:
        stat = os.statvfs(path)
    except FileNotFoundError:
        return ShmReport(path, needed_bytes, None, None)
    # f_bavail: blocks an unprivileged process may use (tmpfs has no reserve; others may)
    return ShmReport(path, needed_bytes, stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize)


def require_shm(config: Config, sessions: int, path: str = SHM_PATH) -> ShmReport:
    """:func:`check_shm` for ``sessions`` under ``config``; raises RuntimeError, saying what
    to change, when the free space cannot hold them."""
    report = check_shm(needed_for(config, sessions), path)
    if report.ok:
        return report
    assert report.free_bytes is not None and report.total_bytes is not None
    segment = segment_bytes(geometry_for(config))
    pixels = config.gateway.max_frame_pixels
    raise RuntimeError(
        f"{path} has {report.free_bytes / MIB:.1f} MiB free ({report.total_bytes / MIB:.1f} MiB in all), "
        f"but {sessions} concurrent session(s) need {report.needed_bytes / MIB:.1f} MiB "
        f"({SEGMENTS_PER_SESSION} segments of {segment / MIB:.1f} MiB each, for "
        f"gateway.max_frame_pixels={pixels}); a session that outgrows it dies with SIGBUS. "
        f"Give {path} more room: Docker `--shm-size={_suggest_mib(report.needed_bytes)}m` "
        "(compose: shm_size); Kubernetes/KubeRay: mount an emptyDir with medium: Memory at "
        f"/dev/shm in the Ray pod template (sizeLimit >= {_suggest_mib(report.needed_bytes)}Mi). "
        "Or need less: lower gateway.max_frame_pixels, or the streams' "
        "concurrency_limit / pool.max_workers."
    )


def _suggest_mib(needed_bytes: int) -> int:
    """A size to suggest: what is needed, plus a quarter for Ray and others, in whole MiB."""
    return -(-needed_bytes * 5 // 4 // MIB)
