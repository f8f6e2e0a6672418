"""Shared-memory segments: one per direction of a session, a header then fixed-size slots.

The gateway creates both segments of a session (:meth:`Segment.create`, named
``rtcpool-<pid>-<pid namespace>-<random>``, mode 0600) and unlinks them on close; the worker attaches by name
(:meth:`Segment.attach`), checks the header (layout in ``workers/link/wire.py``) and never
unlinks. :class:`Geometry` gives the slot counts and sizes, so the offset of every slot.
A worker on another host keeps a private copy instead (:class:`LocalSegment`), so the slot
code above is one code path for both forms of the link.
"""

from __future__ import annotations

import functools
import mmap
import os
import struct
import uuid
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from workers.link import constants as C
from workers.link.wire import (
    KIND_VIDEO,
    PIXFMT_I420,
    SEGMENT_HEADER,
    SEGMENT_HEADER_BYTES,
    SEGMENT_MAGIC,
    SEGMENT_VERSION,
    SLOT_HEADER_BYTES,
    WireError,
    i420_views,
    video_nbytes,
)

SEGMENT_PREFIX = "rtcpool-"  # every segment's name starts so; leak tests count them in /dev/shm


@functools.cache
def pid_namespace() -> str | None:
    """This process's pid namespace (the inode of /proc/self/ns/pid), None without /proc.
    A segment's name carries it beside its creator's pid: a janitor may judge the pid only
    in that namespace (runtime/ops/shm_janitor.py)."""
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return None
    inode = link[link.find("[") + 1 : link.rfind("]")]
    return inode if inode.isdigit() else None


def segment_name() -> str:
    """A new segment's name: ``rtcpool-<pid>-<pid namespace>-<random>``; without /proc
    (macOS, whose shm names stop at 31 characters) ``rtcpool-<pid>-<random>``."""
    namespace = pid_namespace()
    middle = f"{namespace}-" if namespace else ""
    return f"{SEGMENT_PREFIX}{os.getpid()}-{middle}{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Geometry:
    """Slot counts and sizes of one segment.

    A video slot holds a largest frame as RGB24 (3 bytes a pixel), the fallback form, so
    any frame the pixel limit lets through fits in either form; an I420 frame (1.5 bytes a
    pixel) fills half of it. Untouched pages of a segment take no memory, so the
    RGB24-sized slot costs only address space while frames go as I420."""

    video_slots: int = C.VIDEO_SLOTS
    video_slot_bytes: int = SLOT_HEADER_BYTES + C.MAX_FRAME_PIXELS * 3
    audio_slots: int = C.AUDIO_SLOTS
    audio_slot_bytes: int = SLOT_HEADER_BYTES + C.AUDIO_SLOT_SAMPLES * C.AUDIO_MAX_CHANNELS * 2

    @property
    def size(self) -> int:
        return (
            SEGMENT_HEADER_BYTES
            + self.video_slots * self.video_slot_bytes
            + self.audio_slots * self.audio_slot_bytes
        )

    def offset(self, kind: int, index: int) -> int:
        if kind == KIND_VIDEO:
            return SEGMENT_HEADER_BYTES + index * self.video_slot_bytes
        return (
            SEGMENT_HEADER_BYTES
            + self.video_slots * self.video_slot_bytes
            + index * self.audio_slot_bytes
        )

    def capacity(self, kind: int) -> int:
        slot = self.video_slot_bytes if kind == KIND_VIDEO else self.audio_slot_bytes
        return slot - SLOT_HEADER_BYTES

    def count(self, kind: int) -> int:
        return self.video_slots if kind == KIND_VIDEO else self.audio_slots


