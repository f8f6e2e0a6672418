"""Speech fixtures generated at test time with Debian's espeak-ng, shared by every test that
needs a talking user (worker unit tests, browser and end-to-end tests).

* :func:`speech_wav` -- path of a cached espeak-ng WAV for a text (one cache dir per test run).
* :func:`speech` -- that speech as float32 mono at any sample rate.
* :func:`compose` -- a test signal from parts: text is spoken, a number is that many seconds
  of silence, an array is inserted as is; a low noise floor covers the whole signal (a real
  microphone never delivers digital silence) and the result records where each part went.
* :func:`composed_wav` -- the same written to a WAV (e.g. Chromium's
  ``--use-file-for-fake-audio-capture``).
* :func:`frames` -- a signal cut into the worker's 20 ms ``(sample_rate, int16 (1, N))`` frames.

``scripts/setup.sh --test`` installs espeak-ng; without it these helpers raise.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import wave
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workers.audio import INT16_SCALE, float32_to_int16, int16_to_float32, resample

ESPEAK = shutil.which("espeak-ng") or "/usr/bin/espeak-ng"
ESPEAK_VOICE = "en-us"  # the US voice: PocketSphinx's acoustic model is US English
ESPEAK_TIMEOUT_S = 30.0
NOISE_FLOOR_DBFS = -60.0  # dBFS RMS of the noise under every composed signal
FRAME_MS = 20  # ms per frame, as WebRTC audio arrives
DEFAULT_RATE = 48_000  # Hz: what the worker delivers to a handler by default
DEFAULT_SEED = 1234

_cache_dir: Path | None = None
_cache_lock = threading.Lock()


def _cache() -> Path:
    global _cache_dir
    with _cache_lock:
        if _cache_dir is None:
            _cache_dir = Path(tempfile.mkdtemp(prefix="rtcpool-speech-"))
            atexit.register(shutil.rmtree, _cache_dir, True)
        return _cache_dir


def dbfs_to_rms(dbfs: float) -> float:
    """RMS amplitude (float scale, full scale = 1.0) of a level in dBFS."""
    return float(10 ** (dbfs / 20))


def speech_wav(text: str, voice: str = ESPEAK_VOICE, words_per_minute: int | None = None) -> Path:
    """A WAV of espeak-ng saying ``text`` (22.05 kHz mono int16), cached for this test run."""
    key = hashlib.sha1(f"{voice}|{words_per_minute}|{text}".encode()).hexdigest()[:16]
    path = _cache() / f"speech-{key}.wav"
    if not path.exists():
        if not os.path.exists(ESPEAK):
            raise RuntimeError("espeak-ng is not installed: run scripts/setup.sh --test (apt-get install espeak-ng)")
        tmp = path.with_suffix(".tmp.wav")
        cmd = [ESPEAK, "-v", voice, "-w", str(tmp)]
        if words_per_minute is not None:
            cmd += ["-s", str(words_per_minute)]
        subprocess.run([*cmd, text], check=True, timeout=ESPEAK_TIMEOUT_S, capture_output=True)
        os.replace(tmp, path)  # atomic: concurrent test processes never read a partial file
    return path


def read_wav(path: str | os.PathLike[str]) -> tuple[int, np.ndarray]:
    """(sample_rate, float32 mono) from a 16-bit PCM WAV (channels are averaged)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM is supported")
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    x = int16_to_float32(pcm.reshape(-1, channels)).mean(axis=1)
    return rate, x.astype(np.float32)


