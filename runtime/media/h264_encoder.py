"""The gateway's H.264 encoder: aiortc's packetizer, with a codec built for a real-time server.

aiortc's H264Encoder builds libx264 with its default preset (``medium``) and only
``tune=zerolatency``: ~4x the CPU of ``ultrafast`` for a picture that a lossy round trip has
already softened, and it leaves libx264's thread count to FFmpeg (one per core, on a host
that encodes many streams at once). This one keeps aiortc's RTP side (``_split_bitstream``,
``_packetize``, the ``encode`` signature its sender calls) and builds the codec the way
``vp8_encoder.py`` builds VP8's:

* ``ultrafast`` + ``zerolatency``, constrained baseline (what every browser decodes; the
  answer offers ``profile-level-id`` 42e01f/42001f), one thread per stream;
* the same bitrate policy as VP8: aiortc's VP8 range (250 kbps to 1.5 Mbps, 500 kbps to
  start), moved by the receiver's REMB, a constant-rate buffer of one second, and the codec
  rebuilt when the target moves more than 10 %;
* key frames only when the receiver asks (PLI/FIR: aiortc passes ``force_keyframe``), as
  IDRs, each with its SPS and PPS, so a browser can always start from one;
* the level from the frame size (aiortc writes 3.1 for any size), and BT.601 limited range
  said in the VUI, as the pictures are;
* an odd width or height is scaled to the even size under it: 4:2:0 H.264 codes even
  sizes only.

``gateway.h264_encoder`` may name a hardware encoder of the host's FFmpeg (``h264_nvenc``,
``h264_qsv``, ``h264_amf``, ``h264_v4l2m2m``); when it is absent or will not open, the
encoder warns once per process and uses libx264.

Checked against aiortc 1.16.0 and av 18.1.0 (tests/test_patched_internals.py).
"""

from __future__ import annotations

import fractions
import logging
from typing import Any

import av
from aiortc.codecs.h264 import H264Encoder

from runtime import constants as C
from runtime.media.encoder_policy import codec_outdated

log = logging.getLogger(__name__)

SOFTWARE_ENCODER = "libx264"
# hardware encoders known to take system-memory yuv420p frames from PyAV, with their options
# for one low-latency real-time stream
HARDWARE_ENCODERS: dict[str, dict[str, str]] = {
    "h264_nvenc": {"preset": "p1", "tune": "ull", "zerolatency": "1", "delay": "0", "forced-idr": "1", "rc": "cbr"},
    "h264_qsv": {"preset": "veryfast", "look_ahead": "0", "async_depth": "1", "forced_idr": "1"},
    "h264_amf": {"usage": "ultralowlatency", "quality": "speed", "rc": "cbr"},
    "h264_v4l2m2m": {},
}
H264_ENCODERS = (SOFTWARE_ENCODER, *HARDWARE_ENCODERS)
H264_GOP_FRAMES = 3000  # key frames only on request (PLI), as VP8's
H264_THREADS = 1  # one per stream: a gateway encodes many streams on few cores
H264_PROFILE = "baseline"  # libx264's baseline is constrained baseline (constraint_set1)
H264_MAX_FRAME_RATE = 30  # what the codec's time base and level assume, aiortc's
# aiortc's VP8 bitrate range, so both codecs are held to the same rates
MIN_BITRATE, DEFAULT_BITRATE, MAX_BITRATE = 250_000, 500_000, 1_500_000  # bits/s
# The pictures are BT.601 limited range (workers/process/convert.py, what VP8 carries without
# saying). H.264 says it in its VUI; left unsaid, Chromium reads BT.709 and greens drift
# (CI-found: a saturated green tint came back at G < 230). FFmpeg's AVCOL_* values:
SMPTE170M = 6  # AVCOL_SPC_SMPTE170M / AVCOL_PRI_SMPTE170M / AVCOL_TRC_SMPTE170M: BT.601
LIMITED_RANGE = 1  # AVCOL_RANGE_MPEG: 16-235
# Table A-1: (level_idc, MaxFS in macroblocks, MaxMBPS) in order, up to what a gateway sends
LEVELS = ((30, 1620, 40_500), (31, 3600, 108_000), (32, 5120, 216_000), (40, 8192, 245_760), (42, 8704, 522_240), (50, 22_080, 589_824), (51, 36_864, 983_040))

_fallback_warned: set[str] = set()  # one warning per process and encoder name


