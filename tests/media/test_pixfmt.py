"""Video in I420 across the channel: the slot header's pixel-format codes, the planes'
layout at even and odd sizes in both forms of the link, and the gateway's side of it
(runtime/media/frames.py): views of a decoded frame's padded planes, the reusable encoder frame."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc.codecs.vpx import vp8_depayload

from runtime.media.frames import EncoderFrame, plane_views
from runtime.media.vp8_encoder import GatewayVp8Encoder
from tests.workers.link.blocking import socket_pair
from workers.link.channel import FrameChannel
from workers.link.shm import Geometry, LocalSegment, Segment
from workers.link.wire import (
    DTYPE_CODES,
    KIND_VIDEO,
    MSG_FRAME,
    PIXFMT_I420,
    PIXFMT_RGB24,
    PIXFMTS,
    SLOT_HEADER_BYTES,
    SLOT_MESSAGE,
    STREAM_LENGTH,
    SlotHeader,
    WireError,
    chroma_size,
    i420_views,
    video_nbytes,
)

MAX_W, MAX_H = 96, 64
GEOMETRY = Geometry(
    video_slots=4,
    video_slot_bytes=SLOT_HEADER_BYTES + MAX_W * MAX_H * 3,  # sized for the RGB24 fallback
    audio_slots=2,
    audio_slot_bytes=SLOT_HEADER_BYTES + 64,
)
SIZES = [(64, 96), (63, 95), (1, 1), (2, 3), (5, 2), (17, 33)]  # (H, W): even, odd, tiny
SIZE_IDS = [f"{w}x{h}" for h, w in SIZES]


def planes_for(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ch, cw = chroma_size(height, width)
    return (
        rng.integers(0, 256, (height, width), dtype=np.uint8),
        rng.integers(0, 256, (ch, cw), dtype=np.uint8),
        rng.integers(0, 256, (ch, cw), dtype=np.uint8),
    )


def decoded_like(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> av.VideoFrame:
    """An av yuv420p frame holding these planes, with FFmpeg's padded rows, as a decoder gives."""
    frame = av.VideoFrame(y.shape[1], y.shape[0], "yuv420p")
    for dst, src in zip(plane_views(frame), (y, u, v), strict=True):
        dst[...] = src
    return frame


# --- wire -------------------------------------------------------------------------------------


def test_pixel_format_codes_are_fixed():
    # a code is a byte on the wire: RGB24 is 0 because every video slot carried 0 before
    assert (PIXFMT_RGB24, PIXFMT_I420) == (0, 1)
    assert PIXFMTS == ("rgb24", "i420")


@pytest.mark.parametrize(("height", "width"), SIZES, ids=SIZE_IDS)
def test_i420_sizes_and_plane_offsets(height, width):
    ch, cw = (height + 1) // 2, (width + 1) // 2
    assert chroma_size(height, width) == (ch, cw)
    nbytes = video_nbytes(PIXFMT_I420, height, width)
    assert nbytes == height * width + 2 * ch * cw
    assert video_nbytes(PIXFMT_RGB24, height, width) == height * width * 3
    payload = np.zeros(nbytes, np.uint8)
    packed, y, u, v = i420_views(payload, height, width)
    y[...], u[...], v[...] = 1, 2, 3
    # Y, then U, then V, back to back with no padding
    assert (payload[: height * width] == 1).all()
    assert (payload[height * width : height * width + ch * cw] == 2).all()
    assert (payload[height * width + ch * cw :] == 3).all()
    for view in (packed, y, u, v):
        assert np.shares_memory(view, payload)
    if height % 2 == 0 and width % 2 == 0:
        assert packed.shape == (height * 3 // 2, width)  # what OpenCV's I420 conversions take
    else:
        assert packed.shape == (nbytes,)


def test_unknown_pixel_format_is_a_wire_error():
    with pytest.raises(WireError, match="pixel format 7"):
        video_nbytes(7, 2, 2)


# --- the channel ------------------------------------------------------------------------------


@pytest.fixture(params=["shm", "tcp"])
def pair(request) -> Iterator[tuple[FrameChannel, FrameChannel]]:
    """Gateway and worker ends of one link, in either form."""
    if request.param == "shm":
        a, b = socket_pair()
        up, down = Segment.create(GEOMETRY), Segment.create(GEOMETRY)
        up_rx, down_rx = Segment.attach(up.name), Segment.attach(down.name)
    else:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)  # a byte stream, as TCP is
        up, down, up_rx, down_rx = (LocalSegment(GEOMETRY) for _ in range(4))
    gw = FrameChannel(a, tx=up, rx=down)
    wk = FrameChannel(b, tx=down_rx, rx=up_rx)
    assert gw.stream is (request.param == "tcp")
    yield gw, wk
    wk.close(notify=False)
    gw.close(notify=False)


