"""The gateway's VP8 encoder: aiortc's with the denoiser off, on the senders that send VP8."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, VideoStreamTrack

from runtime.clients.webrtc import synthetic_image
from runtime.media.h264_encoder import GatewayH264Encoder
from runtime.media.video_codecs import SENDER_ENCODER_ATTR, VideoCodec, use_gateway_encoders
from runtime.media.vp8_encoder import GatewayVp8Encoder

W, H = 640, 480
FRAMES = 20
MIN_PSNR_DB = 30.0  # a synthetic picture at 500 kbps comes back far better than this


def frame(i: int) -> av.VideoFrame:
    img = np.roll(synthetic_image(W, H), i * 4, axis=1)
    f = av.VideoFrame.from_ndarray(img, format="rgb24")
    f.pts, f.time_base = i * 3000, Fraction(1, 90_000)
    return f


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255**2 / max(mse, 1e-9))


def decode_all(payloads: list[list[bytes]]) -> list[np.ndarray]:
    from aiortc.codecs.vpx import vp8_depayload

    decoder = av.CodecContext.create("libvpx", "r")
    out = []
    for frame_payloads in payloads:
        data = b"".join(vp8_depayload(p) for p in frame_payloads)
        out += [f.to_ndarray(format="rgb24") for f in decoder.decode(av.Packet(data))]
    return out


@pytest.mark.parametrize("denoise", [False, True])
def test_frames_encode_and_decode_with_the_chosen_denoiser(denoise: bool) -> None:
    enc = GatewayVp8Encoder(speed=6, denoise=denoise)
    encoded = [enc.encode(frame(i))[0] for i in range(FRAMES)]
    assert enc.codec is not None
    assert enc.codec_options["noise-sensitivity"] == ("4" if denoise else "0")
    assert enc.codec_options["cpu-used"] == "-6"
    decoded = decode_all(encoded)
    assert len(decoded) == FRAMES
    expected = frame(FRAMES - 1).to_ndarray(format="rgb24")
    assert psnr(decoded[-1], expected) > MIN_PSNR_DB


def test_a_bitrate_change_rebuilds_the_codec_with_the_same_options() -> None:
    enc = GatewayVp8Encoder(speed=8)
    enc.encode(frame(0))
    first = enc.codec
    enc.target_bitrate = 1_200_000  # the receiver's REMB asked for more
    enc.encode(frame(1))
    assert enc.codec is not first
    assert enc.codec.bit_rate == 1_200_000
    assert (enc.codec_options["noise-sensitivity"], enc.codec_options["cpu-used"]) == ("0", "-8")


@pytest.mark.asyncio(loop_scope="session")
async def test_only_senders_that_send_vp8_get_it() -> None:
    async def negotiate(offer_codec: str) -> RTCPeerConnection:
        client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        client.addTransceiver("video", direction="sendrecv")
        t = client.getTransceivers()[0]
        from aiortc.rtcrtpsender import RTCRtpSender

        t.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() in (offer_codec, "video/rtx")])
        await client.setLocalDescription(await client.createOffer())
        await server.setRemoteDescription(client.localDescription)
        server.addTrack(VideoStreamTrack())
        await server.setLocalDescription(await server.createAnswer())
        await client.close()
        return server

    settings = {"vp8_speed": 6, "vp8_denoise": False, "h264_encoder": "libx264"}
    vp8 = await negotiate("video/vp8")
    assert use_gateway_encoders(vp8, **settings) == [VideoCodec.VP8]
    assert isinstance(getattr(vp8.getTransceivers()[0].sender, SENDER_ENCODER_ATTR), GatewayVp8Encoder)
    h264 = await negotiate("video/h264")
    assert use_gateway_encoders(h264, **settings) == [VideoCodec.H264]
    assert isinstance(getattr(h264.getTransceivers()[0].sender, SENDER_ENCODER_ATTR), GatewayH264Encoder)
    await vp8.close()
    await h264.close()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("vp8_speed", 17), ("vp8_speed", -1), ("vp8_speed", "fast"), ("vp8_denoise", "yes"),
        ("video_codecs", ["av1"]), ("video_codecs", []), ("video_codecs", ["vp8", "vp8"]), ("video_codecs", "h264"),
        ("h264_encoder", "h264_vaapi"), ("h264_encoder", 264),
    ],
)  # fmt: skip
def test_bad_encoder_settings_name_their_key(key: str, value: object) -> None:
    from runtime.config_loader import ConfigError, load_config

    with pytest.raises(ConfigError, match=f"gateway.{key}"):
        load_config(environ={}, overrides={"gateway": {key: value}})
    assert load_config(environ={}).gateway.vp8_denoise is False
