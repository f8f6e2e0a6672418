"""workers/process/convert.py's colour conversions: I420 from the gateway to the handler's RGB and the
handler's output back to I420, at even and odd sizes, against a reference BT.601
conversion written out here; then a real Worker session sending I420 both ways."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from tests.conftest import wait_until
from tests.workers.harness import WAIT_S
from tests.workers.link.blocking import connect_worker
from workers.link.shm import Geometry
from workers.link.wire import (
    PIXFMT_I420,
    SLOT_HEADER_BYTES,
    Error,
    Hello,
    chroma_size,
    i420_views,
    video_nbytes,
)
from workers.process.actor import Worker
from workers.process.convert import PixelConverter, as_rgb24

SIZES = [(48, 64), (47, 63), (1, 1), (3, 2), (2, 5), (241, 321)]  # (H, W)
SIZE_IDS = [f"{w}x{h}" for h, w in SIZES]
# rounding of the limited-range steps and of OpenCV's fixed-point coefficients
CONVERSION_TOLERANCE = 2
ROUND_TRIP_TOLERANCE = 3  # RGB -> I420 -> RGB of a picture constant over 2x2 blocks


def reference_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """BT.601 limited range, each chroma sample for its 2x2 block (what the decoders mean)."""
    h, w = y.shape
    uu = np.repeat(np.repeat(u, 2, 0), 2, 1)[:h, :w].astype(float) - 128
    vv = np.repeat(np.repeat(v, 2, 0), 2, 1)[:h, :w].astype(float) - 128
    yy = (y.astype(float) - 16) * 255 / 219
    r = yy + 1.402 * 255 / 224 * vv
    g = yy - (0.299 * 1.402 / 0.587) * 255 / 224 * vv - (0.114 * 1.772 / 0.587) * 255 / 224 * uu
    b = yy + 1.772 * 255 / 224 * uu
    return np.clip(np.stack([r, g, b], -1).round(), 0, 255)


def reference_luma(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(float) for i in range(3))
    return (16 + 219 / 255 * (0.299 * r + 0.587 * g + 0.114 * b)).round()


def reference_chroma(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """U and V of each 2x2 block of a picture constant over its blocks (its top-left pixel)."""
    r, g, b = (rgb[::2, ::2, i].astype(float) for i in range(3))
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    return (128 + 224 / 255 * (b - luma) / 1.772).round(), (128 + 224 / 255 * (r - luma) / 1.402).round()


def block_picture(height: int, width: int, seed: int) -> np.ndarray:
    small = np.random.default_rng(seed).integers(0, 256, chroma_size(height, width) + (3,), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(small, 2, 0), 2, 1)[:height, :width])


def i420_buffer(height: int, width: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    payload = np.zeros(video_nbytes(PIXFMT_I420, height, width), np.uint8)
    return payload, i420_views(payload, height, width)


def near(got: np.ndarray, want: np.ndarray, tolerance: int) -> None:
    assert got.shape == want.shape
    np.testing.assert_allclose(got.astype(float), want.astype(float), atol=tolerance, rtol=0)


@pytest.mark.parametrize(("height", "width"), SIZES, ids=SIZE_IDS)
def test_i420_to_rgb_matches_the_reference(height, width):
    payload, views = i420_buffer(height, width)
    rng = np.random.default_rng(height + width)
    payload[...] = rng.integers(16, 236, payload.size, dtype=np.uint8)  # the decoders' range
    conv = PixelConverter()
    rgb = conv.to_rgb(*views)
    assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    assert not np.shares_memory(rgb, payload)
    near(rgb, reference_rgb(*views[1:]), CONVERSION_TOLERANCE)
    # the handler keeps its frame: the next conversion (same size, reused scratch) is a new array
    again = conv.to_rgb(*views)
    assert not np.shares_memory(again, rgb)
    np.testing.assert_array_equal(again, rgb)


@pytest.mark.parametrize(("height", "width"), SIZES, ids=SIZE_IDS)
def test_rgb_to_i420_matches_the_reference(height, width):
    picture = block_picture(height, width, seed=height * width)
    payload, (packed, y, u, v) = i420_buffer(height, width)
    PixelConverter().to_i420(picture, packed, y, u, v)
    near(y, reference_luma(picture), CONVERSION_TOLERANCE)
    ru, rv = reference_chroma(picture)
    near(u, ru, CONVERSION_TOLERANCE)
    near(v, rv, CONVERSION_TOLERANCE)


@pytest.mark.parametrize(("height", "width"), SIZES, ids=SIZE_IDS)
def test_round_trip_and_an_odd_edge_keeps_its_own_colour(height, width):
    picture = block_picture(height, width, seed=7)
    # an odd size's last column (row) is a chroma block of its own, so its colour may differ
    # from its neighbour's and must come back: the even scratch frame must not blend them
    if width % 2:
        picture[:, -1] = (250, 10, 10)
    if height % 2:
        picture[-1, :] = (10, 10, 250)
    conv = PixelConverter()
    _, views = i420_buffer(height, width)
    conv.to_i420(picture, *views)
    near(conv.to_rgb(*views), picture, ROUND_TRIP_TOLERANCE)


def test_output_forms_a_handler_may_return():
    """Strided, flipped, float and gray outputs (after as_rgb24, as the worker sends them)."""
    base = block_picture(48, 64, seed=1)
    conv = PixelConverter()
    cases: list[tuple[Any, np.ndarray]] = [
        (base[:, ::-1], base[:, ::-1]),
        (np.dstack([base, np.full((48, 64), 255, np.uint8)])[:, :, :3], base),  # RGBA's view
        (base.astype(np.float32) / 255.0, base),
        (base[:, :, 0], np.repeat(base[:, :, :1], 3, axis=2)),
    ]
    for out, want in cases:
        rgb = as_rgb24(out)
        _, views = i420_buffer(*rgb.shape[:2])
        conv.to_i420(rgb, *views)
        near(conv.to_rgb(*views), want, ROUND_TRIP_TOLERANCE + 1)  # the float case rounds once more


# --- a real Worker, I420 both ways -----------------------------------------------------------------

H, W = 47, 63  # odd both ways
OUT_H, OUT_W = 25, 37  # what the handler returns: another odd size, float
GEOMETRY = Geometry(
    video_slots=4,
    video_slot_bytes=SLOT_HEADER_BYTES + H * W * 3,
    audio_slots=2,
    audio_slot_bytes=SLOT_HEADER_BYTES + 960 * 2 * 2,
)


def crop_swap_float(frame: np.ndarray) -> np.ndarray:
    if frame.shape != (H, W, 3) or frame.dtype != np.uint8 or not frame.flags.writeable:
        raise ValueError(f"handler got {frame.shape} {frame.dtype}")
    frame[:2, :2] = 0  # a handler may modify its frame (a whole 2x2 block: one chroma sample)
    return frame[:OUT_H, :OUT_W, ::-1].astype(np.float64)


@pytest.fixture
def worker(make_worker: Callable[..., Worker]) -> Worker:
    return make_worker(crop_swap_float)


@pytest.mark.parametrize("tcp", [False, True], ids=["shm", "tcp"])
def test_a_session_takes_and_gives_i420(worker, tcp):
    hello = Hello(uuid.uuid4().hex, "", "", "send-receive", "video", token=worker.token)
    errors: list[Any] = []
    ch, _ = connect_worker(worker.tcp_endpoint if tcp else worker.endpoint, hello, WAIT_S, GEOMETRY, on_control=errors.append)
    try:
        picture = block_picture(H, W, seed=11)
        sent, views = i420_buffer(H, W)
        PixelConverter().to_i420(picture, *views)
        handler_in = PixelConverter().to_rgb(*views)  # what the handler sees, by the reference path below
        near(handler_in, reference_rgb(*views[1:]), CONVERSION_TOLERANCE)
        got: list[np.ndarray] = []

        def arrived() -> bool:
            ch.pump()
            frame = ch.take_video()
            if frame is not None:
                header, _ = frame
                assert (header.layout, header.shape) == (PIXFMT_I420, (OUT_H, OUT_W, 0))
                got.append(PixelConverter().to_rgb(*ch.i420_planes(header)))
                ch.release_video()
            return bool(got)

        for pts in (1, 2):
            got.clear()
            assert ch.send_i420(*views[1:], pts=pts)
            assert wait_until(arrived, WAIT_S, interval=0.01), "no frame came back"
            want = handler_in[:OUT_H, :OUT_W, ::-1].copy()
            want[:2, :2] = 0
            near(got[-1], want, ROUND_TRIP_TOLERANCE)
        assert [e for e in errors if isinstance(e, Error)] == []
        assert sent.any()
    finally:
        ch.close("test done")
    assert wait_until(lambda: worker.session is None, WAIT_S)
