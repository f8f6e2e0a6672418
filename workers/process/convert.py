"""Pixels between the link and the handler: the gateway's I420 frames to the (H, W, 3) uint8
RGB a handler takes, and whatever a handler returns back to I420 for the gateway's encoder."""

from __future__ import annotations

import threading
from typing import Any

import cv2
import numpy as np

from workers.link.wire import i420_views


def as_rgb24(frame: Any) -> np.ndarray:
    """A handler's video output as (H, W, 3) uint8, whatever reasonable form it came in."""
    a = np.asarray(frame)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    elif a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"a video frame must be (H, W, 3), got shape {a.shape}")
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and a.size and float(a.max()) <= 1.0:
            a = a * 255.0
        a = np.clip(a, 0, 255).astype(np.uint8)
    return a


class PixelConverter:
    """I420 <-> (H, W, 3) uint8 RGB for one direction of a session's video, by OpenCV
    (BT.601 limited range, what VP8 decodes to and encodes from).

    OpenCV's I420 conversions take only even sizes. An odd-sized frame goes through an
    even-sized scratch frame one row and/or column larger, kept for the next frame of that
    size: its chroma planes are exactly the odd frame's (ceil(H/2) x ceil(W/2)), so only
    the luma (or RGB) is placed in its top-left corner and the extra row/column is cut off
    afterwards. A lock, since an AudioVideoStreamHandler's threads may send video at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._size: tuple[int, int] = (0, 0)  # (H, W) of the odd frames the scratch is for
        self._i420: tuple[np.ndarray, ...] = ()  # (packed, y, u, v) of the even scratch frame
        self._rgb: np.ndarray | None = None  # (H + H % 2, W + W % 2, 3) scratch RGB

    def _scratch(self, height: int, width: int) -> None:
        if self._size == (height, width):
            return
        even_h, even_w = height + (height & 1), width + (width & 1)
        packed = np.zeros((even_h * 3 // 2, even_w), np.uint8)
        self._i420 = i420_views(packed.reshape(-1), even_h, even_w)
        self._rgb = np.zeros((even_h, even_w, 3), np.uint8)
        self._size = (height, width)

    def to_rgb(self, packed: np.ndarray, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """A new (H, W, 3) uint8 RGB array (the handler's to keep or modify) of the I420
        frame whose views (``wire.i420_views``) are given."""
        height, width = y.shape
        if not (height | width) & 1:
            return cv2.cvtColor(packed, cv2.COLOR_YUV2RGB_I420)
        with self._lock:
            self._scratch(height, width)
            even, ey, eu, ev = self._i420
            ey[:height, :width] = y  # the extra row/column's luma only reaches pixels cut off below
            eu[...] = u
            ev[...] = v
            rgb = cv2.cvtColor(even, cv2.COLOR_YUV2RGB_I420, dst=self._rgb)
            # always a copy: the scratch is reused (test-found: np.ascontiguousarray gave back
            # the scratch itself when only the height was odd, as that crop is contiguous)
            return rgb[:height, :width].copy()

    def to_i420(self, rgb: np.ndarray, packed: np.ndarray, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
        """Write an (H, W, 3) uint8 RGB array into the I420 views given (a slot's)."""
        height, width = y.shape
        if not (height | width) & 1:
            out = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420, dst=packed)
            if out is not packed:  # OpenCV made its own array (it never has here): copy it in
                np.copyto(packed, out)
            return
        with self._lock:
            self._scratch(height, width)
            even, ey, eu, ev = self._i420
            scratch = self._rgb
            assert scratch is not None
            scratch[:height, :width] = rgb
            # the extra row/column repeats the edge, so a 2x2 block's chroma stays the edge's
            # whichever of its pixels OpenCV samples (it takes the top-left one today)
            scratch[:height, width:] = rgb[:, width - 1 :]
            scratch[height:, :] = scratch[height - 1 : height, :]
            out = cv2.cvtColor(scratch, cv2.COLOR_RGB2YUV_I420, dst=even)
            if out is not even:
                np.copyto(even, out)
            np.copyto(y, ey[:height, :width])
            np.copyto(u, eu)
            np.copyto(v, ev)


__all__ = ["PixelConverter", "as_rgb24"]