def write_wav(path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int, channels: int = 1) -> Path:
    """Write int16 (or float in [-1, 1]) mono samples; ``channels=2`` duplicates them."""
    pcm = samples if samples.dtype == np.int16 else float32_to_int16(samples)
    if channels > 1:
        pcm = np.repeat(pcm[:, None], channels, axis=1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(np.ascontiguousarray(pcm, dtype="<i2").tobytes())
    return Path(path)


def speech(text: str, sample_rate: int = DEFAULT_RATE, voice: str = ESPEAK_VOICE) -> np.ndarray:
    """espeak-ng's ``text`` as float32 mono at ``sample_rate``, leading/trailing silence kept."""
    rate, x = read_wav(speech_wav(text, voice))
    return resample(x, rate, sample_rate) if rate != sample_rate else x


def white_noise(seconds: float, dbfs: float, sample_rate: int = DEFAULT_RATE, seed: int = DEFAULT_SEED) -> np.ndarray:
    return _noise(int(round(seconds * sample_rate)), dbfs, seed)


def _noise(n: int, dbfs: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * dbfs_to_rms(dbfs)).astype(np.float32)


@dataclass
class Span:
    """Where a part of a composed signal went, in samples."""

    part: str | float
    start: int
    end: int

    @property
    def is_speech(self) -> bool:
        return isinstance(self.part, str)

    def seconds(self, sample_rate: int) -> tuple[float, float]:
        return self.start / sample_rate, self.end / sample_rate


@dataclass
class Composition:
    samples: np.ndarray  # int16 mono
    sample_rate: int
    spans: list[Span] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.samples.size / self.sample_rate

    def speech_spans(self) -> list[Span]:
        return [s for s in self.spans if s.is_speech]

    def active_span(self, span: Span, level: float = 0.01) -> tuple[int, int]:
        """The part of a speech span where the voice is actually audible (espeak pads its WAVs)."""
        x = np.abs(int16_to_float32(self.samples[span.start : span.end]))
        loud = np.flatnonzero(x > level)
        if loud.size == 0:
            return span.start, span.start
        return span.start + int(loud[0]), span.start + int(loud[-1]) + 1


def compose(
    parts: Sequence[str | float | int | np.ndarray],
    sample_rate: int = DEFAULT_RATE,
    noise_dbfs: float | None = NOISE_FLOOR_DBFS,
    seed: int = DEFAULT_SEED,
    voice: str = ESPEAK_VOICE,
) -> Composition:
    """Concatenate spoken text, seconds of silence and raw float arrays; add a noise floor."""
    pieces: list[np.ndarray] = []
    spans: list[Span] = []
    pos = 0
    for part in parts:
        if isinstance(part, str):
            x = speech(part, sample_rate, voice)
            label: str | float = part
        elif isinstance(part, (int, float)):
            x = np.zeros(int(round(float(part) * sample_rate)), dtype=np.float32)
            label = float(part)
        else:
            x = np.asarray(part, dtype=np.float32)
            label = "<array>"
        pieces.append(x)
        spans.append(Span(label, pos, pos + x.size))
        pos += x.size
    signal = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    if noise_dbfs is not None:
        signal = signal + _noise(signal.size, noise_dbfs, seed)
    return Composition(float32_to_int16(signal), sample_rate, spans)


def composed_wav(
    parts: Sequence[str | float | int],
    sample_rate: int = DEFAULT_RATE,
    channels: int = 1,
    noise_dbfs: float | None = NOISE_FLOOR_DBFS,
) -> Path:
    """A cached WAV of :func:`compose` (text and silences only, so the key is stable)."""
    key = hashlib.sha1(repr((list(parts), sample_rate, channels, noise_dbfs, ESPEAK_VOICE)).encode()).hexdigest()[:16]
    path = _cache() / f"composed-{key}.wav"
    if not path.exists():
        c = compose(parts, sample_rate, noise_dbfs)
        tmp = path.with_suffix(".tmp.wav")
        write_wav(tmp, c.samples, sample_rate, channels)
        os.replace(tmp, path)
    return path


def frames(samples: np.ndarray, sample_rate: int, frame_ms: int = FRAME_MS) -> Iterator[tuple[int, np.ndarray]]:
    """``(sample_rate, int16 (1, N))`` frames of ``frame_ms``; the last partial frame is zero-padded."""
    pcm = samples if samples.dtype == np.int16 else float32_to_int16(samples)
    n = sample_rate * frame_ms // 1000
    for i in range(0, pcm.size, n):
        chunk = pcm[i : i + n]
        if chunk.size < n:
            chunk = np.concatenate((chunk, np.zeros(n - chunk.size, dtype=np.int16)))
        yield sample_rate, chunk.reshape(1, n)


def stereo_to_mono(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """int16 L/R → int16 mono, as the worker's down-mix delivers it to a mono handler."""
    mixed = (left.astype(np.int32) + right.astype(np.int32)) // 2
    return mixed.astype(np.int16)


def locate(haystack: np.ndarray, needle: np.ndarray) -> tuple[int, float]:
    """Offset of ``needle`` in ``haystack`` by FFT cross-correlation, and the normalised
    correlation there (1.0: identical up to scale)."""
    h = haystack.astype(np.float64)
    nd = needle.astype(np.float64)
    size = 1 << int(np.ceil(np.log2(h.size + nd.size)))
    corr = np.fft.irfft(np.fft.rfft(h, size) * np.conj(np.fft.rfft(nd, size)), size)[: h.size - nd.size + 1]
    offset = int(np.argmax(corr))
    window = h[offset : offset + nd.size]
    denom = float(np.linalg.norm(window) * np.linalg.norm(nd)) or 1.0
    return offset, float(np.dot(window, nd) / denom)


# --- driving an audio handler the way the worker does -------------------------------------------


class RecordingHooks:
    """Stands in for the worker's session hooks: records messages, argument requests and
    ``clear_audio`` calls (the flush of reply audio queued for the client)."""

    def __init__(self, initial_args: list[object] | None = None) -> None:
        self.initial: list[object] = list(initial_args or [])
        self.sent: list[tuple[str, object]] = []
        self.arg_requests = 0
        self.clears = 0
        self.clear_at: list[int] = []  # frame index of each clear_audio, set by drive()
        self.frame = -1

    def send(self, type_: str, data: object) -> None:
        self.sent.append((type_, data))

    def request_args(self) -> None:
        self.arg_requests += 1

    def initial_args(self) -> list[object]:
        """What a client that never answers ``send_input`` gets after the wait."""
        return list(self.initial)

    def clear_audio(self) -> None:
        self.clears += 1
        self.clear_at.append(self.frame)

    def messages(self, type_: str) -> list[object]:
        return [d for t, d in self.sent if t == type_]


def drive(
    handler: object,
    samples: np.ndarray,
    sample_rate: int,
    emits_per_frame: int = 1,
    frame_ms: int = FRAME_MS,
) -> list[tuple[int, object]]:
    """Feed ``samples`` as 20 ms frames to ``handler.receive`` and, after each frame, call
    ``handler.emit()`` up to ``emits_per_frame`` times (stopping at None), as a worker pacing
    its output to real time would. Returns ``(frame index, item)`` for every emitted item."""
    out: list[tuple[int, object]] = []
    hooks = getattr(handler, "_hooks", None)
    for i, frame in enumerate(frames(samples, sample_rate, frame_ms)):
        if isinstance(hooks, RecordingHooks):
            hooks.frame = i
        handler.receive(frame)  # type: ignore[attr-defined]
        for _ in range(emits_per_frame):
            item = handler.emit()  # type: ignore[attr-defined]
            if item is None:
                break
            out.append((i, item))
    return out


__all__ = [
    "Composition",
    "RecordingHooks",
    "drive",
    "INT16_SCALE",
    "Span",
    "compose",
    "composed_wav",
    "dbfs_to_rms",
    "frames",
    "locate",
    "read_wav",
    "speech",
    "speech_wav",
    "stereo_to_mono",
    "white_noise",
    "write_wav",
]