def pump_until_video(ch: FrameChannel) -> tuple[SlotHeader, np.ndarray]:
    for _ in range(1000):
        ch.pump()
        got = ch.take_video()
        if got is not None:
            return got
    raise AssertionError("no frame arrived")


@pytest.mark.parametrize(("height", "width"), SIZES, ids=SIZE_IDS)
def test_i420_planes_cross_exactly_with_their_header(pair, height, width):
    gw, wk = pair
    y, u, v = planes_for(height, width, seed=height * 1000 + width)
    frame = decoded_like(y, u, v)
    sy, su, sv = plane_views(frame)
    assert sy.strides[0] == frame.planes[0].line_size  # the padded rows, read in place
    assert gw.send_i420(sy, su, sv, pts=9000, time_base=(1, 90_000))
    header, payload = pump_until_video(wk)
    nbytes = video_nbytes(PIXFMT_I420, height, width)
    assert header == SlotHeader(
        seq=1,
        pts=9000,
        time_base_num=1,
        time_base_den=90_000,
        sample_rate=0,
        nbytes=nbytes,
        kind=KIND_VIDEO,
        dtype=DTYPE_CODES[np.dtype(np.uint8)],
        layout=PIXFMT_I420,
        ndim=2,
        shape=(height, width, 0),
    )
    assert payload.shape == (nbytes,)
    packed, gy, gu, gv = wk.i420_planes(header)
    np.testing.assert_array_equal(gy, y)
    np.testing.assert_array_equal(gu, u)
    np.testing.assert_array_equal(gv, v)
    assert wk.i420_planes(header)[1] is gy, "the views are cached per slot"
    wk.release_video()


