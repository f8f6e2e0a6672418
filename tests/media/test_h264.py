"""H.264 in the media plane: the SPS guard (runtime/media/h264_guard.py), the frame guard's
H.264 reader in the jitter buffers, the answer's codec choice (video_codecs.py) and the
gateway's H.264 encoder (h264_encoder.py).

Real H.264 from libx264, packetized by aiortc's H.264 packetizer (single NAL, STAP-A, FU-A)
and depacketized as aiortc's receiver does. The hostile SPSs are written here bit by bit
(an SPS writer below), spliced into a real key frame in place of its own SPS, as an
attacker would send them.
"""

from __future__ import annotations

import logging
import random
from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.codecs.h264 import H264Decoder, H264Encoder, h264_depayload
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

from runtime.clients.sources import synthetic_image
from runtime.media import h264_encoder, h264_guard
from runtime.media.h264_encoder import (
    GatewayH264Encoder,
    level_for,
)
from runtime.media.h264_guard import (
    MAX_NAL_UNITS_PER_FRAME,
    MalformedH264,
    keyframe_size,
    parse_sps,
)
from runtime.media.jitter import (
    RECEIVER_BUFFER_ATTR,
    FrameGuard,
    GuardedJitterBuffer,
    MarkerJitterBuffer,
    guard_video,
)
from runtime.media.video_codecs import VideoCodec, answer_one_codec
from runtime.media.vp8_guard import keyframe_size as vp8_keyframe_size

SMALL = (160, 120)
MAX_PIXELS = 320 * 240  # the limit in these tests
FRAME_TICKS = 3000  # 90 kHz RTP ticks a frame (30 fps)
PAYLOAD_TYPE = 102
GARBAGE_FRAMES = 2000
MUTATIONS = 3000  # bit flips of a real SPS
MIN_PSNR_DB = 30.0  # a synthetic picture at 500 kbps comes back far better than this


# --- writing H.264 -------------------------------------------------------------------------


class BitWriter:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, n: int, value: int) -> None:
        self.bits += [(value >> (n - 1 - i)) & 1 for i in range(n)]

    def ue(self, value: int) -> None:
        code = value + 1
        self.bits += [0] * (code.bit_length() - 1)
        self.u(code.bit_length(), code)

    def se(self, value: int) -> None:
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def rbsp(self) -> bytes:
        bits = [*self.bits, 1]  # rbsp_stop_one_bit, then zeros to a byte
        bits += [0] * (-len(bits) % 8)
        return bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))


def with_emulation_prevention(rbsp: bytes) -> bytes:
    out = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def make_sps(
    width_mbs: int,
    height_mbs: int,
    *,
    profile: int = 66,
    constraints: int = 0xC0,
    level: int = 30,
    crop: tuple[int, int, int, int] | None = None,
    frame_mbs_only: int = 1,
    poc_type: int = 2,
    chroma: int = 1,
    bit_depth: int = 8,
    scaling: bool = False,
) -> bytes:
    """An SPS NAL unit (header byte 0x67 and all) for a ``width_mbs`` x ``height_mbs``
    picture (map units: for frame_mbs_only=0 the height doubles)."""
    w = BitWriter()
    w.u(8, profile)
    w.u(8, constraints)
    w.u(8, level)
    w.ue(0)  # seq_parameter_set_id
    if profile in h264_guard.HIGH_PROFILES:
        w.ue(chroma)
        if chroma == 3:
            w.u(1, 0)
        w.ue(bit_depth - 8)
        w.ue(bit_depth - 8)
        w.u(1, 0)
        w.u(1, int(scaling))
        if scaling:
            for i in range(8):
                w.u(1, 1)
                for _ in range(16 if i < 6 else 64):
                    w.se(1)
    w.ue(0)  # log2_max_frame_num_minus4
    w.ue(poc_type)
    if poc_type == 0:
        w.ue(2)
    elif poc_type == 1:
        w.u(1, 0)
        w.se(-1)
        w.se(2)
        w.ue(3)
        for offset in (1, -1, 0):
            w.se(offset)
    w.ue(1)  # max_num_ref_frames
    w.u(1, 0)
    w.ue(width_mbs - 1)
    w.ue(height_mbs - 1)
    w.u(1, frame_mbs_only)
    if not frame_mbs_only:
        w.u(1, 0)
    w.u(1, 1)  # direct_8x8_inference_flag
    w.u(1, int(crop is not None))
    if crop is not None:
        for value in crop:
            w.ue(value)
    w.u(1, 0)  # vui_parameters_present_flag
    return b"\x67" + with_emulation_prevention(w.rbsp())


