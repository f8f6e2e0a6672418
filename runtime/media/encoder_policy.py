"""What the gateway's encoders (vp8_encoder.py, h264_encoder.py) share: when a codec is rebuilt."""

from __future__ import annotations

from typing import Any

BITRATE_CHANGE = 0.1  # an encoder's codec is rebuilt when the target bitrate moves more than this (aiortc's rule)


def codec_outdated(codec: Any, width: int, height: int, target_bitrate: int) -> bool:
    """Whether an encoder must (re)build its codec for a frame, at the moments aiortc does:
    none yet, a new size, or a target bitrate moved past BITRATE_CHANGE."""
    return (
        codec is None
        or width != codec.width
        or height != codec.height
        or not codec.bit_rate
        or abs(target_bitrate - codec.bit_rate) / codec.bit_rate > BITRATE_CHANGE
    )
