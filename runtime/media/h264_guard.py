"""The size an H.264 stream claims, read from its sequence parameter set before the decoder.

FFmpeg's H.264 decoder allocates its picture buffers from the active sequence parameter set
(SPS): the width and height in macroblocks, 16 x 16 pixels each. A forged SPS of a dozen
bytes can claim 65536 x 65536 macroblocks, so, as for VP8 (``vp8_guard.py``), the claim is
read first and a frame over ``gateway.max_frame_pixels`` never reaches the decoder.

What the guard sees is a depacketized frame (aiortc's H.264 depayloader turns single NAL
units, STAP-A and FU-A packets back into Annex B: each NAL unit after a ``00 00 01`` or
``00 00 00 01`` start code). A frame that carries an SPS (NAL unit type 7, sent before every
IDR by browsers and libx264) is the H.264 counterpart of a VP8 key frame: its SPS is parsed
(ITU-T H.264 section 7.3.2.1.1) and its size is the largest any of its SPSs claims, after
cropping. An SPS that cannot be parsed (truncated, an out-of-range field, a chroma format or
bit depth other than 4:2:0 at 8 bits, which the media plane does not carry) makes the frame
malformed, and it is refused like an oversized one.

The claimed level is not checked against the size: FFmpeg does not either (it allocates
from the size), and aiortc's own encoder writes level 3.1 for any size. Only the pixels
count, against the operator's limit.

Cost: a frame without an SPS (every frame but the key frames) is scanned for start codes
with ``bytes.find`` and nothing else; a frame may hold at most ``MAX_NAL_UNITS_PER_FRAME``
NAL units, so a frame made of start codes costs no more than a real one.
"""

from __future__ import annotations

from dataclasses import dataclass

START_CODE = b"\x00\x00\x01"  # a 4-byte start code is a zero byte and this
EMULATION_PREVENTION = b"\x00\x00\x03"  # inside a NAL unit, "00 00" then an inserted 03
NAL_TYPE_MASK = 0x1F
NAL_SLICE_IDR = 5
NAL_SPS = 7
NAL_PPS = 8
# NAL units one frame may carry: an IDR with SPS, PPS, SEI and a slice per core of a hardware
# encoder is well under this; more is refused, which bounds the scan of a hostile frame
MAX_NAL_UNITS_PER_FRAME = 256
MAX_EXP_GOLOMB_ZEROS = 31  # ue(v) fields fit 32 bits (H.264 section 9.1)
MAX_SPS_ID = 31
MAX_LOG2_FRAME_NUM_MINUS4 = 12
MAX_POC_TYPE = 2
MAX_POC_CYCLE = 255  # num_ref_frames_in_pic_order_cnt_cycle
MAX_REF_FRAMES = 16
MB_SIZE = 16  # pixels on a side of a macroblock
CHROMA_420 = 1
BIT_DEPTH = 8
# the profiles whose SPS carries chroma format, bit depth and scaling lists (7.3.2.1.1)
HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
PROFILE_BASELINE = 66
CONSTRAINT_SET1 = 0x40  # in the constraint byte: "constrained baseline" with profile 66
# level_idc values of Table A-1 (9 is level 1b, 11 also 1b with constraint_set3)
LEVELS = frozenset({9, 10, 11, 12, 13, 20, 21, 22, 30, 31, 32, 40, 41, 42, 50, 51, 52, 60, 61, 62})


class MalformedH264(ValueError):
    """A frame or SPS the guard cannot read as H.264 the media plane serves."""


@dataclass(frozen=True, slots=True)
class Sps:
    """What a sequence parameter set says about the pictures that follow it."""

    profile_idc: int
    constraints: int  # constraint_set0..5 flags, the byte after profile_idc
    level_idc: int
    sps_id: int
    width: int  # pixels, after cropping: what a decoded frame is
    height: int
    coded_width: int  # pixels, whole macroblocks: what the decoder allocates
    coded_height: int

    @property
    def constrained_baseline(self) -> bool:
        return self.profile_idc == PROFILE_BASELINE and bool(self.constraints & CONSTRAINT_SET1)


