"""Every private attribute of aiortc, Gradio and uvicorn that rtcpool reads, replaces or
subclasses, checked against the installed versions.

pyproject.toml bounds these libraries (aiortc <1.17, av <19, gradio <7) and constraints.txt
pins the versions CI ran (scripts/lock.sh); the patch sites name the versions they were
checked against. When a release moves one of these names, this file fails first, with the
name, instead of a session that silently keeps aiortc's encoder or a Gradio app that never
mounts its routes.
"""

from __future__ import annotations

import asyncio
import inspect
from fractions import Fraction

import aiortc
import av
import gradio
import numpy as np
import pytest
import uvicorn
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from aiortc.rtp import RtpPacket
from packaging.version import Version

from runtime.media.h264_encoder import GatewayH264Encoder
from runtime.media.jitter import RECEIVER_BUFFER_ATTR, MarkerJitterBuffer
from runtime.media.video_codecs import SENDER_ENCODER_ATTR
from runtime.media.vp8_encoder import GatewayVp8Encoder

# the ranges pyproject.toml admits; a wider install means the bounds were lifted without a
# run of this file
BOUNDS = {
    "aiortc": (aiortc.__version__, "1.16", "1.17"),
    "av": (av.__version__, "14", "19"),
    "gradio": (gradio.__version__, "6.0", "7"),
}


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_installed_version_is_inside_the_checked_bounds(name: str):
    installed, low, high = BOUNDS[name]
    assert Version(low) <= Version(installed) < Version(high), f"{name} {installed} outside [{low}, {high})"


async def test_aiortc_keeps_the_private_fields_the_gateway_replaces():
    pc = RTCPeerConnection()
    try:
        video = pc.addTransceiver("video")
        audio = pc.addTransceiver("audio")
        # runtime/media/encoder.py swaps the sender's encoder; runtime/media/jitter.py the receivers' buffers
        assert hasattr(video.sender, SENDER_ENCODER_ATTR)
        assert isinstance(getattr(video.receiver, RECEIVER_BUFFER_ATTR), JitterBuffer)
        assert isinstance(getattr(audio.receiver, RECEIVER_BUFFER_ATTR), JitterBuffer)
        # use_gateway_encoder reads the negotiated codecs from here
        assert isinstance(video._codecs, list)
        assert isinstance(RTCRtpSender, type)
    finally:
        await pc.close()


def test_aiortc_remote_track_keeps_its_frame_queue():
    # runtime/media/frames.py newest_frame() drains it for latest-frame-wins
    track = RemoteStreamTrack(kind="video")
    assert isinstance(track._queue, asyncio.Queue)


def test_aiortc_jitter_buffer_keeps_what_marker_release_reads():
    # MarkerJitterBuffer overrides _remove_frame and reads the ring directly
    assert "capacity" in inspect.signature(JitterBuffer.__init__).parameters
    assert "is_video" in inspect.signature(JitterBuffer.__init__).parameters
    assert "prefetch" in inspect.signature(JitterBuffer.__init__).parameters
    assert callable(JitterBuffer._remove_frame)
    assert callable(JitterBuffer.remove)
    buffer = MarkerJitterBuffer()
    assert isinstance(buffer._packets, list) and isinstance(buffer._origin, int | type(None))
    assert list(inspect.signature(JitterFrame).parameters)[:2] == ["data", "timestamp"]
    packet = RtpPacket(payload_type=96, marker=1, sequence_number=1, timestamp=90, payload=b"\x10x")
    packet._data = packet.payload  # what aiortc's receiver sets after depacketizing
    assert packet._data == b"\x10x"
    pli, frame = buffer.add(packet)
    assert frame is not None and frame.data == b"\x10x" and frame.timestamp == 90


def test_aiortc_vp8_encoder_keeps_the_codec_the_gateway_builds():
    # GatewayVp8Encoder builds self.codec its own way; aiortc's encode() must then keep it
    assert {"codec", "target_bitrate"} <= set(dir(Vp8Encoder())) | set(vars(Vp8Encoder()))
    encoder = GatewayVp8Encoder(speed=8, denoise=False)
    frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
    payloads, _ = encoder.encode(frame)
    built = encoder.codec
    assert payloads and built is not None and encoder.codec_options["noise-sensitivity"] == "0"
    encoder.encode(frame)
    assert encoder.codec is built


