"""``gateway.budgets``: what one session's media and data channel may cost, in real-time
units and bytes, before anything is decoded, reassembled or handed to a handler.

* Data channel: a message is measured while SCTP reassembles it and dropped once it passes
  ``max_data_channel_message_bytes`` (also advertised to the client as the SDP answer's
  ``a=max-message-size``); the fragments a connection may hold, over all its streams, are
  bounded by ``max_data_channel_buffered_bytes`` (runtime/media/sctp_guard.py).
* Media: audio samples at ``audio_realtime_factor`` times real time (WebSocket and phone
  audio, and WebRTC audio once decoded), RTP packets and bytes per second (every WebRTC
  packet, before its jitter buffer and decoder), each with a burst; the excess is dropped
  with one warning, and a session whose drops pass ``abuse_end_s`` worth of its budget
  (net of the budget's own rate, so a brief burst is forgiven) is ended with reason
  ``over_budget`` (runtime/media/budget.py).

Pure configuration: the planes read it; nothing here runs per packet.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from runtime import constants as C

# --- data channel -----------------------------------------------------------------------
MAX_DATA_CHANNEL_MESSAGE_BYTES = C.MAX_DATA_CHANNEL_MESSAGE_BYTES  # 64 KiB: the largest message reassembled
# fragments held over all of a connection's streams (~2.6 messages of 64 KiB with each
# chunk's ~512 bytes of overhead); aiortc's own receive window is 1 MiB, unbounded in effect
MAX_DATA_CHANNEL_BUFFERED_BYTES = 256 * 1024

# --- media in real-time units ----------------------------------------------------------------
# audio samples admitted per second of wall time, as a multiple of the stream's sample rate:
# 1.2 leaves room for a client's clock running fast and for jitter, not for a file upload
AUDIO_REALTIME_FACTOR = 1.2
AUDIO_BURST_S = 2.0  # seconds of audio a client may send at once above that (a network stall caught up)
# RTP packets per session per second over all its tracks: 640x480@30 VP8 is ~150-300, 1080p
# ~500, Opus 50; RTX and FEC add a fraction
RTP_PACKETS_PER_S = 1000
RTP_BYTES_PER_S = 1_250_000  # RTP payload bytes per session per second: 10 Mbit/s (browsers send <= 2.5)
RTP_BURST_S = 1.0  # seconds of the packet and byte rates a client may send at once (a key frame)
# a session whose dropped media, net of what the budget's rate forgives, passes this many
# seconds of its budget is ended (over_budget): sustained abuse, not a burst
ABUSE_END_S = 10.0


class BudgetsConfig(BaseModel):
    """``gateway.budgets``: per-session budgets of the media plane (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_data_channel_message_bytes: int = Field(
        MAX_DATA_CHANNEL_MESSAGE_BYTES,
        ge=1024,
        description="largest data-channel message, measured while it is reassembled and advertised as max-message-size",
    )
    max_data_channel_buffered_bytes: int = Field(
        MAX_DATA_CHANNEL_BUFFERED_BYTES,
        ge=1,
        description="bytes of partly reassembled data-channel messages one connection may hold (at least twice the message limit)",
    )
    audio_realtime_factor: float = Field(
        AUDIO_REALTIME_FACTOR, ge=1.0, le=100.0, description="audio samples admitted per second, as a multiple of real time"
    )
    audio_burst_s: float = Field(AUDIO_BURST_S, gt=0, description="seconds of audio a client may send at once above that")
    rtp_packets_per_s: int = Field(RTP_PACKETS_PER_S, ge=1, description="RTP packets per session per second, all tracks")
    rtp_bytes_per_s: int = Field(RTP_BYTES_PER_S, ge=1, description="RTP payload bytes per session per second, all tracks")
    rtp_burst_s: float = Field(RTP_BURST_S, gt=0, description="seconds of the RTP rates a client may send at once")
    abuse_end_s: float = Field(
        ABUSE_END_S,
        gt=0,
        description="a session whose dropped media passes this many seconds of its budget (net of its rate) is ended",
    )

    @model_validator(mode="after")
    def _buffer_holds_a_message(self) -> BudgetsConfig:
        if self.max_data_channel_buffered_bytes < 2 * self.max_data_channel_message_bytes:
            raise ValueError("max_data_channel_buffered_bytes must be at least twice max_data_channel_message_bytes")
        return self
