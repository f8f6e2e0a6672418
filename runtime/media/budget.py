"""A session's media in real-time units: what a client may send per second of wall time.

Every message and packet a client sends is within its socket's and channel's rate limits
and can still carry far more media than real time: 420 s of audio in 2.6 s on one
WebSocket, or a WebRTC sender pushing RTP as fast as it can encode. Each of those units is
decoded and handed to a handler whose cost (an STT or VAD model, a detector) is priced
per second of media. A :class:`RealTimeBudget` admits units (audio samples, RTP packets,
RTP bytes) at a rate with a burst, and counts what it drops; once the drops pass
``abuse_end_s`` seconds of the budget, net of the budget's own rate (so a burst that
catches up after a network stall is forgiven, and twice the rate is only trimmed), the
verdict is :data:`END` and the session is ended (``EndReason.OVER_BUDGET``).

:class:`RtpBudget` puts one packet and one byte budget in front of every RTP receiver of a
peer connection (``RTCRtpReceiver._handle_rtp_packet``, read from aiortc 1.16.0), before
the jitter buffer and the decoder. Per packet: two integer token-bucket updates on the
nanosecond clock, no allocation beyond Python's ints, no logging; the session is told once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from runtime.guard.budgets import BudgetsConfig

NS_PER_S = 1_000_000_000
ADMIT, DROP, END = 0, 1, 2  # verdicts of RealTimeBudget.admit
RECEIVER_HANDLER_ATTR = "_handle_rtp_packet"  # aiortc 1.16.0 RTCRtpReceiver; tests/test_patched_internals.py


class RealTimeBudget:
    """``units_per_s`` with a burst of ``burst_units``, in integer unit-nanoseconds. Units
    over it are dropped; drops past ``end_after_units`` (each second forgiving
    ``units_per_s`` of them) make the verdict :data:`END`."""

    __slots__ = ("units_per_s", "_cap", "_tokens", "_excess", "_end_at", "_stamp", "dropped")

    def __init__(self, units_per_s: int, burst_units: int, end_after_units: int, now_ns: int | None = None) -> None:
        if units_per_s < 1 or burst_units < 1 or end_after_units < 1:
            raise ValueError("a budget's rate, burst and end are at least one unit")
        self.units_per_s = units_per_s
        self._cap = burst_units * NS_PER_S
        self._tokens = self._cap  # it starts full: a client's first burst is allowed
        self._excess = 0
        self._end_at = end_after_units * NS_PER_S
        self._stamp = time.monotonic_ns() if now_ns is None else now_ns
        self.dropped = 0  # units dropped, in all

    def admit(self, units: int, now_ns: int) -> int:
        """ADMIT (the units were taken), DROP, or END (dropped, and the drops are sustained)."""
        elapsed = now_ns - self._stamp
        if elapsed > 0:
            self._stamp = now_ns
            gain = elapsed * self.units_per_s
            tokens = self._tokens + gain
            self._tokens = tokens if tokens < self._cap else self._cap
            if self._excess:
                excess = self._excess - gain
                self._excess = excess if excess > 0 else 0
        need = units * NS_PER_S
        if self._tokens >= need:
            self._tokens -= need
            return ADMIT
        self.dropped += units
        self._excess += need
        return END if self._excess > self._end_at else DROP


def audio_budget(cfg: BudgetsConfig, sample_rate: int) -> RealTimeBudget:
    """Samples at ``sample_rate``, ``audio_realtime_factor`` times real time."""
    rate = max(1, round(sample_rate * cfg.audio_realtime_factor))
    return RealTimeBudget(rate, max(1, round(sample_rate * cfg.audio_burst_s)), max(1, round(rate * cfg.abuse_end_s)))


class RtpBudget:
    """The RTP packets and bytes of one peer connection, over all its receivers.
    ``on_over(what, verdict)`` is called for every packet dropped (the caller warns once)."""

    def __init__(self, cfg: BudgetsConfig, on_over: Callable[[str, int], None]) -> None:
        packets, octets = cfg.rtp_packets_per_s, cfg.rtp_bytes_per_s
        self.packets = RealTimeBudget(packets, max(1, round(packets * cfg.rtp_burst_s)), max(1, round(packets * cfg.abuse_end_s)))
        self.bytes = RealTimeBudget(octets, max(1, round(octets * cfg.rtp_burst_s)), max(1, round(octets * cfg.abuse_end_s)))
        self._on_over = on_over
        self.dropped = 0  # packets

    def admit(self, size: int) -> bool:
        now = time.monotonic_ns()
        # a packet dropped for its bytes still took a packet token: it cost its parse
        verdict = self.packets.admit(1, now)
        what = "RTP packets"
        if verdict == ADMIT:
            verdict = self.bytes.admit(size, now)
            what = "RTP bytes"
            if verdict == ADMIT:
                return True
        self.dropped += 1
        self._on_over(what, verdict)
        return False

    def install(self, pc: Any) -> None:
        """In front of every receiver of ``pc`` (after setRemoteDescription made them)."""
        for transceiver in pc.getTransceivers():
            receiver = transceiver.receiver
            original = getattr(receiver, RECEIVER_HANDLER_ATTR, None)
            if original is None:
                raise RuntimeError("this aiortc's RTCRtpReceiver has no _handle_rtp_packet for rtcpool's RTP budget")
            setattr(receiver, RECEIVER_HANDLER_ATTR, self._guarded(original))

    def _guarded(self, original: Callable[..., Any]) -> Callable[..., Any]:
        admit = self.admit

        async def handle_rtp_packet(packet: Any, arrival_time_ms: int) -> None:
            if admit(len(packet.payload)):
                await original(packet, arrival_time_ms=arrival_time_ms)

        return handle_rtp_packet