def test_aiortc_h264_encoder_keeps_the_hooks_the_gateway_overrides():
    # GatewayH264Encoder overrides _encode_frame (a generator of NAL units) and the
    # target_bitrate property; aiortc's encode() must call the one and its sender set the other
    from aiortc.codecs.h264 import H264Encoder, h264_depayload

    assert "_encode_frame" in inspect.getsource(H264Encoder.encode)
    assert callable(H264Encoder._split_bitstream) and callable(H264Encoder._packetize) and callable(H264Encoder.pack)
    assert isinstance(inspect.getattr_static(H264Encoder, "target_bitrate"), property)
    encoder = GatewayH264Encoder()
    frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
    frame.pts, frame.time_base = 0, Fraction(1, 90_000)  # what the media process's frames carry
    payloads, _ = encoder.encode(frame, force_keyframe=True)
    built = encoder.codec
    assert payloads and built is not None and built.name == "libx264"
    frame.pts = 3000
    encoder.encode(frame)
    assert encoder.codec is built
    # the guard reads what aiortc's depayloader makes of a packet: Annex B
    assert h264_depayload(b"\x65\x88\x84").startswith(b"\x00\x00\x00\x01\x65")


def test_aiortc_matches_h264_as_the_sdp_check_reads_it():
    # runtime/guard/sdp_check.serves_h264 uses aiortc's own profile parser, as its codec
    # matching (rtcpeerconnection.is_codec_compatible) does, and aiortc offers these two
    from aiortc.codecs import CODECS
    from aiortc.sdp import H264Profile, parse_h264_profile_level_id

    assert parse_h264_profile_level_id("42e01f")[0] is H264Profile.PROFILE_CONSTRAINED_BASELINE
    assert parse_h264_profile_level_id("42001f")[0] is H264Profile.PROFILE_BASELINE
    offered = {c.parameters.get("profile-level-id") for c in CODECS["video"] if c.mimeType.lower() == "video/h264"}
    assert offered == {"42001f", "42e01f"}
    assert {c.parameters.get("packetization-mode") for c in CODECS["video"] if c.mimeType.lower() == "video/h264"} == {"1"}


def test_gradio_keeps_what_gradio_ext_patches():
    import gradio.blocks
    from gradio import component_meta
    from gradio.components.base import server
    from gradio.route_utils import API_PREFIX
    from gradio.routes import App

    # gradio_ext/serving.py wraps these three and the stub writer of the component metaclass
    assert isinstance(inspect.getattr_static(App, "create_app"), staticmethod)
    assert callable(gradio.Blocks.launch) and callable(gradio.Blocks.block_thread)
    assert list(inspect.signature(gradio.blocks.postprocess_update_dict).parameters)[:3] == [
        "block",
        "update_dict",
        "postprocess",
    ]
    assert callable(component_meta.create_or_modify_pyi)
    assert isinstance(component_meta.ComponentMeta, type)
    # runtime/guard/auth.py looks up Gradio's own login endpoint under the API prefix
    assert isinstance(API_PREFIX, str) and callable(server)


def test_uvicorn_keeps_what_the_bounded_http_protocol_subclasses():
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from runtime.front.http_server import H11_PROTOCOL_NAMES, UVICORN_VERSION_CHECKED

    # runtime/front/http_server.py: a header timeout and a per-address connection count on
    # uvicorn's h11 protocol; it reads the h11 connection's client state (IDLE: headers not in)
    assert Version(uvicorn.__version__).major == Version(UVICORN_VERSION_CHECKED).major
    config = uvicorn.Config(app=lambda scope, receive, send: None, http=H11Protocol)
    config.load()
    # a loop of its own: the test must not depend on one an earlier test left current
    # (CI-found once the files' order changed)
    loop = asyncio.new_event_loop()
    try:
        protocol = H11Protocol(config, uvicorn.server.ServerState(), {}, _loop=loop)
    finally:
        loop.close()
    for name in H11_PROTOCOL_NAMES:
        assert hasattr(protocol, name), f"uvicorn's H11Protocol has no {name}"
    assert protocol.conn.their_state is h11.IDLE
    for name in ("timeout_keep_alive", "limit_concurrency", "h11_max_incomplete_event_size", "ws_max_size"):
        assert hasattr(config, name), f"uvicorn.Config has no {name}"


def test_gradio_builds_its_server_as_http_bounds_wraps_it():
    import gradio.http_server

    # gradio_ext/http_bounds.py sets uvicorn options on the config Server.__init__ receives
    assert issubclass(gradio.http_server.Server, uvicorn.Server)
    assert list(inspect.signature(gradio.http_server.Server.__init__).parameters)[:2] == ["self", "config"]
    source = inspect.getsource(gradio.http_server.start_server)
    assert "Server(config=config" in source, "gradio no longer hands start_server's config to Server"


