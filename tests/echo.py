"""Did the audio that came back carry what was sent? A chirp, found piece by piece.

One correlation of the whole chirp is fragile in the way that matters least: the gateway
paces audio out in real time, so when the worker's audio comes late (a busy 2-core box,
a pool worker starting beside the session) it plays silence for the 20 ms frames it
lacks, and the rest of the echo arrives that much later. A stall of 100 ms at 40% of the
chirp scores ~0.6 against the 0.99 of a clean echo, though every sample is there (CI once
saw 0.58). So each piece of the chirp is looked for on its own: all must be there, in
order, each (but one, which a stall may split) nearly as sent, and the gaps between them
must add up to little.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.clients.webrtc import AUDIO_RATE

CHIRP_S = 1.5
CHIRP_PIECES = 6  # 0.25 s each: long enough to find alone, short enough that one stall spoils one
PIECE_MIN_CORRELATION = 0.8  # a piece as sent, through Opus twice (0.98-0.99 measured here)
SPLIT_PIECE_MIN_CORRELATION = 0.4  # the one piece a stall may fall inside: half of it is still there
MAX_GAPS_S = 0.5  # silence the gateway may insert into the echo in all, for late audio


def chirp(seconds: float = CHIRP_S, rate: int = AUDIO_RATE, f0: float = 300.0, f1: float = 3000.0) -> np.ndarray:
    """A 300 Hz -> 3 kHz sweep, with 50 ms fades: no two stretches of it look alike."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) / (2 * seconds) * t**2)
    env = np.minimum(1.0, np.minimum(t, seconds - t) / 0.05)
    return (0.5 * 32767 * env * np.sin(phase)).astype(np.int16)


def best_correlation(received: np.ndarray, sent: np.ndarray) -> tuple[float, int]:
    """Peak normalised cross-correlation of ``sent`` inside ``received``, and its lag
    (samples). Windows of ``received`` with almost no energy are not candidates: dividing
    by ~0 in the silence around an echo would make noise look like a match."""
    r = received.astype(np.float64)
    s = sent.astype(np.float64)
    if len(r) < len(s):
        return 0.0, 0
    n = len(r) + len(s)
    raw = np.fft.irfft(np.fft.rfft(r, n) * np.conj(np.fft.rfft(s, n)), n)[: len(r) - len(s) + 1]
    power = np.concatenate([[0.0], np.cumsum(r**2)])
    energy = np.sqrt(np.maximum(power[len(s) :] - power[: -len(s)], 0.0))  # each window's norm
    floor = 0.01 * np.linalg.norm(s)  # -40 dB of the piece: silence
    corr = np.where(energy > floor, raw / (energy * np.linalg.norm(s) + 1e-9), 0.0)
    lag = int(np.argmax(corr))
    return float(corr[lag]), lag


@dataclass
class Echo:
    correlations: list[float]  # each piece's, in the chirp's order
    lags: list[int]  # where each piece starts in what was received (samples)
    piece: int  # samples per piece
    rate: int = AUDIO_RATE  # Hz of what was received

    @property
    def start_s(self) -> float:
        """Where the echo starts in what was received."""
        return self.lags[0] / self.rate

    @property
    def gaps_s(self) -> float:
        """Silence inserted between the pieces, in all."""
        return (self.lags[-1] - self.lags[0] - (len(self.lags) - 1) * self.piece) / self.rate

    def problems(self) -> list[str]:
        """What is wrong with this echo; empty when it carries the chirp."""
        found = []
        weak = [i for i, c in enumerate(self.correlations) if c < PIECE_MIN_CORRELATION]
        if len(weak) > 1 or any(self.correlations[i] < SPLIT_PIECE_MIN_CORRELATION for i in weak):
            found.append(f"pieces not as sent: correlations {[round(c, 2) for c in self.correlations]}")
        # in order, none overlapping the one before (a stall only ever delays what follows)
        tolerance = self.rate // 100  # 10 ms: a piece split by a stall is found off its start
        if any(b < a + self.piece - tolerance for a, b in zip(self.lags, self.lags[1:], strict=False)):
            found.append(f"pieces out of order: lags {self.lags} (piece {self.piece} samples)")
        elif self.gaps_s > MAX_GAPS_S:
            found.append(f"{self.gaps_s:.2f} s of gaps inside the echo")
        return found


def find_echo(received: np.ndarray, sent: np.ndarray, pieces: int = CHIRP_PIECES, rate: int = AUDIO_RATE) -> Echo:
    """Each of ``pieces`` equal parts of ``sent``, looked for in ``received`` (both at ``rate``)."""
    size = len(sent) // pieces
    found = [best_correlation(received, sent[i * size : (i + 1) * size]) for i in range(pieces)]
    return Echo([c for c, _ in found], [lag for _, lag in found], size, rate)
