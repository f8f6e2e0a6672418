"""runtime/media/vp8_guard.py and the pixel limit in runtime/media/jitter.py's video buffers.

Real VP8 from libvpx (aiortc's Vp8Encoder), packetized by aiortc's VP8 payloader and
depacketized as aiortc's receiver does, through both buffers (marker release and aiortc's
rule). The "too large" key frame is a real small one whose header is forged to claim
16383x16383, as an attacker would send it: decoding it would make libvpx allocate ~400 MB,
so the test asserts it never reaches the decoder.
"""

from __future__ import annotations

import fractions
import random

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, vp8_depayload
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

from runtime.media.jitter import (
    RECEIVER_BUFFER_ATTR,
    FrameGuard,
    GuardedJitterBuffer,
    MarkerJitterBuffer,
    guard_video,
)
from runtime.media.vp8_guard import VP8_KEYFRAME_HEADER_BYTES, VP8_MAX_DIMENSION, keyframe_size

SMALL = (160, 120)
MAX_PIXELS = 320 * 240  # the limit in these tests
FRAME_TICKS = 3000  # 90 kHz RTP ticks a frame (30 fps)
GARBAGE_FRAMES = 2000  # random byte strings fed to keyframe_size
PAYLOAD_TYPE = 96


def encode(size: tuple[int, int], frames: int) -> list[bytes]:
    """``frames`` depacketized VP8 frames of ``size`` (the first a key frame), each as the
    bytes aiortc's receiver hands its decoder."""
    encoder = Vp8Encoder()
    out = []
    for i in range(frames):
        image = np.full((size[1], size[0], 3), (i * 20) % 256, np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = i * FRAME_TICKS, fractions.Fraction(1, 90_000)
        payloads, _ = encoder.encode(frame, force_keyframe=i == 0)
        out.append(b"".join(vp8_depayload(p) for p in payloads))
    return out


def forge(keyframe: bytes, width: int, height: int) -> bytes:
    """A key frame whose header claims ``width`` x ``height``; the rest is untouched."""
    header = bytearray(keyframe)
    header[6:8] = width.to_bytes(2, "little")
    header[8:10] = height.to_bytes(2, "little")
    return bytes(header)


def packets(frames: list[bytes], start_seq: int = 1000) -> list[RtpPacket]:
    """RTP packets for ``frames`` as aiortc's VP8 payloader cuts them (its MTU), with the
    marker on each frame's last packet and ``_data`` set as aiortc's receiver sets it."""
    out = []
    seq = start_seq
    for index, data in enumerate(frames):
        payloads = Vp8Encoder._packetize(data, picture_id=index)
        for j, payload in enumerate(payloads):
            packet = RtpPacket(payload_type=PAYLOAD_TYPE, marker=int(j == len(payloads) - 1), sequence_number=seq % 65536, timestamp=index * FRAME_TICKS, payload=payload)
            packet._data = vp8_depayload(payload)
            out.append(packet)
            seq += 1
    return out


def released(buffer: JitterBuffer, stream: list[RtpPacket]) -> list[JitterFrame]:
    out = []
    for packet in stream:
        _, frame = buffer.add(packet)
        if frame is not None:
            out.append(frame)
    return out


@pytest.fixture(scope="module")
def small() -> list[bytes]:
    return encode(SMALL, 4)


# --- the header ---------------------------------------------------------------------------


def test_keyframe_size_reads_real_frames(small):
    assert keyframe_size(small[0]) == SMALL
    assert all(keyframe_size(f) is None for f in small[1:])  # inter frames claim nothing
    big = encode((640, 480), 1)[0]
    assert keyframe_size(big) == (640, 480)
    assert keyframe_size(forge(small[0], VP8_MAX_DIMENSION, VP8_MAX_DIMENSION)) == (16383, 16383)
    # the two scale bits are not part of the size
    assert keyframe_size(forge(small[0], 0xC000 | 160, 0x4000 | 120)) == SMALL


def test_truncated_and_garbage_frames_do_not_raise(small):
    for n in range(len(small[0])):
        size = keyframe_size(small[0][:n])
        assert size is None if n < VP8_KEYFRAME_HEADER_BYTES else size == SMALL
    rng = random.Random(11)
    for _ in range(GARBAGE_FRAMES):
        data = rng.randbytes(rng.randrange(0, 40))
        size = keyframe_size(data)
        assert size is None or (0 <= size[0] <= VP8_MAX_DIMENSION and 0 <= size[1] <= VP8_MAX_DIMENSION)
    assert keyframe_size(b"\x00\x00\x00\x01\x67\x42\x00\x1f\x00\x00") is None  # an H.264 frame
    assert keyframe_size(bytearray(small[0])) == SMALL and keyframe_size(memoryview(small[0])) == SMALL


# --- the buffers ----------------------------------------------------------------------------


@pytest.mark.parametrize("make", [MarkerJitterBuffer, GuardedJitterBuffer], ids=["marker", "aiortc-rule"])
def test_an_oversized_key_frame_and_its_dependants_never_reach_the_decoder(small, make):
    forged = forge(small[0], VP8_MAX_DIMENSION, VP8_MAX_DIMENSION)
    # small key + 3 inter, forged key + 3 inter (of the small stream), small key + 3 inter, and
    # one trailing frame so aiortc's rule (released by the next frame's packet) lets the last go
    stream = [*small, forged, *small[1:], *small, *small[1:2]]
    refused = []
    guard = FrameGuard(MAX_PIXELS, lambda w, h: refused.append((w, h)))
    out = released(make(guard=guard), packets(stream))
    assert forged not in [f.data for f in out]
    assert guard.keyframes_refused == 1 and guard.frames_dropped == 4  # the key frame and its 3 inter frames
    assert refused == [(16383, 16383)]
    # what was released decodes, at the right size, and the decoder never saw the claim
    decoder = Vp8Decoder()
    decoded = [frame for f in out for frame in decoder.decode(f)]
    # 4 + 4 + the trailing one on its marker; aiortc's rule holds the trailing one back
    assert len(decoded) == len(out) == (9 if make is MarkerJitterBuffer else 8)
    assert {(f.width, f.height) for f in decoded} == {SMALL}


def test_an_acceptable_key_frame_ends_the_refusal_and_the_report_is_once(small):
    forged = forge(small[0], 4000, 4000)
    calls = []
    guard = FrameGuard(MAX_PIXELS, lambda w, h: calls.append((w, h)))
    frames = [JitterFrame(data, i * FRAME_TICKS) for i, data in enumerate([forged, small[1], forged, small[0], small[1]])]
    kept = [guard.admit(f) for f in frames]
    assert [k is not None for k in kept] == [False, False, False, True, True]
    assert calls == [(4000, 4000)] and guard.keyframes_refused == 2 and guard.frames_dropped == 3
    assert guard.admit(None) is None
    # a key frame at exactly the limit passes
    assert FrameGuard(SMALL[0] * SMALL[1]).admit(JitterFrame(small[0], 0)) is not None
    assert FrameGuard(SMALL[0] * SMALL[1] - 1).admit(JitterFrame(small[0], 0)) is None


def test_garbage_through_the_buffer_does_not_raise():
    rng = random.Random(7)
    guard = FrameGuard(MAX_PIXELS)
    buffer = MarkerJitterBuffer(guard=guard)
    frames = [rng.randbytes(rng.randrange(0, 30)) for _ in range(200)]
    frames[50] = b"\x10\x02\x00\x9d\x01\x2a\xff\x3f\xff\x3f"  # a bare forged header, nothing after
    out = released(buffer, packets(frames))
    assert guard.keyframes_refused >= 1 and b"\x10\x02\x00\x9d\x01\x2a\xff\x3f\xff\x3f" not in [f.data for f in out]


def test_marker_buffer_without_a_guard_is_unchanged(small):
    forged = forge(small[0], VP8_MAX_DIMENSION, VP8_MAX_DIMENSION)
    out = released(MarkerJitterBuffer(), packets([small[0], forged]))
    assert [f.data for f in out] == [small[0], forged]  # rtcpool's own client sets no limit


# --- installed on a peer connection -----------------------------------------------------------


@pytest.mark.parametrize("on_marker", [True, False])
async def test_guard_video_replaces_every_video_receivers_buffer(on_marker):
    offerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    offerer.addTransceiver("video")
    offerer.addTransceiver("video")
    offerer.addTransceiver("audio")
    await offerer.setLocalDescription(await offerer.createOffer())
    answerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        await answerer.setRemoteDescription(RTCSessionDescription(offerer.localDescription.sdp, "offer"))
        calls = []
        guards = guard_video(answerer, MAX_PIXELS, lambda w, h: calls.append((w, h)), release_on_marker=on_marker)
        assert len(guards) == 2
        buffers = [getattr(t.receiver, RECEIVER_BUFFER_ATTR) for t in answerer.getTransceivers()]
        kinds = [t.kind for t in answerer.getTransceivers()]
        video = [b for b, k in zip(buffers, kinds, strict=True) if k == "video"]
        expected = MarkerJitterBuffer if on_marker else GuardedJitterBuffer
        assert all(type(b) is expected and b.guard in guards for b in video)
        audio = [b for b, k in zip(buffers, kinds, strict=True) if k == "audio"]
        assert all(not isinstance(b, GuardedJitterBuffer) for b in audio)
        # one report for the peer connection, whichever receiver refuses first
        forged = forge(encode(SMALL, 1)[0], 9000, 9000)
        for buffer in video:
            released(buffer, packets([forged, forged]))
        assert calls == [(9000, 9000)]
        assert sum(g.keyframes_refused for g in guards) >= 2
    finally:
        await answerer.close()
        await offerer.close()
