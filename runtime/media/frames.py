"""Helpers for aiortc media tracks shared by the gateway and the Python client."""

from __future__ import annotations

from typing import Any

import av
import cv2
import numpy as np
from aiortc import MediaStreamTrack

I420_FORMAT = "yuv420p"  # FFmpeg's name for the channel's I420 (what VP8 and H.264 decode to)


def newest_frame(track: MediaStreamTrack, frame: Any) -> tuple[Any, int, bool]:
    """Latest-frame-wins on the way in: aiortc decodes every frame (VP8 needs them all) into
    an unbounded queue; when the loop falls behind, older frames there are stale. Returns the
    newest decoded frame, how many were skipped, and whether the track ended behind them."""
    # aiortc's RemoteStreamTrack's private queue; other tracks: as is
    # (checked against aiortc 1.16.0; tests/test_patched_internals.py)
    queue = getattr(track, "_queue", None)
    skipped = 0
    while queue is not None and not queue.empty():
        nxt = queue.get_nowait()
        if nxt is None:  # end of stream: handle this frame, then stop
            return frame, skipped, True
        frame = nxt
        skipped += 1
    return frame, skipped, False


def plane_views(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Y, U and V planes of a yuv420p frame as 2-D uint8 views of the frame's own buffers,
    no copy: FFmpeg pads each row to its ``line_size`` (for SIMD), so a view is that plane's
    rows cut to its width. Writable for a frame this process made; the views keep the frame
    alive as long as they live."""
    y, u, v = frame.planes
    return _plane_view(y), _plane_view(u), _plane_view(v)


def _plane_view(plane: Any) -> np.ndarray:
    rows, stride = plane.height, plane.line_size
    return np.frombuffer(plane, np.uint8, count=rows * stride).reshape(rows, stride)[:, : plane.width]


class EncoderFrame:
    """One reusable yuv420p frame for an encoder, refilled from each I420 slot in turn: the
    gateway's outgoing frames then cost a plane copy, no colour conversion and no new frame.
    A new frame is made only when the size changes. The caller must know the encoder is done
    with the previous fill before the next (see ``WorkerVideoTrack.recv`` for why it is)."""

    def __init__(self) -> None:
        self.frame: av.VideoFrame | None = None
        self._planes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def fill(self, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> av.VideoFrame:
        height, width = y.shape
        frame = self.frame
        if frame is None or frame.width != width or frame.height != height:
            frame = self.frame = av.VideoFrame(width, height, I420_FORMAT)
            self._planes = plane_views(frame)
        assert self._planes is not None
        py, pu, pv = self._planes
        np.copyto(py, y, casting="no")
        np.copyto(pu, u, casting="no")
        np.copyto(pv, v, casting="no")
        # aiortc's VP8 encoder marks the frame itself as a keyframe when one is asked for
        # (a PLI): on a reused frame that mark would stay and make every later frame one
        frame.pict_type = av.video.frame.PictureType.NONE
        return frame


def rgb_of(frame: Any) -> Any:
    """A decoded video frame as (H, W, 3) uint8 RGB: the channel's fallback form, for a
    frame the decoder gave in another format than yuv420p (which crosses as is). OpenCV's I420 conversion is ~3x faster
    than PyAV's (swscale) for the decoders' yuv420p at even sizes; both use BT.601."""
    if frame.format.name == "yuv420p" and not (frame.width | frame.height) & 1:
        return cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2RGB_I420)
    return frame.to_ndarray(format="rgb24")


def video_frame_of(rgb: Any) -> av.VideoFrame:
    """An (H, W, 3) uint8 RGB array (a slot in the fallback RGB24 form) as a frame the VP8
    encoder takes without converting it again (yuv420p), by OpenCV where the size allows."""
    height, width = rgb.shape[:2]
    if not (width | height) & 1:
        return av.VideoFrame.from_ndarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
    return av.VideoFrame.from_ndarray(rgb, format="rgb24")
