"""How many audio frames aiortc holds back before decoding.

aiortc's RTCRtpReceiver gives audio a jitter buffer that waits for 4 later packets (80 ms
of Opus) before it releases a frame, and has no option for it. That is a sound default on
the open internet and a waste on loopback or a LAN, where packets arrive in order: for a
voice assistant it is 80 ms of every turn. The buffer is replaced, per peer connection,
right after the remote description is set and before any packet can have arrived.
"""

from __future__ import annotations

from typing import Any

from aiortc.jitterbuffer import JitterBuffer

AIORTC_AUDIO_JITTER_CAPACITY = 16  # packets, aiortc's own value (must be a power of two)
AIORTC_AUDIO_JITTER_PREFETCH = 4  # packets (20 ms each), aiortc's own value


def set_audio_prefetch(pc: Any, prefetch: int | None) -> None:
    """Give every audio receiver of ``pc`` a jitter buffer that waits for ``prefetch``
    packets (None: keep aiortc's)."""
    if prefetch is None or prefetch == AIORTC_AUDIO_JITTER_PREFETCH:
        return
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio":
            receiver = transceiver.receiver
            # name-mangled private field: checked so an aiortc upgrade fails loudly here
            attr = "_RTCRtpReceiver__jitter_buffer"
            if not hasattr(receiver, attr):
                raise RuntimeError("this aiortc has no audio jitter buffer where rtcpool expects it")
            setattr(receiver, attr, JitterBuffer(capacity=AIORTC_AUDIO_JITTER_CAPACITY, prefetch=prefetch))