def test_tcp_form_carries_the_slot_as_written():
    """Over TCP the frame message carries the slot's header and its I420 planes, no more:
    half the bytes of an RGB24 frame."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)  # a byte stream, as TCP is
    gw = FrameChannel(a, tx=LocalSegment(GEOMETRY), rx=LocalSegment(GEOMETRY))
    try:
        height, width = 63, 95
        y, u, v = planes_for(height, width, seed=3)
        assert gw.send_i420(y, u, v, pts=5)
        nbytes = video_nbytes(PIXFMT_I420, height, width)
        size = STREAM_LENGTH.size + SLOT_MESSAGE.size + SLOT_HEADER_BYTES + nbytes
        b.settimeout(5)
        raw = b""
        while len(raw) < size:
            raw += b.recv(size - len(raw))
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(1)  # nothing follows the one frame message
        (length,) = STREAM_LENGTH.unpack_from(raw, 0)
        assert length == size - STREAM_LENGTH.size
        assert SLOT_MESSAGE.unpack_from(raw, STREAM_LENGTH.size) == (MSG_FRAME, KIND_VIDEO, 0)
        at = STREAM_LENGTH.size + SLOT_MESSAGE.size
        header = SlotHeader.unpack_from(memoryview(raw), at)
        assert (header.layout, header.shape, header.nbytes) == (PIXFMT_I420, (height, width, 0), nbytes)
        payload = np.frombuffer(raw, np.uint8, offset=at + SLOT_HEADER_BYTES)
        _, py, pu, pv = i420_views(payload, height, width)
        np.testing.assert_array_equal(py, y)
        np.testing.assert_array_equal(pu, u)
        np.testing.assert_array_equal(pv, v)
    finally:
        gw.close(notify=False)
        b.close()


def test_a_worker_writes_in_place_and_rgb24_still_crosses(pair):
    gw, wk = pair
    # the worker's way: reserve a slot, write its planes, commit
    slot = wk.reserve_video(5, 7)
    assert slot is not None
    _, y, u, v = wk.tx.i420(slot, 5, 7)
    y[...], u[...], v[...] = 10, 20, 30
    assert wk.commit_video(slot, 5, 7, PIXFMT_I420, pts=1)
    header, _ = pump_until_video(gw)
    _, gy, gu, gv = gw.i420_planes(header)
    assert (gy == 10).all() and (gu == 20).all() and (gv == 30).all() and gy.shape == (5, 7)
    gw.release_video()
    # the fallback form: an (H, W, 3) RGB array, as before I420
    rgb = np.random.default_rng(4).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert wk.send_video(rgb, pts=2)
    header, view = pump_until_video(gw)
    assert (header.layout, header.ndim, header.shape) == (PIXFMT_RGB24, 3, (5, 7, 3))
    np.testing.assert_array_equal(view, rgb)


def test_cancelled_and_refused_reservations_keep_every_slot(pair):
    gw, _ = pair
    for _ in range(3 * GEOMETRY.video_slots):
        slot = gw.reserve_video(MAX_H, MAX_W)
        assert slot is not None, "a cancelled slot leaked"
        gw.cancel_video(slot)
    assert gw.video_in_flight() == 0
    # larger than a slot even as I420: refused and counted, no slot taken
    assert gw.reserve_video(MAX_H * 3, MAX_W) is None
    assert gw.stats.oversize == 1 and gw.video_in_flight() == 0
    # an I420 frame over the RGB24-sized slot's pixel budget still fits (it is half the size)
    assert gw.reserve_video(MAX_H * 2 - 2, MAX_W) is not None


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("nbytes", 1, "I420 slot header"),
        ("ndim", 3, "I420 slot header"),
        ("dtype", DTYPE_CODES[np.dtype(np.int16)], "I420 slot header"),
        ("layout", 9, "pixel format 9"),
    ],
)
def test_an_inconsistent_video_header_is_refused(pair, field, value, match):
    gw, wk = pair
    y, u, v = planes_for(4, 6, seed=5)
    assert gw.send_i420(y, u, v)
    for _ in range(100):
        wk.pump()
        if wk.has_video():
            break
    # break the header in the receiver's copy of the slot, as a faulty peer would have written it
    assert wk.rx.buf is not None
    offset = wk.rx.geometry.offset(KIND_VIDEO, 0)
    header = SlotHeader.unpack_from(wk.rx.buf, offset)
    setattr(header, field, value)
    header.pack_into(wk.rx.buf, offset)
    with pytest.raises(WireError, match=match):
        wk.take_video()


def test_an_i420_header_larger_than_the_slot_is_refused(pair):
    gw, wk = pair
    y, u, v = planes_for(4, 6, seed=6)
    assert gw.send_i420(y, u, v)
    for _ in range(100):
        wk.pump()
        if wk.has_video():
            break
    assert wk.rx.buf is not None
    offset = wk.rx.geometry.offset(KIND_VIDEO, 0)
    header = SlotHeader.unpack_from(wk.rx.buf, offset)
    header.shape = (MAX_H * 3, MAX_W, 0)
    header.nbytes = video_nbytes(PIXFMT_I420, MAX_H * 3, MAX_W)
    header.pack_into(wk.rx.buf, offset)
    with pytest.raises(WireError, match="exceeds the slot"):
        wk.take_video()


# --- the gateway's frames ---------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), SIZES, ids=SIZE_IDS)
def test_plane_views_honour_the_line_size(height, width):
    y, u, v = planes_for(height, width, seed=7)
    frame = decoded_like(y, u, v)
    vy, vu, vv = plane_views(frame)
    assert [p.shape for p in (vy, vu, vv)] == [(height, width), chroma_size(height, width), chroma_size(height, width)]
    assert [p.strides[0] for p in (vy, vu, vv)] == [p.line_size for p in frame.planes]
    # what FFmpeg itself reads back from the frame's buffers
    rows = [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in frame.planes]
    for got, want, src in zip((vy, vu, vv), rows, (y, u, v), strict=True):
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, src)


def test_the_encoder_frame_is_one_frame_per_size_refilled():
    ef = EncoderFrame()
    first = ef.fill(*planes_for(64, 96, seed=8))
    first.pict_type = av.video.frame.PictureType.I  # as aiortc's encoder marks a requested keyframe
    y, u, v = planes_for(64, 96, seed=9)
    again = ef.fill(y, u, v)
    assert again is first, "a frame of the same size is reused"
    assert again.pict_type == av.video.frame.PictureType.NONE, "a keyframe mark would stick"
    for got, want in zip(plane_views(again), (y, u, v), strict=True):
        np.testing.assert_array_equal(got, want)
    odd = ef.fill(*planes_for(63, 95, seed=10))
    assert odd is not first and (odd.width, odd.height, odd.format.name) == (95, 63, "yuv420p")


def test_a_reused_frame_encodes_each_fill_as_its_own_picture():
    """The encoder has taken a picture when encode() returns: refilling the frame after it
    changes nothing already encoded (what WorkerVideoTrack.recv relies on)."""
    height, width = 64, 96
    encoder = GatewayVp8Encoder()
    ef = EncoderFrame()
    levels = (40, 200, 40, 120)
    packets = []
    for i, level in enumerate(levels):
        ch, cw = chroma_size(height, width)
        frame = ef.fill(np.full((height, width), level, np.uint8), np.full((ch, cw), 128, np.uint8), np.full((ch, cw), 128, np.uint8))
        frame.pts, frame.time_base = i * 3000, Fraction(1, 90_000)
        payloads, _ = encoder.encode(frame, force_keyframe=(i == 0))
        packets.append(payloads)
    decoder = av.CodecContext.create("libvpx", "r")
    for level, payloads in zip(levels, packets, strict=True):
        data = b"".join(vp8_depayload(p) for p in payloads)  # RTP payloads back to one frame
        (decoded,) = decoder.decode(av.Packet(data))
        mean = float(decoded.to_ndarray()[:height].mean())
        assert abs(mean - level) < 6, f"picture of level {level} decoded as {mean:.0f}"
