"""gradio_webrtc's audio helpers: MP3 out, PCM16 byte streams in."""

from __future__ import annotations

import asyncio
import io
import os

import av
import numpy as np

from workers.utils import (
    aggregate_bytes_to_16bit,
    async_aggregate_bytes_to_16bit,
    audio_to_bytes,
    audio_to_file,
    audio_to_float32,
    audio_to_int16,
)

RATE = 16_000


def tone(seconds: float = 1.0, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.5 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)[None, :]


def decode_mp3(data: bytes) -> tuple[int, np.ndarray]:
    with av.open(io.BytesIO(data), format="mp3") as container:
        stream = container.streams.audio[0]
        rate = stream.rate
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(stream)]
    return rate, np.concatenate(frames).astype(np.float64)


def test_audio_to_bytes_is_an_mp3_of_the_same_sound():
    data = audio_to_bytes((RATE, tone()))
    rate, decoded = decode_mp3(data)
    assert rate == RATE
    assert abs(decoded.size / rate - 1.0) < 0.1  # the encoder pads a frame or two
    spectrum = np.abs(np.fft.rfft(decoded))
    assert abs(np.argmax(spectrum) * rate / (2 * (spectrum.size - 1)) - 440) < 5


def test_audio_to_file_writes_that_mp3():
    path = audio_to_file((RATE, tone(0.5)))
    try:
        assert path.endswith(".mp3")
        with open(path, "rb") as f:
            rate, decoded = decode_mp3(f.read())
        assert rate == RATE and decoded.size > RATE // 3
    finally:
        os.unlink(path)


def test_float_and_int16_conversions_round_trip():
    pcm = tone(0.1)
    f = audio_to_float32((RATE, pcm))
    assert f.dtype == np.float32 and float(np.abs(f).max()) <= 1.0
    np.testing.assert_array_equal(audio_to_int16(f), pcm)
    assert audio_to_int16(pcm) is pcm


def test_byte_chunks_become_whole_int16_samples_whatever_their_split():
    pcm = np.arange(-500, 500, dtype=np.int16)
    raw = pcm.tobytes()
    cuts = [0, 1, 4, 7, 8, 999, 1001, len(raw)]  # odd sizes split samples in two
    chunks = [raw[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    out = list(aggregate_bytes_to_16bit(chunks))
    assert all(a.dtype == np.int16 and a.shape[0] == 1 for a in out)
    np.testing.assert_array_equal(np.concatenate(out, axis=1)[0], pcm)

    async def produce():
        for c in chunks:
            yield c

    async def collect():
        return [a async for a in async_aggregate_bytes_to_16bit(produce())]

    np.testing.assert_array_equal(np.concatenate(asyncio.run(collect()), axis=1)[0], pcm)
