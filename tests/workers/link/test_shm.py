"""workers/link/shm.py: segment layout, mode, attach checks, and no segment or descriptor left behind.
"""

from __future__ import annotations

import gc
import os
import random
import stat
import sys
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np
import pytest

from tests.workers.link.pair import (
    SMALL,
    H,
    W,
    all_segments,
    frame_for,
    make_link,
)
from workers.link.shm import SEGMENT_PREFIX, Geometry, LocalSegment, Segment
from workers.link.wire import (
    KIND_AUDIO,
    KIND_VIDEO,
    SEGMENT_HEADER,
    SEGMENT_HEADER_BYTES,
    SEGMENT_MAGIC,
    SEGMENT_VERSION,
    WireError,
)

pytestmark = pytest.mark.usefixtures("no_leaked_segments")



# --- segments ------------------------------------------------------------------------------------------


def test_segment_layout_and_mode():
    seg = Segment.create(SMALL)
    try:
        assert seg.name.startswith(f"{SEGMENT_PREFIX}{os.getpid()}-")
        st = os.stat(f"/dev/shm/{seg.name}")
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.getuid()
        assert st.st_size >= SMALL.size
        assert SEGMENT_HEADER.unpack_from(seg.buf, 0) == (
            SEGMENT_MAGIC,
            SEGMENT_VERSION,
            SMALL.video_slots,
            SMALL.video_slot_bytes,
            SMALL.audio_slots,
            SMALL.audio_slot_bytes,
        )
    finally:
        seg.close()


def test_geometry_offsets_do_not_overlap():
    g = SMALL
    spans = [(g.offset(KIND_VIDEO, i), g.video_slot_bytes) for i in range(g.video_slots)]
    spans += [(g.offset(KIND_AUDIO, i), g.audio_slot_bytes) for i in range(g.audio_slots)]
    assert spans[0][0] == SEGMENT_HEADER_BYTES
    for (a, alen), (b, _) in zip(spans, spans[1:], strict=False):
        assert a + alen == b
    assert spans[-1][0] + spans[-1][1] == g.size
    assert g.capacity(KIND_VIDEO) == H * W * 3
    assert (g.count(KIND_VIDEO), g.count(KIND_AUDIO)) == (4, 8)


def test_default_geometry_holds_a_full_hd_frame_and_100ms_stereo():
    g = Geometry()
    assert g.capacity(KIND_VIDEO) >= 1920 * 1080 * 3
    assert g.capacity(KIND_AUDIO) >= 4800 * 2 * 2
    assert g.video_slot_bytes % 64 == 0 and g.audio_slot_bytes % 64 == 0, "payloads stay aligned"


def test_attach_sees_the_geometry_and_never_unlinks():
    seg = Segment.create(SMALL)
    try:
        other = Segment.attach(seg.name)
        assert other.geometry == SMALL and not other.owner
        other.close()
        other.close()  # twice is safe
        assert os.path.exists(f"/dev/shm/{seg.name}")
    finally:
        seg.close()
    assert not os.path.exists(f"/dev/shm/{seg.name}")
    seg.close()  # twice is safe on the owner too


def test_owner_close_with_a_view_still_held(monkeypatch):
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    Segment.create(SMALL).close()  # the resource tracker's pipe opens once per process
    gc.collect()
    fds_before = len(os.listdir(f"/proc/{os.getpid()}/fd"))
    seg = Segment.create(SMALL)
    view = seg.view(KIND_VIDEO, 0, (H, W, 3), np.dtype(np.uint8))
    view[...] = 7
    seg.close()  # the mapping lives while ``view`` does; the name goes now
    assert not os.path.exists(f"/dev/shm/{seg.name}")
    assert int(view[0, 0, 0]) == 7
    del seg  # the segment object may go first...
    gc.collect()
    assert int(view[0, 0, 0]) == 7  # ...the memory stays while the view lives
    del view
    gc.collect()
    assert unraisable == [], "nothing fails later in a finalizer"
    assert len(os.listdir(f"/proc/{os.getpid()}/fd")) == fds_before


@pytest.mark.parametrize("name", ["psm_12345", "rtcpool", "other-rtcpool-1", "/rtcpool-1-x"])
def test_attach_refuses_names_that_are_not_ours(name):
    with pytest.raises(WireError, match="not an rtcpool segment"):
        Segment.attach(name)


def test_attach_of_a_missing_segment():
    with pytest.raises(FileNotFoundError):
        Segment.attach(f"{SEGMENT_PREFIX}{os.getpid()}-doesnotexist")


def _foreign(size: int, header: tuple | None) -> SharedMemory:
    shm = SharedMemory(name=f"{SEGMENT_PREFIX}{os.getpid()}-foreign{random.randrange(1 << 30)}", create=True, size=size)
    if header is not None:
        SEGMENT_HEADER.pack_into(shm.buf, 0, *header)
    return shm


@pytest.mark.parametrize(
    ("size", "header", "match"),
    [
        (4096, (b"XXXX", SEGMENT_VERSION, 1, 64, 1, 64), "magic"),
        (4096, (SEGMENT_MAGIC, SEGMENT_VERSION + 1, 1, 64, 1, 64), "version"),
        (4096, None, "magic"),  # all zeros
        (4096, (SEGMENT_MAGIC, SEGMENT_VERSION, 4, 1 << 20, 1, 64), "smaller than its header says"),
        (8, None, "too small"),
    ],
)
def test_attach_refuses_a_segment_with_a_bad_header(size, header, match):
    shm = _foreign(size, header)
    try:
        with pytest.raises(WireError, match=match):
            Segment.attach(shm.name)
    finally:
        shm.close()
        shm.unlink()


def test_segments_give_back_their_file_descriptors():
    def fds() -> dict[str, str]:
        out = {}
        for fd in os.listdir(f"/proc/{os.getpid()}/fd"):
            try:
                out[fd] = os.readlink(f"/proc/{os.getpid()}/fd/{fd}")
            except FileNotFoundError:  # the listing's own descriptor
                pass
        return out

    Segment.create(SMALL).close()  # the resource tracker's pipe opens once per process
    gc.collect()  # earlier tests' garbage must not close descriptors during the count
    before = fds()
    for i in range(30):
        lk = make_link()
        lk.gw.ch.send_video(frame_for(i))
        lk.wk.ch.pump()
        lk.wk.ch.take_video()  # a cached view exists, but nobody holds it at close
        lk.wk.ch.release_video()
        lk.wk.ch.close()
        lk.gw.ch.close()
        del lk
    gc.collect()
    after = fds()
    assert set(after.values()) - set(before.values()) == set()
    assert len(after) == len(before)


def test_local_segments_are_not_shared_memory():
    before = all_segments()
    seg = LocalSegment(SMALL)
    view = seg.view(KIND_VIDEO, 0, (H, W, 3), np.dtype("uint8"))
    view[:] = 3
    assert all_segments() == before and seg.name == ""
    del view
    seg.close()
    seg.close()
