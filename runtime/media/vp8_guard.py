"""The size a VP8 key frame claims, read before the frame reaches a decoder.

libvpx allocates its frame buffers from the width and height in a key frame's header, so
a forged 16383x16383 key frame (a few dozen bytes on the wire) makes a decoder allocate
hundreds of MB before anything can look at the decoded picture. The header is fixed and
uncompressed (RFC 6386 section 9.1), so the claim can be read and refused first:

    byte 0..2  frame tag, little-endian: bit 0 = 0 for a key frame, bits 1-3 version,
               bit 4 show_frame, bits 5-23 size of the first partition
    byte 3..5  start code 9d 01 2a (key frames only)
    byte 6..7  width, little-endian: low 14 bits the width, top 2 bits a scale
    byte 8..9  height, the same

The input is a depacketized frame (what aiortc hands its decoder: ``JitterFrame.data``,
the RTP payload descriptors already stripped). Only fixed offsets are read and nothing is
allocated, since this runs for every received video frame.
"""

from __future__ import annotations

VP8_KEYFRAME_HEADER_BYTES = 10  # frame tag (3) + start code (3) + width (2) + height (2)
VP8_START_CODE = (0x9D, 0x01, 0x2A)
VP8_DIMENSION_MASK = 0x3FFF  # the low 14 bits of each 16-bit field; the top 2 are a scale
VP8_MAX_DIMENSION = VP8_DIMENSION_MASK  # 16383 pixels: the largest size a header can claim


def keyframe_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) a VP8 key frame claims, or None for any other frame: an inter frame,
    a truncated key frame, or bytes that are not VP8 (an H.264 frame starts 00 00 00 01,
    which has no start code at byte 3). The scale bits are ignored: they ask the
    application to upscale the output, the decoder still decodes at width x height."""
    if len(frame) < VP8_KEYFRAME_HEADER_BYTES or frame[0] & 1:
        return None
    if frame[3] != VP8_START_CODE[0] or frame[4] != VP8_START_CODE[1] or frame[5] != VP8_START_CODE[2]:
        return None
    width = (frame[6] | frame[7] << 8) & VP8_DIMENSION_MASK
    height = (frame[8] | frame[9] << 8) & VP8_DIMENSION_MASK
    return width, height
