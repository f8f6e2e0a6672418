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

Pixel limit: a key frame claiming more than ``gateway.max_frame_pixels`` (a VP8 key frame's
header, an H.264 frame's SPS) is dropped as it leaves the jitter buffer, before aiortc's
decoder thread sees it (the decoder would allocate its buffers from the claim: hundreds of
MB for a forged 16383x16383 header, see ``vp8_guard.py`` and ``h264_guard.py``). The inter
frames after it are dropped too, since the decoder has no reference for them, until a key
frame within the limit arrives. An H.264 frame whose SPS cannot be read is dropped the same
way. :class:`FrameGuard` does this for both release rules (aiortc's and the marker one).

Buffers are replaced per peer connection, right after the remote description is set and
before any packet can have arrived.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiortc.jitterbuffer import JitterBuffer, JitterFrame

from runtime.media import h264_guard
from runtime.media.h264_guard import MalformedH264
from runtime.media.video_codecs import VideoCodec, negotiated
from runtime.media.vp8_guard import keyframe_size as vp8_keyframe_size

AIORTC_AUDIO_JITTER_CAPACITY = 16  # packets, aiortc's own value (must be a power of two)
AIORTC_AUDIO_JITTER_PREFETCH = 4  # packets (20 ms each), aiortc's own value
AIORTC_VIDEO_JITTER_CAPACITY = 512  # packets, aiortc's own value for video
# aiortc's name-mangled private field, and JitterBuffer's ``_packets``/``_origin``/
# ``_remove_frame`` that MarkerJitterBuffer uses (checked against aiortc 1.16.0; tests/test_patched_internals.py)
RECEIVER_BUFFER_ATTR = "_RTCRtpReceiver__jitter_buffer"


class FrameGuard:
    """Refuses key frames over ``max_pixels`` and the inter frames that follow them, and
    frames the codec's reader cannot read.

    ``read`` is the negotiated codec's: ``vp8_guard.keyframe_size`` or
    ``h264_guard.keyframe_size`` (the size a key frame claims, None for other frames; the
    H.264 one raises :class:`~runtime.media.h264_guard.MalformedH264`). A malformed frame is
    dropped and, if the last frame went through, a key frame is asked for (a PLI): its
    successors may depend on what it carried, so they are dropped until a key frame is
    admitted. Runs on the event loop (aiortc adds packets to the buffer from its receiver
    coroutine), once per released frame: a few byte reads and a comparison for VP8, a
    start-code scan for H.264; nothing is allocated but an SPS's bytes."""

    def __init__(
        self,
        max_pixels: int,
        on_refused: Callable[[int, int], None] | None = None,
        read: Callable[[bytes], tuple[int, int] | None] = vp8_keyframe_size,
        on_malformed: Callable[[str], None] | None = None,
    ) -> None:
        self.max_pixels = max_pixels
        self.on_refused = on_refused  # called with (width, height) for the first refused key frame
        self.on_malformed = on_malformed  # called with the reason for the first malformed frame
        self.read = read
        self.keyframes_refused = 0
        self.frames_malformed = 0
        self.frames_dropped = 0  # refused and malformed frames and the inter frames dropped after them
        self.want_keyframe = False  # set by a malformed frame: the buffer sends a PLI and clears it
        self._blocked = False  # the last key frame was refused or malformed: its dependants go too
        self._reported = False
        self._reported_malformed = False

    def admit(self, frame: JitterFrame | None) -> JitterFrame | None:
        """``frame`` if it may be decoded, else None (and it is counted)."""
        if frame is None:
            return None
        try:
            size = self.read(frame.data)
        except MalformedH264 as exc:
            self.frames_malformed += 1
            self.frames_dropped += 1
            self.want_keyframe = not self._blocked  # once a run: the sender's next key frame ends it
            self._blocked = True
            if not self._reported_malformed:
                self._reported_malformed = True
                if self.on_malformed is not None:
                    self.on_malformed(str(exc))
            return None
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
        guard = self.guard
        if guard is not None:
            # no PLI for an oversized frame: the sender's next key frame would be as large;
            # one for the first of a run of malformed ones
            frame = guard.admit(frame)
            if guard.want_keyframe:
                guard.want_keyframe = False
                pli_flag = True
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


def _video_transceivers(pc: Any) -> list[Any]:
    transceivers = [t for t in pc.getTransceivers() if t.kind == "video"]
    for transceiver in transceivers:
        if not hasattr(transceiver.receiver, RECEIVER_BUFFER_ATTR):
            raise RuntimeError("this aiortc has no video jitter buffer where rtcpool expects it")
    return transceivers


def release_video_on_marker(pc: Any) -> None:
    """Give every video receiver of ``pc`` a :class:`MarkerJitterBuffer` (no pixel limit:
    for rtcpool's own client)."""
    for transceiver in _video_transceivers(pc):
        setattr(transceiver.receiver, RECEIVER_BUFFER_ATTR, MarkerJitterBuffer())


def guard_video(
    pc: Any,
    max_pixels: int,
    on_refused: Callable[[int, int], None] | None = None,
    *,
    release_on_marker: bool = True,
    on_malformed: Callable[[str], None] | None = None,
) -> list[FrameGuard]:
    """Give every video receiver of ``pc`` a buffer that refuses key frames over
    ``max_pixels`` before they are decoded: a :class:`MarkerJitterBuffer`, or with
    ``release_on_marker`` false a :class:`GuardedJitterBuffer` (aiortc's release rule). Each
    reads the codec its transceiver negotiated (``video_codecs.answer_one_codec`` runs
    first; VP8 when none is set yet). ``on_refused(width, height)`` and
    ``on_malformed(reason)`` are called once each for the whole peer connection, on the
    event loop. Returns the guards (their counters)."""
    reported = False
    reported_malformed = False

    def once(width: int, height: int) -> None:
        nonlocal reported
        if not reported and on_refused is not None:
            reported = True
            on_refused(width, height)

    def once_malformed(reason: str) -> None:
        nonlocal reported_malformed
        if not reported_malformed and on_malformed is not None:
            reported_malformed = True
            on_malformed(reason)

    guards = []
    for transceiver in _video_transceivers(pc):
        read = h264_guard.keyframe_size if negotiated(transceiver) is VideoCodec.H264 else vp8_keyframe_size
        guard = FrameGuard(max_pixels, once, read, once_malformed)
        buffer = MarkerJitterBuffer(guard=guard) if release_on_marker else GuardedJitterBuffer(guard=guard)
        setattr(transceiver.receiver, RECEIVER_BUFFER_ATTR, buffer)
        guards.append(guard)
    return guards