class Segment:
    """One shared-memory segment. The creator owns it and unlinks it on close."""

    def __init__(self, shm: SharedMemory, geometry: Geometry, owner: bool) -> None:
        self.shm = shm
        self.name = shm.name
        self.geometry = geometry
        self.owner = owner
        self.buf: memoryview | None = shm.buf
        # per-slot cached ndarray view, keyed by (shape, dtype): the per-frame path makes none
        self._views: dict[tuple[int, int], tuple[tuple[int, ...], np.dtype, np.ndarray]] = {}
        self._i420: dict[int, tuple[int, int, tuple[np.ndarray, ...]]] = {}  # video slot -> (H, W, views)

    @classmethod
    def create(cls, geometry: Geometry | None = None) -> Segment:
        geometry = geometry or Geometry()
        name = segment_name()
        # SharedMemory creates the segment with mode 0600: private to this user.
        shm = SharedMemory(name=name, create=True, size=geometry.size)
        assert shm.buf is not None  # None only after close()
        SEGMENT_HEADER.pack_into(
            shm.buf,
            0,
            SEGMENT_MAGIC,
            SEGMENT_VERSION,
            geometry.video_slots,
            geometry.video_slot_bytes,
            geometry.audio_slots,
            geometry.audio_slot_bytes,
        )
        return cls(shm, geometry, owner=True)

    @classmethod
    def attach(cls, name: str) -> Segment:
        if not name.startswith(SEGMENT_PREFIX):
            raise WireError(f"not an rtcpool segment: {name!r}")
        shm = SharedMemory(name=name)
        # Python < 3.13 registers attached segments with this process's resource tracker,
        # which would unlink the creator's segment when this process exits. Only the
        # creator (the gateway) owns it. In the creator's own process (tests) the two
        # registrations are one, so leave it.
        if not name.startswith(f"{SEGMENT_PREFIX}{os.getpid()}-"):
            try:
                resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
            except Exception:
                pass
        try:
            assert shm.buf is not None  # None only after close()
            magic, version, vs, vb, as_, ab = SEGMENT_HEADER.unpack_from(shm.buf, 0)
            if magic != SEGMENT_MAGIC or version != SEGMENT_VERSION:
                raise WireError(f"segment {name} has magic {magic!r} version {version}")
            geometry = Geometry(vs, vb, as_, ab)
            if geometry.size > shm.size:
                raise WireError(f"segment {name} is smaller than its header says")
        except struct.error as exc:  # smaller than a header: not ours either
            shm.close()
            raise WireError(f"segment {name} is too small for a header") from exc
        except Exception:
            shm.close()
            raise
        return cls(shm, geometry, owner=False)

    def view(self, kind: int, index: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        key = (kind, index)
        cached = self._views.get(key)
        if cached is not None and cached[0] == shape and cached[1] == dtype:
            return cached[2]
        assert self.buf is not None
        # Test-found (segfault): np.ndarray(buffer=memoryview) keeps only the mmap as its base
        # and holds no buffer export, so close() unmapped under a view still in use.
        # np.frombuffer holds an export: close() then leaves the mapping to the last view.
        arr = np.frombuffer(
            self.buf,
            dtype=dtype,
            count=int(np.prod(shape)),
            offset=self.geometry.offset(kind, index) + SLOT_HEADER_BYTES,
        ).reshape(shape)
        self._views[key] = (shape, dtype, arr)
        return arr

    def i420(self, index: int, height: int, width: int) -> tuple[np.ndarray, ...]:
        """``(packed, y, u, v)`` views of video slot ``index`` for an I420 frame of this size
        (see ``wire.i420_views``), cached per slot like :meth:`view`."""
        cached = self._i420.get(index)
        if cached is not None and cached[0] == height and cached[1] == width:
            return cached[2]
        nbytes = video_nbytes(PIXFMT_I420, height, width)
        views = i420_views(self.view(KIND_VIDEO, index, (nbytes,), np.dtype(np.uint8)), height, width)
        self._i420[index] = (height, width, views)
        return views

    def close(self) -> None:
        if self.buf is None:
            return
        self._views.clear()
        self._i420.clear()
        self.buf = None
        try:
            self.shm.close()
        except BufferError:
            # a caller still holds a view; the mapping goes when it does, the name goes now.
            # The views' buffer export keeps the mmap object alive: let go of it and of the fd
            # here, or SharedMemory.__del__ retries the close later and raises (ignored) then.
            self.shm._mmap = None  # type: ignore[attr-defined]
            if self.shm._fd >= 0:  # type: ignore[attr-defined]
                os.close(self.shm._fd)  # type: ignore[attr-defined]
                self.shm._fd = -1  # type: ignore[attr-defined]
        if self.owner:
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass


class LocalSegment(Segment):
    """A segment private to this process, for the TCP form: the sender's slots, or the
    receiver's copy of them. Anonymous memory: pages are only touched when a slot is used."""

    def __init__(self, geometry: Geometry) -> None:  # no super().__init__: that one maps an shm
        self.shm = None  # type: ignore[assignment]
        self.name = ""
        self.geometry = geometry
        self.owner = True
        self._map: mmap.mmap | None = mmap.mmap(-1, geometry.size)
        self.buf = memoryview(self._map)
        self._views = {}
        self._i420 = {}

    def close(self) -> None:
        if self.buf is None:
            return
        self._views.clear()
        self._i420.clear()
        self.buf.release()
        self.buf = None
        try:
            self._map.close()  # type: ignore[union-attr]
        except BufferError:
            pass  # a caller still holds a view: the mapping goes with it
        self._map = None