class _Bits:
    """A big-endian bit reader over an RBSP (emulation prevention bytes removed)."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data) * 8

    def bit(self) -> int:
        if self.pos >= self.end:
            raise MalformedH264("the SPS is truncated")
        value = (self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return value

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = value << 1 | self.bit()
        return value

    def ue(self, limit: int | None = None) -> int:
        zeros = 0
        while not self.bit():
            zeros += 1
            if zeros > MAX_EXP_GOLOMB_ZEROS:
                raise MalformedH264("an Exp-Golomb code is longer than 32 bits")
        value = (1 << zeros) - 1 + self.bits(zeros)
        if limit is not None and value > limit:
            raise MalformedH264(f"an SPS field is {value}, over its limit {limit}")
        return value

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)


def _scaling_list(bits: _Bits, size: int) -> None:
    last = next_scale = 8
    for _ in range(size):
        if next_scale:
            delta = bits.se()
            if not -128 <= delta <= 127:
                raise MalformedH264("a scaling list delta is out of range")
            next_scale = (last + delta + 256) % 256
        last = next_scale or last


def parse_sps(nal: bytes) -> Sps:
    """The SPS in ``nal`` (a whole NAL unit: its one-byte header, then the payload as sent,
    emulation prevention bytes included). Raises :class:`MalformedH264`."""
    if len(nal) < 4 or nal[0] & NAL_TYPE_MASK != NAL_SPS or nal[0] & 0x80:
        raise MalformedH264("not an SPS NAL unit")
    bits = _Bits(nal[1:].replace(EMULATION_PREVENTION, b"\x00\x00"))
    profile_idc, constraints, level_idc = bits.bits(8), bits.bits(8), bits.bits(8)
    if level_idc not in LEVELS:
        raise MalformedH264(f"level_idc {level_idc} is not a level")
    sps_id = bits.ue(MAX_SPS_ID)
    chroma_format_idc, bit_depth_luma, bit_depth_chroma = CHROMA_420, BIT_DEPTH, BIT_DEPTH
    if profile_idc in HIGH_PROFILES:
        chroma_format_idc = bits.ue(3)
        if chroma_format_idc == 3:
            bits.bit()  # separate_colour_plane_flag
        bit_depth_luma = bits.ue(6) + BIT_DEPTH
        bit_depth_chroma = bits.ue(6) + BIT_DEPTH
        bits.bit()  # qpprime_y_zero_transform_bypass_flag
        if bits.bit():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if bits.bit():
                    _scaling_list(bits, 16 if i < 6 else 64)
    if chroma_format_idc != CHROMA_420 or bit_depth_luma != BIT_DEPTH or bit_depth_chroma != BIT_DEPTH:
        raise MalformedH264(f"chroma format {chroma_format_idc} at {bit_depth_luma}/{bit_depth_chroma} bits is not 4:2:0 at 8 bits")
    bits.ue(MAX_LOG2_FRAME_NUM_MINUS4)  # log2_max_frame_num_minus4
    poc_type = bits.ue(MAX_POC_TYPE)
    if poc_type == 0:
        bits.ue(MAX_LOG2_FRAME_NUM_MINUS4)  # log2_max_pic_order_cnt_lsb_minus4
    elif poc_type == 1:
        bits.bit()  # delta_pic_order_always_zero_flag
        bits.se()  # offset_for_non_ref_pic
        bits.se()  # offset_for_top_to_bottom_field
        for _ in range(bits.ue(MAX_POC_CYCLE)):
            bits.se()  # offset_for_ref_frame[i]
    bits.ue(MAX_REF_FRAMES)  # max_num_ref_frames
    bits.bit()  # gaps_in_frame_num_value_allowed_flag
    width_mbs = bits.ue() + 1
    height_map_units = bits.ue() + 1
    frame_mbs_only = bits.bit()
    if not frame_mbs_only:
        bits.bit()  # mb_adaptive_frame_field_flag
    bits.bit()  # direct_8x8_inference_flag
    coded_width = width_mbs * MB_SIZE
    coded_height = (2 - frame_mbs_only) * height_map_units * MB_SIZE
    width, height = coded_width, coded_height
    if bits.bit():  # frame_cropping_flag; 4:2:0: crop units of 2 pixels, 4 down a field pair
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
        width -= 2 * (left + right)
        height -= 2 * (2 - frame_mbs_only) * (top + bottom)
        if width <= 0 or height <= 0:
            raise MalformedH264("the SPS crops more than its picture")
    return Sps(profile_idc, constraints, level_idc, sps_id, width, height, coded_width, coded_height)


def keyframe_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) the frame's SPS claims (the largest, if it has several), or None for
    a frame without an SPS. Raises :class:`MalformedH264` for a frame whose SPS cannot be
    read, one that is not Annex B, or one of more than ``MAX_NAL_UNITS_PER_FRAME`` units."""
    start = frame.find(START_CODE)
    if start < 0:
        raise MalformedH264("no start code: not an Annex B frame")
    size: tuple[int, int] | None = None
    units = 0
    while start >= 0:
        units += 1
        if units > MAX_NAL_UNITS_PER_FRAME:
            raise MalformedH264(f"more than {MAX_NAL_UNITS_PER_FRAME} NAL units in a frame")
        begin = start + len(START_CODE)
        start = frame.find(START_CODE, begin)
        if begin < len(frame) and frame[begin] & NAL_TYPE_MASK == NAL_SPS:
            # a 4-byte start code leaves its leading zero at the end of the unit before it
            end = len(frame) if start < 0 else start
            sps = parse_sps(bytes(frame[begin:end]).rstrip(b"\x00"))
            if size is None or sps.width * sps.height > size[0] * size[1]:
                size = (sps.width, sps.height)
    return size
