"""What rtcpool's Python client sends: a synthetic video with a frame counter painted in
(live-encoded, or a cycle encoded once and replayed, in the negotiated codec), and audio
from an array. The counter survives VP8 and H.264: each bit is a block of solid black or
white, and the next 16 blocks repeat it inverted as a check."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from runtime import constants as C
from runtime.media.h264_encoder import LIMITED_RANGE, SMPTE170M
from runtime.media.video_codecs import VideoCodec

COUNTER_BITS = 16
MARK_BLOCKS = COUNTER_BITS * 2  # the counter, then its complement as a check
DEFAULT_FPS = 30.0
DEFAULT_SIZE = (640, 480)
AUDIO_RATE = 48_000  # Hz, what WebRTC's Opus carries




def mark_block(width: int) -> int:
    return max(4, width // (MARK_BLOCKS + 8))


def paint_counter(frame: np.ndarray, counter: int) -> None:
    """Write ``counter`` (16 bits) and its complement as blocks along the top-left edge."""
    block = mark_block(frame.shape[1])
    value = counter & 0xFFFF
    bits = [(value >> i) & 1 for i in range(COUNTER_BITS)]
    bits += [1 - b for b in bits]
    for i, bit in enumerate(bits):
        frame[0:block, i * block : (i + 1) * block] = 255 if bit else 0


def read_counter(frame: np.ndarray) -> int | None:
    """The counter painted by :func:`paint_counter`, or None if the mark is not intact."""
    block = mark_block(frame.shape[1])
    if frame.shape[0] < block or frame.shape[1] < block * MARK_BLOCKS:
        return None
    q = block // 4
    bits = []
    for i in range(MARK_BLOCKS):
        cell = frame[q : block - q, i * block + q : (i + 1) * block - q]
        level = float(cell.mean())
        if 70 < level < 185:
            return None  # neither black nor white: not our mark
        bits.append(1 if level >= 128 else 0)
    value, check = bits[:COUNTER_BITS], bits[COUNTER_BITS:]
    if any(a == b for a, b in zip(value, check, strict=False)):
        return None
    return sum(b << i for i, b in enumerate(value))


def synthetic_image(width: int, height: int) -> np.ndarray:
    """A colourful, structured test picture (gradients and bars), RGB."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    img[..., 1] = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    img[..., 2] = 128
    img[height // 2 :, (x[0] // 40) % 2 == 0] = (240, 200, 40)
    return img


class CounterVideoTrack(MediaStreamTrack):
    """Video at ``fps``: ``image`` (or a synthetic picture) with the frame counter painted in."""

    kind = "video"

    def __init__(self, fps: float = DEFAULT_FPS, size: tuple[int, int] = DEFAULT_SIZE, image: np.ndarray | None = None) -> None:
        super().__init__()
        self.fps = fps
        width, height = size
        if image is not None:
            import cv2

            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        self.base: np.ndarray = image if image is not None else synthetic_image(width, height)
        self.frame: np.ndarray = self.base.copy()
        self.sent_at: dict[int, float] = {}
        self.count = 0
        self._start: float | None = None

    async def _next_frame_number(self) -> int:
        """Wait until the next frame is due (``fps`` from the first), and number it."""
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        due = self._start + self.count / self.fps
        if due > now:
            await asyncio.sleep(due - now)
        n = self.count
        self.count += 1
        return n

    async def recv(self) -> av.VideoFrame:
        n = await self._next_frame_number()
        np.copyto(self.frame, self.base)
        paint_counter(self.frame, n)
        vf = av.VideoFrame.from_ndarray(self.frame, format="rgb24")
        vf.pts = int(n * C.VIDEO_CLOCK_RATE / self.fps)
        vf.time_base = Fraction(1, C.VIDEO_CLOCK_RATE)
        self.sent_at[n & 0xFFFF] = time.monotonic()
        return vf


REPLAY_CYCLE_FRAMES = 900  # a replayed source repeats after this many frames (30 s at 30 fps)
REPLAY_BITRATE = 500_000  # bits/s of the pre-encoded video, aiortc's VP8 default target
REPLAY_MOTION_PX = 4  # a moving replay's picture shifts this far right each frame
REPLAY_NOISE_LEVELS = 6  # and carries +- this much sensor noise, as a webcam's does
_replay_cache: dict[tuple[Any, ...], list[bytes]] = {}


def cycle_picture(base: np.ndarray, n: int, motion: bool) -> np.ndarray:
    """Frame ``n``'s picture before its counter is painted: ``base``, or with ``motion``
    ``base`` shifted and with noise (seeded by ``n``: the same every time). A still picture
    costs encoders and decoders far less than a webcam's; a benchmark of codec cost wants
    the moving one."""
    if not motion:
        return base.copy()
    picture = np.roll(base, REPLAY_MOTION_PX * n, axis=1).astype(np.int16)
    picture += np.random.default_rng(n).integers(-REPLAY_NOISE_LEVELS, REPLAY_NOISE_LEVELS + 1, picture.shape, dtype=np.int16)
    return np.clip(picture, 0, 255).astype(np.uint8)


def _cycle_codec(codec: VideoCodec, width: int, height: int, frames: int, bitrate: int) -> Any:
    rate = str(bitrate)
    if codec is VideoCodec.H264:
        ctx: Any = av.CodecContext.create("libx264", "w")
        ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline", "maxrate": rate, "bufsize": rate, "x264-params": "repeat-headers=1"}
    else:
        ctx = av.CodecContext.create("libvpx", "w")
        ctx.options = {"deadline": "realtime", "cpu-used": "-6", "lag-in-frames": "0", "minrate": rate, "maxrate": rate, "bufsize": rate}
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.bit_rate = bitrate
    ctx.gop_size = max(frames, 1)
    ctx.time_base = Fraction(1, 30)
    ctx.thread_count = 1
    if codec is VideoCodec.H264:  # BT.601 limited range, said in the VUI (h264_encoder.py)
        ctx.colorspace = ctx.color_primaries = ctx.color_trc = SMPTE170M
        ctx.color_range = LIMITED_RANGE
    return ctx


def encode_cycle(
    base: np.ndarray, frames: int, bitrate: int = REPLAY_BITRATE, codec: VideoCodec = VideoCodec.VP8, motion: bool = False
) -> list[bytes]:
    """``frames`` frames of ``base`` (moving, with ``motion``: :func:`cycle_picture`) in
    ``codec`` with the counter 0, 1, ... painted in: the first a key frame (H.264: an IDR
    with its SPS and PPS), the others each predicted from the one before, so playing them in
    order from the first, over and over, is a valid stream."""
    import cv2

    height, width = base.shape[:2]
    ctx = _cycle_codec(codec, width, height, frames, bitrate)
    out: list[bytes] = []
    for n in range(frames):
        picture = cycle_picture(base, n, motion)
        paint_counter(picture, n)
        i420: np.ndarray = cv2.cvtColor(picture, cv2.COLOR_RGB2YUV_I420)
        frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
        frame.pts, frame.time_base = n, Fraction(1, 30)
        out.append(b"".join(bytes(p) for p in ctx.encode(frame)))
    tail = b"".join(bytes(p) for p in ctx.encode(None))
    if tail:
        out[-1] += tail
    return out


class ReplayVideoTrack(CounterVideoTrack):
    """CounterVideoTrack that sends a cycle of frames encoded once, ahead of time, instead
    of encoding every frame as it goes: a load generator running many streams on the
    machine it measures should not spend its cores on VP8 (one 640x480 encode costs as much
    as a server's). The server sees the same kind of stream; counters repeat every
    REPLAY_CYCLE_FRAMES frames, so latencies up to that long are read unambiguously."""

    def __init__(
        self, fps: float = DEFAULT_FPS, size: tuple[int, int] = DEFAULT_SIZE, image: np.ndarray | None = None, cycle: int = REPLAY_CYCLE_FRAMES,
        motion: bool = False,
    ) -> None:
        super().__init__(fps, size, image)
        self.cycle = cycle
        self.motion = motion
        self.codec = VideoCodec.VP8
        self._encoded: list[bytes] | None = None  # encoded at the first frame, in the codec then set

    def use_codec(self, codec: VideoCodec) -> None:
        """Replay ``codec`` (the negotiated one; set before the first frame is sent)."""
        if codec is not self.codec:
            self.codec, self._encoded = codec, None

    @property
    def encoded(self) -> list[bytes]:
        if self._encoded is None:
            key = (self.base.shape, self.cycle, hash(self.base.tobytes()), self.codec, self.motion)
            if key not in _replay_cache:
                _replay_cache[key] = encode_cycle(self.base, self.cycle, codec=self.codec, motion=self.motion)
            self._encoded = _replay_cache[key]
        return self._encoded

    @encoded.setter
    def encoded(self, frames: list[bytes]) -> None:
        self._encoded = frames

    def picture(self, k: int) -> np.ndarray:
        """What frame ``k`` of the cycle showed (its counter painted in), before encoding."""
        picture = cycle_picture(self.base, k, self.motion)
        paint_counter(picture, k)
        return picture

    async def recv(self) -> av.Packet:  # type: ignore[override]
        n = await self._next_frame_number()
        k = n % len(self.encoded)
        packet = av.Packet(self.encoded[k])
        packet.pts = int(n * C.VIDEO_CLOCK_RATE / self.fps)
        packet.time_base = Fraction(1, C.VIDEO_CLOCK_RATE)
        self.sent_at[k] = time.monotonic()
        return packet


class ArrayAudioTrack(MediaStreamTrack):
    """Mono int16 samples sent as 20 ms frames in real time; silence after the end (or loop)."""

    kind = "audio"

    def __init__(self, samples: np.ndarray, rate: int = AUDIO_RATE, loop: bool = False) -> None:
        super().__init__()
        self.samples = np.asarray(samples, dtype=np.int16).reshape(-1)
        self.rate = rate
        self.loop = loop
        self.frame_samples = int(rate * C.AUDIO_FRAME_S)
        self.pos = 0
        self.started_at: float | None = None  # wall time (monotonic) of the first sample

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self.started_at is None:
            self.started_at = now
        due = self.started_at + self.pos / self.rate
        if due > now:
            await asyncio.sleep(due - now)
        n = self.frame_samples
        chunk = self.samples[self.pos : self.pos + n] if not self.loop else np.take(self.samples, range(self.pos, self.pos + n), mode="wrap")
        if len(chunk) < n:
            chunk = np.concatenate([chunk, np.zeros(n - len(chunk), np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self.pos
        frame.time_base = Fraction(1, self.rate)
        self.pos += n
        return frame
