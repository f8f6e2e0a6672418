"""The gateway's VP8 encoder: aiortc's, with its settings for a server that re-encodes.

aiortc configures libvpx for a browser-like sender: a webcam's noisy picture, so it turns
on libvpx's temporal denoiser (``noise-sensitivity`` 4). The gateway encodes what a handler
returned, a picture already decoded from a lossy stream and processed: the denoiser there
costs about as much as the rest of the encode (measured here, 640x480 at 500 kbps: 6.3 ms
per frame with it, 3.8 ms without, at a slightly higher PSNR), and VP8 encoding is the
gateway's largest per-frame cost. So by default it is off; ``gateway.vp8_denoise`` turns it
back on and ``gateway.vp8_speed`` sets libvpx's speed (aiortc's 6; higher is faster and
worse: 16 loses ~7 dB).

Everything else (bitrate control from the receiver's REMB, keyframes on PLI, packetization)
stays aiortc's: the encoder replaces aiortc's for one RTP sender that sends VP8, right after
the answer is made and before any frame is encoded (``video_codecs.use_gateway_encoders``).
"""

from __future__ import annotations

from typing import Any

import av
from aiortc.codecs.vpx import Vp8Encoder

from runtime import constants as C
from runtime.media.encoder_policy import codec_outdated

# Vp8Encoder's ``codec``/``target_bitrate`` below (checked against aiortc 1.16.0, av 18.1.0;
# tests/test_patched_internals.py); video_codecs.use_gateway_encoders installs it
VP8_GOP_FRAMES = 3000  # keyframes only on request (PLI), as aiortc does
VP8_QMIN, VP8_QMAX = 2, 56  # libvpx's quantizer range, aiortc's
VP8_THREADS = 1  # a 2-core gateway encodes several streams at once; one thread each
DEFAULT_VP8_SPEED = C.VP8_SPEED
DEFAULT_VP8_DENOISE = C.VP8_DENOISE


class GatewayVp8Encoder(Vp8Encoder):
    """aiortc's Vp8Encoder; only the libvpx options it builds its codec with differ."""

    def __init__(self, speed: int = DEFAULT_VP8_SPEED, denoise: bool = DEFAULT_VP8_DENOISE) -> None:
        super().__init__()
        self.speed = speed
        self.denoise = denoise
        self.codec_options: dict[str, str] = {}  # what the current codec was built with

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        # the moments aiortc (re)builds its codec; the base class then finds this one
        # matching and keeps it
        if codec_outdated(self.codec, frame.width, frame.height, self.target_bitrate):
            self.codec = self._make_codec(frame.width, frame.height)
        return super().encode(frame, force_keyframe)

    def _make_codec(self, width: int, height: int) -> Any:
        codec = av.CodecContext.create("libvpx", "w")
        codec.width, codec.height = width, height
        codec.bit_rate = self.target_bitrate
        codec.pix_fmt = "yuv420p"
        codec.gop_size = VP8_GOP_FRAMES
        codec.qmin, codec.qmax = VP8_QMIN, VP8_QMAX
        rate = str(self.target_bitrate)
        # kept: PyAV empties a codec's options once libvpx has taken them
        self.codec_options = codec.options = {
            "bufsize": rate,  # a one-second rate-control buffer
            "minrate": rate,  # min = max = target: constant bitrate, as aiortc
            "maxrate": rate,
            "cpu-used": str(-abs(self.speed)),  # negative: a fixed speed, not one libvpx adapts
            "deadline": "realtime",
            "lag-in-frames": "0",
            "noise-sensitivity": "4" if self.denoise else "0",
            "overshoot-pct": "15",
            "undershoot-pct": "100",
            "partitions": "0",
            "static-thresh": "1",
        }
        codec.thread_count = VP8_THREADS
        return codec
