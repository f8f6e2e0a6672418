"""aiortc's receive jitter buffers as rtcpool sets them: audio prefetch, video released on the marker."""

from __future__ import annotations

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from runtime.media.jitter import (
    AIORTC_AUDIO_JITTER_PREFETCH,
    MarkerJitterBuffer,
    release_video_on_marker,
    set_audio_prefetch,
)

asyncio_test = pytest.mark.asyncio(loop_scope="session")


def _prefetch(pc: RTCPeerConnection, kind: str) -> int:
    (t,) = [t for t in pc.getTransceivers() if t.kind == kind]
    return t.receiver._RTCRtpReceiver__jitter_buffer._prefetch


@asyncio_test
async def test_audio_receivers_get_the_configured_prefetch_and_video_is_untouched():
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio")
    pc.addTransceiver("video")
    video_before = _prefetch(pc, "video")
    assert _prefetch(pc, "audio") == AIORTC_AUDIO_JITTER_PREFETCH
    set_audio_prefetch(pc, 1)
    assert _prefetch(pc, "audio") == 1
    assert _prefetch(pc, "video") == video_before
    set_audio_prefetch(pc, None)  # None keeps what is there
    assert _prefetch(pc, "audio") == 1
    await pc.close()


# --- video: release on the marker bit ------------------------------------------------------------


def _packet(seq: int, ts: int, marker: bool, data: bytes) -> RtpPacket:
    p = RtpPacket(payload_type=96, marker=int(marker), sequence_number=seq % 65536, timestamp=ts)
    p._data = data  # what aiortc's depayloader leaves for the jitter buffer
    return p


def _frames(n: int, per_frame: int, start_seq: int = 0) -> list[RtpPacket]:
    """n frames of per_frame packets; frame i's packets carry bytes b"i" and timestamp i*3000."""
    return [
        _packet(start_seq + i * per_frame + j, i * 3000, j == per_frame - 1, bytes([65 + i % 26]) * 10)
        for i in range(n)
        for j in range(per_frame)
    ]


def _feed(buffer: JitterBuffer, packets: list[RtpPacket]) -> list[tuple[int, int, bytes]]:
    """(index of the packet that released it, timestamp, data) of every frame released."""
    out = []
    for i, p in enumerate(packets):
        _, frame = buffer.add(p)
        if frame is not None:
            out.append((i, frame.timestamp, frame.data))
    return out


@pytest.mark.parametrize("start_seq", [0, 65530], ids=["plain", "sequence-wraps"])
def test_a_frame_is_released_on_its_marked_packet_not_a_frame_later(start_seq):
    packets = _frames(5, 3, start_seq)
    ours = _feed(MarkerJitterBuffer(), packets)
    aiortcs = _feed(JitterBuffer(capacity=512, is_video=True), packets)
    # same frames, same bytes; ours on packet 2, 5, 8, ... (the marked one), aiortc's only on
    # the next frame's first packet (3, 6, ...), so it never releases the last frame at all
    assert [(t, d) for _, t, d in ours] == [(i * 3000, bytes([65 + i]) * 30) for i in range(5)]
    assert [i for i, _, _ in ours] == [2, 5, 8, 11, 14]
    assert [i for i, _, _ in aiortcs] == [3, 6, 9, 12]
    assert [(t, d) for _, t, d in aiortcs] == [(t, d) for _, t, d in ours[:4]]


def test_a_gap_holds_the_frame_until_the_missing_packet_arrives():
    a0, a1, a2, b0, b1, b2 = _frames(2, 3)
    buffer = MarkerJitterBuffer()
    # a1 is late (a NACK retransmission): the marked a2 cannot release frame A without it
    assert _feed(buffer, [a0, a2, b0]) == []
    _, frame = buffer.add(a1)
    assert frame is not None and frame.timestamp == 0 and frame.data == b"A" * 30
    # B was complete up to its marker except b1 and b2
    assert _feed(buffer, [b1, b2]) == [(1, 3000, b"B" * 30)]


def test_a_lost_marker_falls_back_to_the_next_frame_starting():
    a0, a1, a2, b0, b1, b2 = _frames(2, 3)
    a2.marker = 0  # the marked packet was "lost": its bytes arrived unmarked (a sender that never marks)
    released = _feed(MarkerJitterBuffer(), [a0, a1, a2, b0, b1, b2])
    assert released == [(3, 0, b"A" * 30), (5, 3000, b"B" * 30)]


@asyncio_test
async def test_video_receivers_get_the_marker_buffer_and_audio_is_untouched():
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio")
    pc.addTransceiver("video")
    release_video_on_marker(pc)
    buffers = {t.kind: t.receiver._RTCRtpReceiver__jitter_buffer for t in pc.getTransceivers()}
    assert isinstance(buffers["video"], MarkerJitterBuffer) and buffers["video"].capacity == 512
    assert not isinstance(buffers["audio"], MarkerJitterBuffer)
    await pc.close()
