"""Small audio utilities for worker-side handlers: sample formats, channel mixing, resampling.

Pure numpy, so a worker that runs a VAD does not also load a codec library. The resampler is
a streaming windowed-sinc interpolator: exact for any pair of integer rates, stateful so a
stream can be fed 20 ms frames without clicks at frame boundaries, and cheap enough for the
per-frame path (a few hundred microseconds per 20 ms frame at 48 kHz → 16 kHz).
"""

from __future__ import annotations

from math import ceil, gcd

import numpy as np

INT16_SCALE = 32768.0  # full scale of int16 PCM, as a float divisor
RESAMPLER_ZERO_CROSSINGS = 16  # sinc lobes on each side of the kernel centre (quality vs cost)
RESAMPLER_KAISER_BETA = 8.6  # Kaiser window shape: ~-80 dB stop band
RESAMPLER_ROLLOFF = 0.94  # pass band edge as a fraction of the lower Nyquist frequency


def int16_to_float32(pcm: np.ndarray) -> np.ndarray:
    """int16 PCM → float32 in [-1, 1)."""
    return np.asarray(pcm, dtype=np.float32) / np.float32(INT16_SCALE)


def float32_to_int16(x: np.ndarray) -> np.ndarray:
    """float audio in [-1, 1] → int16 PCM, clipped."""
    scaled = np.rint(np.asarray(x, dtype=np.float32) * np.float32(INT16_SCALE))
    return np.clip(scaled, -INT16_SCALE, INT16_SCALE - 1).astype(np.int16)


def to_float_mono(array: np.ndarray, layout: str = "mono") -> np.ndarray:
    """Any PCM frame the worker can deliver → 1-D float32 mono in [-1, 1).

    Accepts int16 or float arrays shaped (N,), (1, N) mono, (C, N) planar, or (1, 2N)
    interleaved stereo when ``layout == "stereo"`` (what packed s16 decoders produce).
    """
    a = np.asarray(array)
    x = int16_to_float32(a) if a.dtype == np.int16 else a.astype(np.float32, copy=False)
    if x.ndim == 1:
        return x
    if x.ndim != 2:
        raise ValueError(f"an audio frame must be 1-D or 2-D, got shape {x.shape}")
    if x.shape[0] == 1:
        if layout == "stereo" and x.shape[1] % 2 == 0:
            return x.reshape(-1, 2).mean(axis=1)
        return x[0]
    return x.mean(axis=0)


def frame_samples(array: np.ndarray, layout: str = "mono") -> int:
    """Samples per channel in a frame shaped as :func:`to_float_mono` accepts."""
    a = np.asarray(array)
    if a.ndim == 1:
        return a.shape[0]
    if a.shape[0] == 1 and layout == "stereo" and a.shape[1] % 2 == 0:
        return a.shape[1] // 2
    return a.shape[1]


class Resampler:
    """Streaming band-limited resampler between two integer sample rates (mono float32).

    Output sample ``n`` is the input signal evaluated at input position ``n * in/out``,
    interpolated with a Kaiser-windowed sinc whose cut-off is below the lower of the two
    Nyquist frequencies. The kernel for each of the ``out/gcd`` fractional phases is built
    once. The stream is delayed by half the kernel (about 1 ms) until :meth:`flush`; the
    time mapping stays exact: output sample ``n`` always belongs to input time ``n / out``.
    """

    def __init__(self, in_rate: int, out_rate: int, zero_crossings: int = RESAMPLER_ZERO_CROSSINGS) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} → {out_rate}")
        self.in_rate = int(in_rate)
        self.out_rate = int(out_rate)
        g = gcd(self.in_rate, self.out_rate)
        self._up = self.out_rate // g  # L: phases per input sample
        self._down = self.in_rate // g  # M: input samples advanced per L outputs
        self._passthrough = self._up == self._down
        cutoff = min(1.0, self._up / self._down) * RESAMPLER_ROLLOFF  # relative to input Nyquist
        # taps on each side of the centre, in input samples
        self._half = int(ceil(zero_crossings / cutoff))
        offsets = np.arange(-self._half + 1, self._half + 1, dtype=np.float64)  # j in (-h, h]
        phases = np.arange(self._up, dtype=np.float64)[:, None] / self._up  # fractional position
        t = offsets[None, :] - phases  # distance of each tap from the output instant
        window = np.kaiser(2 * self._half + 1, RESAMPLER_KAISER_BETA)
        win = np.interp(t, np.arange(-self._half, self._half + 1), window, left=0.0, right=0.0)
        self._table = (cutoff * np.sinc(cutoff * t) * win).astype(np.float32)  # (L, 2h)
        self._offsets = np.arange(-self._half + 1, self._half + 1)
        self.reset()

    def reset(self) -> None:
        # history of half a kernel of zeros, so the very first outputs are defined
        self._buf = np.zeros(self._half, dtype=np.float32)
        self._buf_start = -self._half  # absolute input index of _buf[0]
        self._in_count = 0  # input samples received
        self._out_count = 0  # output samples produced

    def process(self, x: np.ndarray) -> np.ndarray:
        """Feed mono float32 samples; returns the output samples that are now complete."""
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if self._passthrough:
            self._in_count += x.size
            self._out_count += x.size
            return x.copy()
        self._buf = np.concatenate((self._buf, x)) if x.size else self._buf
        self._in_count += x.size
        return self._produce(self._in_count)

    def flush(self) -> np.ndarray:
        """Everything still owed for the input so far (pads with zeros past the end)."""
        if self._passthrough:
            return np.zeros(0, dtype=np.float32)
        total_out = (self._in_count * self._up) // self._down
        pad = np.zeros(self._half + 1, dtype=np.float32)
        self._buf = np.concatenate((self._buf, pad))
        out = self._produce(self._in_count + self._half + 1, limit=total_out)
        self._buf = self._buf[: self._buf.size - pad.size]
        return out

    def _produce(self, available: int, limit: int | None = None) -> np.ndarray:
        # output n needs inputs up to floor(n*M/L) + half; find how many are computable
        last_needed = available - 1 - self._half  # largest usable centre index
        if last_needed < 0:
            return np.zeros(0, dtype=np.float32)
        n_end = (last_needed * self._up) // self._down + 1
        if limit is not None:
            n_end = min(n_end, limit)
        n = np.arange(self._out_count, n_end, dtype=np.int64)
        if n.size == 0:
            return np.zeros(0, dtype=np.float32)
        pos = n * self._down
        base = pos // self._up
        phase = pos - base * self._up
        idx = (base - self._buf_start)[:, None] + self._offsets[None, :]
        out = np.einsum("ij,ij->i", self._buf[idx], self._table[phase]).astype(np.float32)
        self._out_count = int(n_end)
        # keep the history the next output needs
        next_base = (self._out_count * self._down) // self._up
        drop = next_base - self._half + 1 - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start += drop
        return out


def resample(x: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Resample a whole mono float32 signal; the result has ``len(x) * out / in`` samples."""
    r = Resampler(in_rate, out_rate)
    return np.concatenate((r.process(x), r.flush()))


__all__ = [
    "INT16_SCALE",
    "Resampler",
    "float32_to_int16",
    "frame_samples",
    "int16_to_float32",
    "resample",
    "to_float_mono",
]