def level_for(width: int, height: int, fps: int = H264_MAX_FRAME_RATE) -> int:
    """The lowest level_idc whose frame size and macroblock rate hold ``width`` x ``height``."""
    mbs = ((width + 15) // 16) * ((height + 15) // 16)
    for level, max_fs, max_mbps in LEVELS:
        if mbs <= max_fs and mbs * fps <= max_mbps:
            return level
    return LEVELS[-1][0]


def _even(frame: av.VideoFrame) -> av.VideoFrame:
    """``frame`` at an even width and height (a rare size: a handler's odd crop), scaled by
    under a pixel rather than cut, so its content keeps its place."""
    width, height = frame.width & ~1, frame.height & ~1
    if (width, height) == (frame.width, frame.height):
        return frame
    out = frame.reformat(width=max(width, 2), height=max(height, 2), format="yuv420p")
    out.pts, out.time_base = frame.pts, frame.time_base
    return out


class GatewayH264Encoder(H264Encoder):
    """aiortc's H264Encoder; the codec it builds and its bitrate range differ."""

    def __init__(self, encoder: str = SOFTWARE_ENCODER) -> None:
        super().__init__()
        self.encoder = encoder  # what was asked for; self.codec.name says what runs
        self.codec_options: dict[str, str] = {}  # what the current codec was built with
        self._bitrate = DEFAULT_BITRATE

    @property
    def target_bitrate(self) -> int:
        return self._bitrate

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        self._bitrate = max(MIN_BITRATE, min(bitrate, MAX_BITRATE))

    def _encode_frame(self, frame: av.VideoFrame, force_keyframe: bool) -> Any:
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        frame = _even(frame)
        codec: Any = self.codec
        if codec_outdated(codec, frame.width, frame.height, self.target_bitrate):
            self.codec = codec = self._make_codec(frame.width, frame.height)
        # an I picture with forced-idr is an IDR, which libx264 precedes with SPS and PPS
        frame.pict_type = av.video.frame.PictureType.I if force_keyframe else av.video.frame.PictureType.NONE
        data = b"".join(bytes(packet) for packet in codec.encode(frame))
        if data:
            yield from self._split_bitstream(data)

    def _make_codec(self, width: int, height: int) -> Any:
        if self.encoder != SOFTWARE_ENCODER:
            codec = self._open(self.encoder, width, height)
            if codec is not None:
                return codec
        codec = self._open(SOFTWARE_ENCODER, width, height)
        assert codec is not None, "libx264 is part of PyAV's wheel"
        return codec

    def _open(self, name: str, width: int, height: int) -> Any:
        rate = str(self.target_bitrate)
        if name == SOFTWARE_ENCODER:
            options = {
                "preset": "ultrafast",
                "tune": "zerolatency",
                "profile": H264_PROFILE,
                "level": str(level_for(width, height)),
                "forced-idr": "1",
                "maxrate": rate,  # min = max = target with a one-second buffer, as VP8's
                "bufsize": rate,
                "x264-params": "nal-hrd=none:repeat-headers=1",
            }
        else:
            options = {**HARDWARE_ENCODERS.get(name, {}), "profile": H264_PROFILE, "maxrate": rate, "bufsize": rate}
        try:
            codec: Any = av.CodecContext.create(name, "w")
            codec.width, codec.height = width, height
            codec.bit_rate = self.target_bitrate
            codec.pix_fmt = "yuv420p"
            codec.framerate = fractions.Fraction(H264_MAX_FRAME_RATE, 1)
            codec.time_base = fractions.Fraction(1, C.VIDEO_CLOCK_RATE)  # the frames' own: no two share a pts
            codec.gop_size = H264_GOP_FRAMES
            codec.thread_count = H264_THREADS
            codec.colorspace, codec.color_primaries, codec.color_trc = SMPTE170M, SMPTE170M, SMPTE170M
            codec.color_range = LIMITED_RANGE
            codec.options = dict(options)
            codec.open()
        except (av.FFmpegError, ValueError) as exc:  # absent (UnknownCodecError is a ValueError) or no device
            if name == SOFTWARE_ENCODER:
                raise
            if name not in _fallback_warned:
                _fallback_warned.add(name)
                log.warning("gateway.h264_encoder %s is not usable here (%s); encoding H.264 with %s", name, exc, SOFTWARE_ENCODER)
            return None
        self.codec_options = options
        return codec

