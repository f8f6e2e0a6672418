"""The audio helpers gradio_webrtc exports for handlers, with its names and meaning.

``audio_to_bytes`` / ``audio_to_file`` give MP3 (what speech-to-text APIs take), encoded by
PyAV's bundled LAME, so no ffmpeg binary is needed. ``aggregate_bytes_to_16bit`` and its
async twin turn a stream of raw PCM byte chunks (a TTS or realtime-model API) into int16
arrays shaped (1, N), carrying an odd byte over to the next chunk.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator

import numpy as np

from workers.audio import INT16_SCALE, float32_to_int16

MP3_BITRATE = 128_000  # bits/s of audio_to_bytes' MP3
PCM16_BYTES = 2  # bytes per int16 sample


def audio_to_float32(audio: tuple[int, np.ndarray] | np.ndarray) -> np.ndarray:
    """int16 PCM (or a ``(sample_rate, array)`` tuple) as float32 in [-1, 1)."""
    array = audio[1] if isinstance(audio, tuple) else audio
    a = np.asarray(array)
    if a.dtype == np.int16:
        return a.astype(np.float32) / np.float32(INT16_SCALE)
    return a.astype(np.float32, copy=False)


def audio_to_int16(audio: tuple[int, np.ndarray] | np.ndarray) -> np.ndarray:
    """float audio in [-1, 1] (or a ``(sample_rate, array)`` tuple) as int16 PCM."""
    array = audio[1] if isinstance(audio, tuple) else audio
    a = np.asarray(array)
    return a if a.dtype == np.int16 else float32_to_int16(a)


def audio_to_bytes(audio: tuple[int, np.ndarray]) -> bytes:
    """``(sample_rate, mono array)`` as the bytes of an MP3 file."""
    import av  # only for this: the worker's per-frame path never needs a codec here

    rate, array = audio
    pcm = audio_to_int16(np.asarray(array).reshape(1, -1))
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=int(rate), layout="mono")
        stream.bit_rate = MP3_BITRATE
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = int(rate)
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def audio_to_file(audio: tuple[int, np.ndarray]) -> str:
    """``(sample_rate, mono array)`` written to a new temporary .mp3 file; returns its path."""
    data = audio_to_bytes(audio)
    with tempfile.NamedTemporaryFile(suffix=".mp3", delete=False) as f:
        f.write(data)
    return f.name


class _Pcm16:
    """Whole int16 samples out of byte chunks; an odd trailing byte waits for the next."""

    def __init__(self) -> None:
        self.leftover = b""

    def take(self, chunk: bytes) -> np.ndarray | None:
        data = self.leftover + bytes(chunk)
        whole = len(data) // PCM16_BYTES * PCM16_BYTES
        self.leftover = data[whole:]
        if not whole:
            return None
        return np.frombuffer(data[:whole], dtype=np.int16).reshape(1, -1)


def aggregate_bytes_to_16bit(chunks: Iterable[bytes]) -> Iterator[np.ndarray]:
    """Raw little-endian PCM16 byte chunks → int16 arrays shaped (1, N)."""
    pcm = _Pcm16()
    for chunk in chunks:
        array = pcm.take(chunk)
        if array is not None:
            yield array


async def async_aggregate_bytes_to_16bit(chunks: AsyncIterable[bytes]) -> AsyncIterator[np.ndarray]:
    """:func:`aggregate_bytes_to_16bit` for an async stream of chunks (the seeds' Gemini handler)."""
    pcm = _Pcm16()
    async for chunk in chunks:
        array = pcm.take(chunk)
        if array is not None:
            yield array


__all__ = [
    "aggregate_bytes_to_16bit",
    "async_aggregate_bytes_to_16bit",
    "audio_to_bytes",
    "audio_to_file",
    "audio_to_float32",
    "audio_to_int16",
]