def nal_units(annexb: bytes) -> list[bytes]:
    return list(H264Encoder._split_bitstream(annexb))


def annexb(units: list[bytes]) -> bytes:
    return b"".join(b"\x00\x00\x00\x01" + u for u in units)


def encode(size: tuple[int, int], frames: int) -> list[bytes]:
    """``frames`` Annex B access units of ``size`` from the gateway's encoder (the first an
    IDR with SPS and PPS), each as aiortc's receiver hands it to the decoder."""
    encoder = GatewayH264Encoder()
    out = []
    for i in range(frames):
        image = np.roll(synthetic_image(*size), i * 3, axis=1)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = i * FRAME_TICKS, Fraction(1, 90_000)
        payloads, _ = encoder.encode(frame, force_keyframe=i == 0)
        out.append(b"".join(h264_depayload(p) for p in payloads))
    return out


def forge(keyframe: bytes, sps: bytes) -> bytes:
    """``keyframe`` with its SPS replaced by ``sps``; everything else untouched."""
    return annexb([sps if u[0] & 0x1F == h264_guard.NAL_SPS else u for u in nal_units(keyframe)])


def packets(frames: list[bytes], start_seq: int = 2000) -> list[RtpPacket]:
    """RTP packets for ``frames`` as aiortc's H.264 packetizer cuts them, the marker on each
    frame's last packet, ``_data`` set as aiortc's receiver sets it."""
    out = []
    seq = start_seq
    for index, data in enumerate(frames):
        payloads = H264Encoder._packetize(nal_units(data))
        for j, payload in enumerate(payloads):
            packet = RtpPacket(payload_type=PAYLOAD_TYPE, marker=int(j == len(payloads) - 1), sequence_number=seq % 65536, timestamp=index * FRAME_TICKS, payload=payload)
            try:
                packet._data = h264_depayload(payload)
            except ValueError:
                continue  # aiortc's receiver drops a packet it cannot depacketize (not sent here)
            out.append(packet)
            seq += 1
    return out


def released(buffer: JitterBuffer, stream: list[RtpPacket]) -> tuple[list[JitterFrame], int]:
    """The frames ``buffer`` releases, and how many PLIs it asked for."""
    out, plis = [], 0
    for packet in stream:
        pli, frame = buffer.add(packet)
        plis += int(pli)
        if frame is not None:
            out.append(frame)
    return out, plis


@pytest.fixture(scope="module")
def small() -> list[bytes]:
    return encode(SMALL, 4)


# --- the SPS ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(640, 480), (642, 362), (160, 120), (1280, 720)])
def test_the_size_of_real_key_frames_after_cropping(size):
    frames = encode(size, 2)
    assert keyframe_size(frames[0]) == size
    assert keyframe_size(frames[1]) is None  # a P frame carries no SPS
    sps = parse_sps(next(u for u in nal_units(frames[0]) if u[0] & 0x1F == 7))
    assert sps.constrained_baseline and sps.coded_width % 16 == 0 and sps.coded_height % 16 == 0
    assert sps.level_idc == level_for(*size)


def test_written_spss_read_back_in_every_form():
    assert parse_sps(make_sps(40, 30)).width == 640
    assert keyframe_size(annexb([make_sps(1024, 1024)])) == (16384, 16384)
    # cropping is in 2-pixel units for 4:2:0, 4-pixel rows for a field pair
    sps = parse_sps(make_sps(80, 23, crop=(0, 0, 0, 4)))
    assert (sps.width, sps.height, sps.coded_height) == (1280, 360, 368)
    assert parse_sps(make_sps(40, 15, frame_mbs_only=0)).height == 480
    assert parse_sps(make_sps(40, 15, frame_mbs_only=0, crop=(1, 1, 0, 2))).height == 480 - 8
    # picture order count types 0 and 1, a high profile at 4:2:0 8 bits with scaling lists
    assert parse_sps(make_sps(40, 30, poc_type=0)).height == 480
    assert parse_sps(make_sps(40, 30, poc_type=1)).height == 480
    assert parse_sps(make_sps(40, 30, profile=100, constraints=0, scaling=True)).width == 640
    # a level that cannot hold the size still reads (FFmpeg decodes by size; so does the guard)
    assert parse_sps(make_sps(120, 68, level=10)).width == 1920
    # an SPS whose RBSP holds 00 00 0x is sent with emulation prevention bytes
    nal = make_sps(1024, 65536)  # 1024 - 1 and 65536 - 1 in Exp-Golomb: runs of zero bits
    assert b"\x00\x00\x03" in nal
    assert (parse_sps(nal).width, parse_sps(nal).height) == (1024 * 16, 65536 * 16)


