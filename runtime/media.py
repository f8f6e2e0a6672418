"""Helpers for aiortc media tracks shared by the gateway and the Python client."""

from __future__ import annotations

from typing import Any

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
