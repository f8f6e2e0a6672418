"""Helpers for aiortc media tracks shared by the gateway and the Python client."""

from __future__ import annotations

from typing import Any

import av
import cv2
from aiortc import MediaStreamTrack


def newest_frame(track: MediaStreamTrack, frame: Any) -> tuple[Any, int, bool]:
    """Latest-frame-wins on the way in: aiortc decodes every frame (VP8 needs them all) into
    an unbounded queue; when the loop falls behind, older frames there are stale. Returns the
    newest decoded frame, how many were skipped, and whether the track ended behind them."""
    queue = getattr(track, "_queue", None)  # aiortc's RemoteStreamTrack; other tracks: as is
    skipped = 0
    while queue is not None and not queue.empty():
        nxt = queue.get_nowait()
        if nxt is None:  # end of stream: handle this frame, then stop
            return frame, skipped, True
        frame = nxt
        skipped += 1
    return frame, skipped, False


def rgb_of(frame: Any) -> Any:
    """A decoded video frame as (H, W, 3) uint8 RGB. OpenCV's I420 conversion is ~3x faster
    than PyAV's (swscale) for the decoders' yuv420p at even sizes; both use BT.601."""
    if frame.format.name == "yuv420p" and not (frame.width | frame.height) & 1:
        return cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2RGB_I420)
    return frame.to_ndarray(format="rgb24")


def video_frame_of(rgb: Any) -> av.VideoFrame:
    """An (H, W, 3) uint8 RGB array as a frame the VP8 encoder takes without converting it
    again (yuv420p), by OpenCV where the size allows."""
    height, width = rgb.shape[:2]
    if not (width | height) & 1:
        return av.VideoFrame.from_ndarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
    return av.VideoFrame.from_ndarray(rgb, format="rgb24")