@pytest.mark.parametrize(
    ("nal", "reason"),
    [
        (make_sps(40, 30, profile=100, constraints=0, chroma=3), "chroma format 3"),
        (make_sps(40, 30, profile=110, constraints=0, bit_depth=10), "at 10/10 bits"),
        (make_sps(40, 30, level=99), "level_idc 99"),
        (make_sps(40, 30, crop=(160, 160, 0, 0)), "crops more"),
        (b"\x68\x42\xc0\x1e", "not an SPS"),
        (b"\xe7\x42\xc0\x1e\xff", "not an SPS"),  # forbidden_zero_bit
        (b"\x67\x42\xc0\x1e" + b"\x00" * 8 + b"\x01", "Exp-Golomb"),
        (b"\x67\x42\xc0\x1e\x02\x01", "over its limit"),  # seq_parameter_set_id 63
    ],
)
def test_spss_the_media_plane_does_not_serve_are_malformed(nal, reason):
    with pytest.raises(MalformedH264, match=reason):
        parse_sps(nal)


def test_truncated_mutated_and_garbage_input_raises_only_malformed(small):
    sps = next(u for u in nal_units(small[0]) if u[0] & 0x1F == 7)
    for n in range(len(sps)):
        # a cut into what the guard reads is malformed; one into the VUI after it is not read
        try:
            assert (parse_sps(sps[:n]).width, parse_sps(sps[:n]).height) == SMALL
        except MalformedH264:
            continue
    rng = random.Random(5)
    sizes = set()
    for _ in range(MUTATIONS):
        mutated = bytearray(sps)
        for _ in range(rng.randrange(1, 4)):
            bit = rng.randrange(8, len(mutated) * 8)
            mutated[bit // 8] ^= 0x80 >> (bit % 8)
        try:
            size = keyframe_size(forge(small[0], bytes(mutated)))
        except MalformedH264:
            continue
        assert size is not None and size[0] > 0 and size[1] > 0
        sizes.add(size)
    assert SMALL in sizes and len(sizes) > 1  # the flips moved the size, and it was read
    for _ in range(GARBAGE_FRAMES):
        data = rng.randbytes(rng.randrange(0, 60))
        if rng.random() < 0.5:
            data = b"\x00\x00\x01\x67" + data
        try:
            size = keyframe_size(data)
        except MalformedH264:
            continue
        assert size is None or (size[0] > 0 and size[1] > 0)


def test_a_frame_of_start_codes_is_refused_before_it_costs_much():
    assert keyframe_size(b"\x00\x00\x01\x09\xf0" * MAX_NAL_UNITS_PER_FRAME) is None  # access unit delimiters
    with pytest.raises(MalformedH264, match="NAL units"):
        keyframe_size(b"\x00\x00\x01\x09\xf0" * (MAX_NAL_UNITS_PER_FRAME + 1))
    with pytest.raises(MalformedH264, match="start code"):
        keyframe_size(b"\x65\x88\x84\x00")
    with pytest.raises(MalformedH264):
        keyframe_size(b"")


# --- the buffers ----------------------------------------------------------------------------


@pytest.mark.parametrize("make", [MarkerJitterBuffer, GuardedJitterBuffer], ids=["marker", "aiortc-rule"])
def test_an_oversized_sps_and_its_dependants_never_reach_the_decoder(small, make):
    forged = forge(small[0], make_sps(1024, 1024))
    # a trailing key frame, so aiortc's rule (released by the next frame's packet) lets the last go
    stream = [*small, forged, *small[1:], *small, small[0]]
    refused = []
    guard = FrameGuard(MAX_PIXELS, lambda w, h: refused.append((w, h)), keyframe_size)
    out, plis = released(make(guard=guard), packets(stream))
    assert forged not in [f.data for f in out]
    assert guard.keyframes_refused == 1 and guard.frames_dropped == 4 and refused == [(16384, 16384)]
    assert plis == 0  # the sender's next key frame would be as large
    decoder = H264Decoder()
    decoded = [frame for f in out for frame in decoder.decode(f)]
    assert len(decoded) == len(out) == (9 if make is MarkerJitterBuffer else 8)
    assert {(f.width, f.height) for f in decoded} == {SMALL}


def test_a_malformed_sps_drops_its_frames_asks_for_a_key_frame_once_and_reports_once(small):
    bad = forge(small[0], make_sps(40, 30, level=99))
    reasons = []
    guard = FrameGuard(MAX_PIXELS, None, keyframe_size, reasons.append)
    out, plis = released(MarkerJitterBuffer(guard=guard), packets([*small, bad, *small[1:], bad, *small]))
    assert plis == 1  # one for the run: the second bad frame came while still blocked
    assert guard.frames_malformed == 2 and guard.frames_dropped == 2 + 3
    assert len(reasons) == 1 and "level_idc 99" in reasons[0]
    assert [f.data for f in out] == [*small, *small]
    decoder = H264Decoder()
    decoded = [frame for f in out for frame in decoder.decode(f)]
    assert len(decoded) == len(out) and {(f.width, f.height) for f in decoded} == {SMALL}


def test_garbage_through_the_buffer_does_not_raise():
    rng = random.Random(9)
    guard = FrameGuard(MAX_PIXELS, read=keyframe_size)
    frames = [b"\x00\x00\x01" + bytes([rng.choice([0x61, 0x65, 0x67, 0x68])]) + rng.randbytes(rng.randrange(0, 30)) for _ in range(200)]
    frames[50] = annexb([make_sps(4000, 4000)])
    out, _ = released(MarkerJitterBuffer(guard=guard), packets(frames))
    assert guard.keyframes_refused >= 1 and frames[50] not in [f.data for f in out]


# --- the answer ------------------------------------------------------------------------------


async def _offer(codecs: list[str]) -> RTCPeerConnection:
    offerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = offerer.addTransceiver("video")
    capabilities = RTCRtpSender.getCapabilities("video").codecs
    transceiver.setCodecPreferences([c for name in [*codecs, "rtx"] for c in capabilities if c.mimeType.lower() == f"video/{name}"])
    await offerer.setLocalDescription(await offerer.createOffer())
    return offerer


@pytest.mark.parametrize(
    ("offered", "preference", "chosen"),
    [
        (["vp8", "h264"], ["h264", "vp8"], VideoCodec.H264),  # aiortc's own order, the server's preference wins
        (["h264", "vp8"], ["vp8", "h264"], VideoCodec.VP8),
        (["vp8"], ["h264", "vp8"], VideoCodec.VP8),  # a peer without H.264 gets VP8
        (["h264"], ["h264", "vp8"], VideoCodec.H264),
        (["h264"], ["vp8"], None),
    ],
)
async def test_the_answer_speaks_one_codec_both_ways_and_the_guard_reads_it(offered, preference, chosen):
    offerer = await _offer(offered)
    answerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        await answerer.setRemoteDescription(RTCSessionDescription(offerer.localDescription.sdp, "offer"))
        assert answer_one_codec(answerer, preference) == [chosen]
        (transceiver,) = answerer.getTransceivers()
        if chosen is None:
            assert transceiver._codecs == []
            return
        guards = guard_video(answerer, MAX_PIXELS)
        assert guards[0].read is (keyframe_size if chosen is VideoCodec.H264 else vp8_keyframe_size)
        assert isinstance(getattr(transceiver.receiver, RECEIVER_BUFFER_ATTR), MarkerJitterBuffer)
        await answerer.setLocalDescription(await answerer.createAnswer())
        sdp = answerer.localDescription.sdp
        names = {line.split()[1].split("/")[0] for line in sdp.splitlines() if line.startswith("a=rtpmap:")}
        assert names == {"H264" if chosen is VideoCodec.H264 else "VP8", "rtx"}
        if chosen is VideoCodec.H264:
            assert sdp.count("H264/90000") == 1 and "packetization-mode=1" in sdp
    finally:
        await answerer.close()
        await offerer.close()


# --- the encoder -----------------------------------------------------------------------------


def _frame(i: int, size: tuple[int, int] = (640, 480)) -> av.VideoFrame:
    image = np.roll(synthetic_image(*size), i * 4, axis=1)
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    frame.pts, frame.time_base = i * FRAME_TICKS, Fraction(1, 90_000)
    return frame


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255**2 / max(mse, 1e-9))


