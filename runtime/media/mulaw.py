"""G.711 mu-law, as WebSocket audio clients and Twilio's media streams carry it.

Both directions are table lookups (the stdlib's ``audioop`` is gone in Python 3.13): 256
entries to decode, 65,536 to encode (indexed by the sample's 16 bits), built once at import.
A 20 ms frame at 8 kHz is 160 lookups, so the gateway's loop pays microseconds per message.
"""

from __future__ import annotations

import numpy as np

BIAS = (
    0x84  # G.711's bias: added before the segment search so every segment's step is a power of two
)
CLIP_14 = 8_159  # the largest 14-bit magnitude mu-law encodes
BIAS_14 = BIAS >> 2
SEGMENT_ENDS_14 = np.array(
    [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]
)  # each segment's last biased magnitude


def _decode_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def _encode_table() -> np.ndarray:
    # in G.711's 14-bit domain, as the reference coder (and CPython's audioop) computes it,
    # so the bytes match what other mu-law peers produce for the same samples
    value = np.arange(-32_768, 32_768, dtype=np.int32) >> 2
    mask = np.where(value < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(value), CLIP_14) + BIAS_14
    segment = np.searchsorted(SEGMENT_ENDS_14, magnitude)  # the first end >= magnitude
    codes = np.where(
        segment >= 8, 0x7F, (segment << 4) | ((magnitude >> (np.minimum(segment, 7) + 1)) & 0x0F)
    )
    # indexed by the sample's bits as uint16: -32768..-1 sit at 32768..65535
    return np.roll((codes ^ mask).astype(np.uint8), -32_768)


DECODE = _decode_table()
ENCODE = _encode_table()


def decode(payload: bytes) -> np.ndarray:
    """mu-law bytes to int16 samples (a new array, one per byte)."""
    return DECODE[np.frombuffer(payload, dtype=np.uint8)]


def encode(samples: np.ndarray) -> bytes:
    """int16 samples (any shape; taken in C order) to mu-law bytes."""
    return ENCODE[np.ascontiguousarray(samples, dtype=np.int16).view(np.uint16).ravel()].tobytes()
