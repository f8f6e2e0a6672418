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

Buffers are replaced per peer connection, right after the remote description is set and
before any packet can have arrived.
"""

from __future__ import annotations

from typing import Any

from aiortc.jitterbuffer import JitterBuffer, JitterFrame

AIORTC_AUDIO_JITTER_CAPACITY = 16  # packets, aiortc's own value (must be a power of two)
AIORTC_AUDIO_JITTER_PREFETCH = 4  # packets (20 ms each), aiortc's own value
AIORTC_VIDEO_JITTER_CAPACITY = 512  # packets, aiortc's own value for video
RECEIVER_BUFFER_ATTR = "_RTCRtpReceiver__jitter_buffer"  # aiortc's name-mangled private field


class MarkerJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, releasing a frame on its marked last packet."""

    def __init__(self, capacity: int = AIORTC_VIDEO_JITTER_CAPACITY) -> None:
        super().__init__(capacity=capacity, is_video=True)

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


def release_video_on_marker(pc: Any) -> None:
    """Give every video receiver of ``pc`` a :class:`MarkerJitterBuffer`."""
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "video":
            receiver = transceiver.receiver
            if not hasattr(receiver, RECEIVER_BUFFER_ATTR):
                raise RuntimeError("this aiortc has no video jitter buffer where rtcpool expects it")
            setattr(receiver, RECEIVER_BUFFER_ATTR, MarkerJitterBuffer())