def test_the_encoder_is_real_time_and_keyframes_come_on_request_as_idrs():
    encoder = GatewayH264Encoder()
    decoder = H264Decoder()
    kinds = []
    pictures = []
    for i in range(20):
        payloads, _ = encoder.encode(_frame(i), force_keyframe=i in (0, 12))
        data = b"".join(h264_depayload(p) for p in payloads)
        kinds.append({u[0] & 0x1F for u in nal_units(data)})
        decoded = decoder.decode(JitterFrame(data, i * FRAME_TICKS))
        # BT.601 limited range, said in the VUI: a browser would read BT.709 otherwise
        assert all((f.colorspace, f.color_range) == (h264_encoder.SMPTE170M, h264_encoder.LIMITED_RANGE) for f in decoded)
        pictures += [f.to_ndarray(format="rgb24") for f in decoded]
    assert encoder.codec.name == "libx264" and encoder.codec.thread_count == 1
    options = encoder.codec_options
    assert (options["preset"], options["tune"], options["profile"], options["forced-idr"]) == ("ultrafast", "zerolatency", "baseline", "1")
    # an IDR with SPS and PPS exactly where asked, and nowhere else
    assert [i for i, k in enumerate(kinds) if {5, 7, 8} <= k] == [0, 12]
    assert all(5 not in k and 7 not in k for i, k in enumerate(kinds) if i not in (0, 12))
    assert len(pictures) == 20
    assert _psnr(pictures[-1], _frame(19).to_ndarray(format="rgb24")) > MIN_PSNR_DB


