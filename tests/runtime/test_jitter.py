"""The audio jitter buffer setting reaches aiortc's receivers."""

from __future__ import annotations

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from runtime.jitter import AIORTC_AUDIO_JITTER_PREFETCH, set_audio_prefetch

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _prefetch(pc: RTCPeerConnection, kind: str) -> int:
    (t,) = [t for t in pc.getTransceivers() if t.kind == kind]
    return t.receiver._RTCRtpReceiver__jitter_buffer._prefetch


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
