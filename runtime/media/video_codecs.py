"""Which video codec a session speaks, and the guard and encoder that go with it.

aiortc answers with every video codec it shares with the offer and then decodes whichever
one a packet's payload type names. The gateway narrows each video transceiver, between
``setRemoteDescription`` and ``createAnswer``, to one codec: the first of
``gateway.video_codecs`` the offer lists (H.264 where the peer has it, VP8 otherwise), and
that codec's RTX. Both directions then use it (aiortc's sender encodes the transceiver's
first codec) and a packet of any other payload type is dropped by aiortc's receiver, so the
frame guard (``jitter.py``) always reads the format it was built for and no frame reaches
a decoder unchecked.

H.264 is served as aiortc decodes and packetizes it: packetization mode 1 (single NAL
units, STAP-A, FU-A), constrained baseline or baseline. ``runtime/guard/sdp_check.py``
refuses an offer that lists none of the configured codecs in a form served here.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from runtime import constants as C
from runtime.guard.sdp_check import serves_h264

RTX_MIME = "video/rtx"
SENDER_ENCODER_ATTR = "_RTCRtpSender__encoder"  # aiortc's name-mangled private field (aiortc 1.16.0)


class VideoCodec(StrEnum):
    """A video codec ``gateway.video_codecs`` may name; the value is the config's spelling."""

    H264 = "h264"
    VP8 = "vp8"

    @property
    def mime(self) -> str:
        return C.H264_MIME if self is VideoCodec.H264 else C.VP8_MIME




def _codec_of(mime: str) -> VideoCodec | None:
    mime = mime.lower()
    if mime == C.VP8_MIME:
        return VideoCodec.VP8
    if mime == C.H264_MIME:
        return VideoCodec.H264
    return None


def answer_one_codec(pc: Any, preference: Sequence[str]) -> list[VideoCodec | None]:
    """Narrow every video transceiver of ``pc`` to the first codec of ``preference`` it shares
    with the offer (and its RTX). Returns the codec of each video transceiver, None for one
    that shares none (it is left with no codec: aiortc then answers it rejected)."""
    preference = [VideoCodec(name) for name in preference]  # the config's names
    chosen: list[VideoCodec | None] = []
    for transceiver in pc.getTransceivers():
        if transceiver.kind != "video":
            continue
        codecs = transceiver._codecs  # private: what createAnswer, the sender and the receiver use
        pick = None
        for wanted in preference:
            pick = next(
                (c for c in codecs if _codec_of(c.mimeType) is wanted and (wanted is not VideoCodec.H264 or serves_h264(c.parameters))),
                None,
            )
            if pick is not None:
                break
        if pick is None:
            transceiver._codecs = []
            chosen.append(None)
            continue
        transceiver._codecs = [pick, *(c for c in codecs if c.mimeType.lower() == RTX_MIME and c.parameters.get("apt") == pick.payloadType)]
        chosen.append(_codec_of(pick.mimeType))
    return chosen


def negotiated(transceiver: Any) -> VideoCodec | None:
    """The video codec a transceiver speaks after :func:`answer_one_codec` (or any codec
    negotiation: the first of its codecs), None if it has none."""
    codecs = getattr(transceiver, "_codecs", None) or []
    return _codec_of(codecs[0].mimeType) if codecs else None


def use_gateway_encoders(pc: Any, *, vp8_speed: int, vp8_denoise: bool, h264_encoder: str) -> list[VideoCodec]:
    """Give every video sender of ``pc`` the gateway's encoder for its negotiated codec
    (``vp8_encoder.py``, ``h264_encoder.py``). Call after the local description is set and
    before the connection starts sending. Returns the codecs of the senders that got one."""
    from runtime.media.h264_encoder import GatewayH264Encoder
    from runtime.media.vp8_encoder import GatewayVp8Encoder

    done = []
    for transceiver in pc.getTransceivers():
        if transceiver.kind != "video" or transceiver.sender is None or not transceiver.sender.track:
            continue
        codec = negotiated(transceiver)
        if codec is None:
            continue
        sender = transceiver.sender
        # a private field: checked so an aiortc upgrade fails loudly here
        if not hasattr(sender, SENDER_ENCODER_ATTR):
            raise RuntimeError("this aiortc has no sender encoder where rtcpool expects it")
        encoder = GatewayVp8Encoder(vp8_speed, vp8_denoise) if codec is VideoCodec.VP8 else GatewayH264Encoder(h264_encoder)
        setattr(sender, SENDER_ENCODER_ATTR, encoder)
        done.append(codec)
    return done