def test_the_bitrate_follows_vp8s_policy_and_a_change_rebuilds_the_codec():
    encoder = GatewayH264Encoder()
    assert encoder.target_bitrate == h264_encoder.DEFAULT_BITRATE
    encoder.encode(_frame(0))
    first = encoder.codec
    encoder.target_bitrate = 10_000_000
    assert encoder.target_bitrate == h264_encoder.MAX_BITRATE
    encoder.encode(_frame(1))
    assert encoder.codec is not first and encoder.codec.bit_rate == h264_encoder.MAX_BITRATE
    assert encoder.codec_options["maxrate"] == str(h264_encoder.MAX_BITRATE)
    encoder.target_bitrate = 1
    assert encoder.target_bitrate == h264_encoder.MIN_BITRATE


@pytest.mark.parametrize("size", [(161, 121), (3, 3), (641, 480)])
def test_odd_sizes_are_encoded_at_the_even_size_under_them(size):
    encoder = GatewayH264Encoder()
    payloads, _ = encoder.encode(_frame(0, size), force_keyframe=True)
    data = b"".join(h264_depayload(p) for p in payloads)
    assert keyframe_size(data) == (size[0] & ~1, size[1] & ~1)
    (picture,) = H264Decoder().decode(JitterFrame(data, 0))
    assert (picture.width, picture.height) == (size[0] & ~1, size[1] & ~1)


def test_levels_follow_the_frame_size():
    assert [level_for(*s) for s in [(176, 144), (640, 480), (1280, 720), (1920, 1080), (3840, 2160)]] == [30, 30, 31, 40, 51]


@pytest.mark.parametrize("name", ["h264_nvenc", "h264_qsv", "h264_no_such_encoder"])
def test_a_hardware_encoder_that_is_absent_or_will_not_open_falls_back_to_libx264_with_one_warning(name, caplog, monkeypatch):
    monkeypatch.setattr(h264_encoder, "_fallback_warned", set())
    caplog.set_level(logging.WARNING, logger=h264_encoder.__name__)
    for _ in range(2):  # a second stream of the process: no second warning
        encoder = GatewayH264Encoder(name)
        payloads, _ = encoder.encode(_frame(0), force_keyframe=True)
        assert encoder.codec.name == "libx264"
        assert keyframe_size(b"".join(h264_depayload(p) for p in payloads)) == (640, 480)
    warnings = [r.getMessage() for r in caplog.records if name in r.getMessage()]
    assert len(warnings) == 1 and "libx264" in warnings[0]