def test_uvicorn_keeps_what_drain_and_serve_wrap():
    from runtime.ops import drain

    # runtime/ops/drain.py wraps handle_exit(sig, frame) (maybe already, by a gateway of this test
    # process: then its saved original is uvicorn's); runtime/cli.py counts startup()s
    handle_exit = drain._original_handle_exit or uvicorn.Server.handle_exit
    assert list(inspect.signature(handle_exit).parameters) == ["self", "sig", "frame"]
    assert inspect.iscoroutinefunction(uvicorn.Server.startup)
    config = uvicorn.Config(app=lambda scope, receive, send: None)
    assert uvicorn.Server(config).should_exit is False


def test_ray_keeps_the_one_host_switch_the_embedded_ray_sets():
    # runtime/front/ray_start.py keep_ray_on_loopback: Ray's "no cluster" constant, read at
    # each call where the node's address is chosen (a loopback address it swaps for the
    # host's outward one otherwise); tests/front/test_serve.py lists the listeners it yields
    from ray._private import ray_constants, services

    from runtime.front.ray_start import RAY_ONE_HOST_CONSTANT, RAY_ONE_HOST_ENV

    assert isinstance(getattr(ray_constants, RAY_ONE_HOST_CONSTANT), bool)
    assert ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR == RAY_ONE_HOST_ENV
    assert f"ray_constants.{RAY_ONE_HOST_CONSTANT}" in inspect.getsource(services.get_node_ip_address)
    assert "get_node_ip_address()" in inspect.getsource(services.resolve_ip_for_localhost)


async def test_aiortc_sctp_keeps_what_the_data_channel_guard_replaces():
    from aiortc.rtcsctptransport import (
        SCTP_DATA_FIRST_FRAG,
        SCTP_DATA_LAST_FRAG,
        SCTP_DATA_UNORDERED,
        DataChunk,
        InboundStream,
        RTCSctpCapabilities,
    )

    from runtime.media.sctp_guard import STREAM_ATTRS, TRANSPORT_ATTRS, SctpGuard, guard_sctp

    # runtime/media/sctp_guard.py replaces three handlers and getCapabilities per transport,
    # and reads the reassembly of aiortc's InboundStream
    pc = RTCPeerConnection()
    other = RTCPeerConnection()
    try:
        other.createDataChannel("text")
        await other.setLocalDescription(await other.createOffer())
        await pc.setRemoteDescription(other.localDescription)
        transport = pc.sctp
        assert transport is not None
        for name in TRANSPORT_ATTRS:
            assert hasattr(transport, name), name
        for name in ("_receive_data_chunk", "_receive_forward_tsn_chunk", "_receive_reconfig_param", "_receive", "_reset_deferred_streams"):
            assert inspect.iscoroutinefunction(getattr(transport, name)), name
        assert isinstance(transport._advertised_rwnd, int) and isinstance(transport._inbound_streams, dict)
        stream = InboundStream()
        for name in STREAM_ATTRS:
            assert hasattr(stream, name), name
        assert isinstance(stream.reassembly, list) and isinstance(stream.sequence_number, int)
        assert (SCTP_DATA_LAST_FRAG, SCTP_DATA_FIRST_FRAG, SCTP_DATA_UNORDERED) == (1, 2, 4)
        assert {"tsn", "stream_id", "stream_seq", "protocol", "user_data"} <= set(vars(DataChunk()))
        assert list(inspect.signature(RTCSctpCapabilities).parameters) == ["maxMessageSize"]
        guard = guard_sctp(pc, max_message_bytes=65536, max_buffered_bytes=262144)
        assert isinstance(guard, SctpGuard) and transport.getCapabilities().maxMessageSize == 65536
        answer = await pc.createAnswer()
        assert "a=max-message-size:65536" in answer.sdp
    finally:
        await pc.close()
        await other.close()


async def test_aiortc_receivers_keep_the_rtp_handler_the_budget_wraps():
    from runtime.media.budget import RECEIVER_HANDLER_ATTR

    # runtime/media/budget.py RtpBudget.install wraps it per receiver; the DTLS transport
    # calls it by attribute with arrival_time_ms as a keyword
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("video").receiver
        handler = getattr(receiver, RECEIVER_HANDLER_ATTR)
        assert inspect.iscoroutinefunction(handler)
        assert list(inspect.signature(handler).parameters) == ["packet", "arrival_time_ms"]
        from aiortc import rtcdtlstransport

        assert "receiver._handle_rtp_packet(packet, arrival_time_ms=arrival_time_ms)" in inspect.getsource(rtcdtlstransport)
    finally:
        await pc.close()
