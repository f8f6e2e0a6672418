"""How long aiortc holds received media back before decoding it.

Audio: aiortc's RTCRtpReceiver gives audio a jitter buffer that waits for 4 later packets
(80 ms of Opus) before it releases a frame, and has no option for it. That is a sound
default on the open internet and a waste on loopback or a LAN, where packets arrive in
order: for a voice assistant it is 80 ms of every turn.

Video: aiortc's video buffer knows a frame is complete only when a packet of the *next*
frame arrives, so every frame waits one frame interval (33 ms at 30 fps, 66 ms at 15) before
it is decoded. The RTP marker bit already says "last packet of this frame" (RFC 7741 for
VP8, RFC 6184 for H.264; browsers and aiortc set it): :class:`MarkerJitterBuffer` releases a
frame as soon as its marked packet arrives with no gap before it, and keeps aiortc's rule
for a frame whose marked packet was lost.

Pixel limit: a VP8 key frame claiming more than ``gateway.max_frame_pixels`` is dropped as
it leaves the jitter buffer, before aiortc's decoder thread sees it (the decoder would
allocate its buffers from the claim: hundreds of MB for a forged 16383x16383 header, see
``runtime/media/vp8_guard.py``). The inter frames after it are dropped too, since the decoder has
no reference for them, until a key frame within the limit arrives. :class:`FrameGuard` does
this for both release rules (aiortc's and the marker one).

Buffers are replaced per peer connection, right after the remote description is set and
before any packet can have arrived.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiortc.jitterbuffer import JitterBuffer, JitterFrame

from runtime.media.vp8_guard import keyframe_size

AIORTC_AUDIO_JITTER_CAPACITY = 16  # packets, aiortc's own value (must be a power of two)
AIORTC_AUDIO_JITTER_PREFETCH = 4  # packets (20 ms each), aiortc's own value
AIORTC_VIDEO_JITTER_CAPACITY = 512  # packets, aiortc's own value for video
# aiortc's name-mangled private field, and JitterBuffer's ``_packets``/``_origin``/
# ``_remove_frame`` that MarkerJitterBuffer uses (checked against aiortc 1.16.0; tests/test_patched_internals.py)
RECEIVER_BUFFER_ATTR = "_RTCRtpReceiver__jitter_buffer"


class FrameGuard:
    """Refuses VP8 key frames over ``max_pixels`` and the inter frames that follow them.

    Runs on the event loop (aiortc adds packets to the buffer from its receiver coroutine),
    once per released frame: a few byte reads and a comparison, nothing allocated."""

    def __init__(self, max_pixels: int, on_refused: Callable[[int, int], None] | None = None) -> None:
        self.max_pixels = max_pixels
        self.on_refused = on_refused  # called with (width, height) for the first refused key frame
        self.keyframes_refused = 0
        self.frames_dropped = 0  # refused key frames and the inter frames dropped after them
        self._blocked = False  # the last key frame was refused: its dependants go too
        self._reported = False

    def admit(self, frame: JitterFrame | None) -> JitterFrame | None:
        """``frame`` if it may be decoded, else None (and it is counted)."""
        if frame is None:
            return None
        size = keyframe_size(frame.data)
        if size is not None:
            width, height = size
            if width * height <= self.max_pixels:
                self._blocked = False
                return frame
            self._blocked = True
            self.keyframes_refused += 1
            self.frames_dropped += 1
            if not self._reported:
                self._reported = True
                if self.on_refused is not None:
                    self.on_refused(width, height)
            return None
        if self._blocked:
            self.frames_dropped += 1
            return None
        return frame


class GuardedJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer and its release rule (a frame is complete when a packet
    of the next one arrives), with a :class:`FrameGuard` on what it releases."""

    def __init__(self, capacity: int = AIORTC_VIDEO_JITTER_CAPACITY, guard: FrameGuard | None = None) -> None:
        super().__init__(capacity=capacity, is_video=True)
        self.guard = guard

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        pli_flag, frame = super().add(packet)
        if self.guard is not None:
            # no PLI for a refused frame: the sender's next key frame would be as large
            frame = self.guard.admit(frame)
        return pli_flag, frame


class MarkerJitterBuffer(GuardedJitterBuffer):
    """aiortc's video jitter buffer, releasing a frame on its marked last packet."""

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        packets: list[Any] = []
        timestamp = None
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self.capacity]  # type: ignore[operator]
            if packet is None:
                return None  # a gap: wait for it (NACK) or for aiortc's rule below
            if timestamp is None:
                timestamp = packet.timestamp
            elif packet.timestamp != timestamp:
                # the next frame began before a marked packet: its marker was lost
                return self._release(packets, timestamp, count)
            packets.append(packet)
            if packet.marker:
                return self._release(packets, timestamp, count + 1)
        return None

    def _release(self, packets: list[Any], timestamp: int, count: int) -> JitterFrame:
        frame = JitterFrame(data=b"".join(p._data for p in packets), timestamp=timestamp)
        self.remove(count)
        return frame


def set_audio_prefetch(pc: Any, prefetch: int | None) -> None:
    """Give every audio receiver of ``pc`` a jitter buffer that waits for ``prefetch``
    packets (None: keep aiortc's)."""
    if prefetch is None or prefetch == AIORTC_AUDIO_JITTER_PREFETCH:
        return
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio":
            receiver = transceiver.receiver
            # a private field: checked so an aiortc upgrade fails loudly here
            if not hasattr(receiver, RECEIVER_BUFFER_ATTR):
                raise RuntimeError("this aiortc has no audio jitter buffer where rtcpool expects it")
            setattr(receiver, RECEIVER_BUFFER_ATTR, JitterBuffer(capacity=AIORTC_AUDIO_JITTER_CAPACITY, prefetch=prefetch))


def _video_receivers(pc: Any) -> list[Any]:
    receivers = [t.receiver for t in pc.getTransceivers() if t.kind == "video"]
    for receiver in receivers:
        if not hasattr(receiver, RECEIVER_BUFFER_ATTR):
            raise RuntimeError("this aiortc has no video jitter buffer where rtcpool expects it")
    return receivers


def release_video_on_marker(pc: Any) -> None:
    """Give every video receiver of ``pc`` a :class:`MarkerJitterBuffer` (no pixel limit:
    for rtcpool's own client)."""
    for receiver in _video_receivers(pc):
        setattr(receiver, RECEIVER_BUFFER_ATTR, MarkerJitterBuffer())


def guard_video(
    pc: Any,
    max_pixels: int,
    on_refused: Callable[[int, int], None] | None = None,
    *,
    release_on_marker: bool = True,
) -> list[FrameGuard]:
    """Give every video receiver of ``pc`` a buffer that refuses key frames over
    ``max_pixels`` before they are decoded: a :class:`MarkerJitterBuffer`, or with
    ``release_on_marker`` false a :class:`GuardedJitterBuffer` (aiortc's release rule).
    ``on_refused(width, height)`` is called once for the whole peer connection, on the
    event loop, at the first refused key frame. Returns the guards (their counters)."""
    reported = False

    def once(width: int, height: int) -> None:
        nonlocal reported
        if not reported and on_refused is not None:
            reported = True
            on_refused(width, height)

    guards = []
    for receiver in _video_receivers(pc):
        guard = FrameGuard(max_pixels, once)
        buffer = MarkerJitterBuffer(guard=guard) if release_on_marker else GuardedJitterBuffer(guard=guard)
        setattr(receiver, RECEIVER_BUFFER_ATTR, buffer)
        guards.append(guard)
    return guards
