"""runtime/ops/shm_check.py: the slot bytes a config needs, against a real and a small /dev/shm."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from runtime import constants as C
from runtime.config import Config
from runtime.ops import shm_check
from runtime.ops.shm_check import (
    SEGMENTS_PER_SESSION,
    ShmReport,
    check_shm,
    geometry_for,
    needed_for,
    require_shm,
    segment_bytes,
)
from workers.link.shm import Geometry, Segment

MIB = 1024 * 1024
DOCKER_DEFAULT_SHM = 64 * MIB  # what `docker run` gives a container without --shm-size
PAGE = os.sysconf("SC_PAGE_SIZE")


def small_statvfs(free: int, total: int):
    """A statvfs answer for a filesystem with ``free`` of ``total`` bytes (4 KiB blocks)."""
    return lambda path: SimpleNamespace(f_frsize=4096, f_bavail=free // 4096, f_blocks=total // 4096)


def test_segment_bytes_is_a_real_segments_size_in_pages():
    geometry = geometry_for(Config())
    segment = Segment.create(geometry)
    try:
        assert segment.shm.size <= segment_bytes(geometry) < segment.shm.size + PAGE
    finally:
        segment.close()
    assert segment_bytes(geometry) % PAGE == 0


def test_geometry_follows_the_pixel_limit():
    default = geometry_for(Config())
    assert default == Geometry()  # the default config is channel.Geometry's default
    small = geometry_for(Config(gateway={"max_frame_pixels": 640 * 480}))
    assert small.video_slot_bytes == Geometry().video_slot_bytes - (C.MAX_FRAME_PIXELS - 640 * 480) * 3
    assert needed_for(Config(), 3) == 3 * SEGMENTS_PER_SESSION * segment_bytes(default)
    assert needed_for(Config(), 0) == 0
    # at the default limit one session needs ~52 MiB: Docker's 64 MiB holds one, not two
    assert needed_for(Config(), 1) < DOCKER_DEFAULT_SHM < needed_for(Config(), 2)


def test_the_real_dev_shm():
    report = check_shm(0)
    assert isinstance(report, ShmReport)
    assert report.free_bytes is not None and report.total_bytes is not None
    assert 0 <= report.free_bytes <= report.total_bytes and report.ok
    assert require_shm(Config(), 0).ok
    # more than the whole filesystem never fits
    assert not check_shm(report.total_bytes + 1).ok
    with pytest.raises(RuntimeError):
        require_shm(Config(gateway={"max_frame_pixels": C.MAX_FRAME_PIXELS}), report.total_bytes // needed_for(Config(), 1) + 1)


def test_a_docker_sized_dev_shm_is_refused_with_what_to_change(monkeypatch):
    monkeypatch.setattr(shm_check.os, "statvfs", small_statvfs(60 * MIB, DOCKER_DEFAULT_SHM))
    assert require_shm(Config(), 1).ok  # one session fits in 60 MiB
    with pytest.raises(RuntimeError) as caught:
        require_shm(Config(), 4)
    message = str(caught.value)
    for needed in (
        "/dev/shm has 60.0 MiB free (64.0 MiB in all)",
        f"4 concurrent session(s) need {needed_for(Config(), 4) / MIB:.1f} MiB",
        "--shm-size=",
        "emptyDir with medium: Memory",
        "gateway.max_frame_pixels",
        "concurrency_limit",
    ):
        assert needed in message, (needed, message)
    # a lower pixel limit makes the same four fit
    assert require_shm(Config(gateway={"max_frame_pixels": 640 * 360}), 4).ok


def test_a_missing_path_is_not_checked():
    report = check_shm(10**12, "/nonexistent/shm")
    assert report.free_bytes is None and report.ok
