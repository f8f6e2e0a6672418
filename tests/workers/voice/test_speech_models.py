"""The built-in speech models (workers/voice/speech_models.py): fastrtc's names and call shapes,
PocketSphinx and espeak-ng from their wheels, nothing downloaded.

Every check is on content: what the recogniser hears in espeak-ng's speech (the system's
``espeak-ng`` CLI, tests/speech.py, independent of the bundled library), and what it hears
in the bundled TTS's own speech.
"""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys

import numpy as np
import pytest

from tests.speech import speech
from workers.audio import resample
from workers.voice.speech_models import (
    STT_SAMPLE_RATE,
    EspeakTTSModel,
    EspeakTTSOptions,
    PocketSphinxSTT,
    get_stt_model,
    get_tts_model,
    split_sentences,
    stt_for_chunks,
)

# Sentences PocketSphinx's wideband model gets word for word from espeak-ng's en-us voice
# (measured: the same text, both synthesisers, 16 kHz; most everyday sentences lose a word or two)
CLEAR = ("open the door", "i would like a cup of coffee", "good morning how are you")
SPEECH_RMS_MIN = 0.03  # float32 full scale: espeak-ng's speech is ~0.1-0.2, silence 0
PHONE_RATE = 8_000  # Hz, a phone call's band


def words(text: str) -> list[str]:
    return text.lower().split()


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x.astype(np.float64)))))


@pytest.fixture(scope="module")
def stt() -> PocketSphinxSTT:
    return get_stt_model().load()


@pytest.fixture(scope="module")
def tts() -> EspeakTTSModel:
    return get_tts_model().load()


# --- speech to text ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", CLEAR)
def test_stt_hears_espeak_speech_word_for_word(stt: PocketSphinxSTT, text: str) -> None:
    assert words(stt.stt((STT_SAMPLE_RATE, speech(text, STT_SAMPLE_RATE)))) == words(text)


@pytest.mark.parametrize("rate", [8_000, 24_000, 48_000])
def test_stt_takes_audio_at_any_rate(stt: PocketSphinxSTT, rate: int) -> None:
    text = "open the door"
    x = np.clip(speech(text, rate) * 32767, -32768, 32767).astype(np.int16)[None, :]  # (1, N) int16, as ReplyOnPause hands it over
    assert words(stt.stt((rate, x))) == words(text), rate


@pytest.mark.parametrize("shape", ["(N,)", "(1, N)", "(N, 1)", "(2, N)", "(N, 2)"])
@pytest.mark.parametrize("dtype", ["int16", "float32", "float64"])
def test_stt_takes_fastrtcs_audio_shapes_and_dtypes_as_the_same_mono(shape: str, dtype: str) -> None:
    """What the decoder is fed: every shape and dtype a handler may pass, as one 1-D float32
    signal (the decoding itself is the word-for-word tests above)."""
    from workers.voice.speech_models import _mono_float

    x = speech("open the door", STT_SAMPLE_RATE)
    a = np.clip(x * 32767, -32768, 32767).astype(np.int16) if dtype == "int16" else x.astype(dtype)
    arr = {"(N,)": a, "(1, N)": a[None, :], "(N, 1)": a[:, None], "(2, N)": np.stack([a, a]), "(N, 2)": np.stack([a, a], axis=1)}[shape]
    mono = _mono_float(arr)
    assert mono.dtype == np.float32 and mono.shape == x.shape
    assert np.abs(mono - x).max() < 2e-4  # int16's quantisation at most


def test_stt_of_silence_and_of_nothing_is_empty(stt: PocketSphinxSTT) -> None:
    assert stt.stt((STT_SAMPLE_RATE, np.zeros(0, np.int16))) == ""
    assert stt.stt((STT_SAMPLE_RATE, np.zeros(STT_SAMPLE_RATE, np.float32))) == ""


def test_stt_refuses_what_is_not_audio(stt: PocketSphinxSTT) -> None:
    with pytest.raises(ValueError, match="sample rate"):
        stt.stt((0, np.zeros(100, np.int16)))
    with pytest.raises(TypeError, match="int16 or float"):
        stt.stt((STT_SAMPLE_RATE, np.zeros(100, np.int64)))
    with pytest.raises(ValueError, match="1-D or 2-D"):
        stt.stt((STT_SAMPLE_RATE, np.zeros((2, 2, 100), np.float32)))


def test_stt_for_chunks_reads_each_vad_chunk_and_joins_them(stt: PocketSphinxSTT) -> None:
    a, b = speech("open the door", STT_SAMPLE_RATE), speech("good morning how are you", STT_SAMPLE_RATE)
    gap = np.zeros(STT_SAMPLE_RATE, np.float32)
    audio = np.concatenate([a, gap, b])[None, :]  # (1, N), as ReplyOnPause hands it over
    chunks = [{"start": 0, "end": a.size}, {"start": a.size + gap.size, "end": audio.shape[1]}]
    assert stt_for_chunks(stt, (STT_SAMPLE_RATE, audio), chunks) == "open the door good morning how are you"
    assert stt_for_chunks(stt, (STT_SAMPLE_RATE, audio), []) == ""


# --- text to speech ------------------------------------------------------------------------------


def test_tts_speaks_and_stt_hears_what_it_said(tts: EspeakTTSModel, stt: PocketSphinxSTT) -> None:
    for text in CLEAR:
        rate, audio = tts.tts(text)
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert rms(audio) > SPEECH_RMS_MIN, text
        assert words(stt.stt((rate, audio))) == words(text)


def test_tts_at_a_phone_rate_is_still_understood(tts: EspeakTTSModel, stt: PocketSphinxSTT) -> None:
    # the acoustic model is wideband: at 8 kHz it loses words of longer sentences (measured:
    # "i would like a cup of coffee" -> "i would like it up the lobby"), short ones survive
    for text in ("open the door", "good morning how are you"):
        rate, audio = tts.tts(text)
        assert words(stt.stt((PHONE_RATE, resample(audio, rate, PHONE_RATE)))) == words(text)


def test_tts_of_no_text_is_no_audio(tts: EspeakTTSModel) -> None:
    rate, audio = tts.tts("   ")
    assert rate == tts.sample_rate and audio.size == 0


def test_stream_tts_sync_yields_one_chunk_per_sentence_each_understood(tts: EspeakTTSModel, stt: PocketSphinxSTT) -> None:
    text = "Open the door. Good morning, how are you?\nI would like a cup of coffee."
    assert split_sentences(text) == ["Open the door.", "Good morning, how are you?", "I would like a cup of coffee."]
    chunks = list(tts.stream_tts_sync(text))
    assert len(chunks) == 3
    for (rate, audio), expected in zip(chunks, ("open the door", "good morning how are you", "i would like a cup of coffee"), strict=True):
        assert rate == tts.sample_rate and rms(audio) > SPEECH_RMS_MIN
        assert words(stt.stt((rate, audio))) == words(expected)


@pytest.mark.slow  # over 2 s: out of the quick subset
def test_async_stream_tts_yields_the_same_sentences(tts: EspeakTTSModel, stt: PocketSphinxSTT) -> None:
    async def collect() -> list[tuple[int, np.ndarray]]:
        return [c async for c in tts.stream_tts("Open the door. Good morning, how are you?")]

    sync = list(tts.stream_tts_sync("Open the door. Good morning, how are you?"))
    got = asyncio.run(collect())
    assert len(got) == len(sync) == 2
    for (ra, a), (rb, b) in zip(got, sync, strict=True):
        # the same speech; not bit-exact: espeak-ng's sentence pause varies by a few ms
        assert ra == rb and abs(a.size - b.size) < 0.05 * b.size
        assert stt.stt((ra, a)) == stt.stt((rb, b))


def test_tts_options_change_the_voice(tts: EspeakTTSModel) -> None:
    _, normal = tts.tts("open the door")
    _, slow = tts.tts("open the door", EspeakTTSOptions(speed_wpm=100))
    _, high = tts.tts("open the door", EspeakTTSOptions(pitch=90))
    assert slow.size > normal.size * 1.4  # 175 -> 100 words per minute
    assert not np.array_equal(high, normal)
    with pytest.raises(ValueError, match="speed_wpm"):
        EspeakTTSOptions(speed_wpm=10)
    with pytest.raises(ValueError, match="pitch"):
        EspeakTTSOptions(pitch=101)


# --- the factories -----------------------------------------------------------------------------


def test_models_are_one_per_process_and_pickle_as_their_name(stt: PocketSphinxSTT, tts: EspeakTTSModel) -> None:
    assert get_stt_model() is stt and get_stt_model("PocketSphinx") is stt
    assert get_tts_model("espeak-ng") is tts
    assert len(pickle.dumps(stt)) < 200 and len(pickle.dumps(tts)) < 200  # a name, not a decoder
    assert pickle.loads(pickle.dumps(stt)) is stt and pickle.loads(pickle.dumps(tts)) is tts


def test_a_pickled_stt_model_arrives_loaded_in_another_process(stt: PocketSphinxSTT) -> None:
    """As a handler closing over it reaches a worker: the worker's own decoder, loaded on arrival."""
    script = (
        "import pickle, sys; m = pickle.loads(sys.stdin.buffer.read()); "
        "print(type(m).__name__, m.loaded)"
    )
    out = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(stt), capture_output=True, timeout=120, check=True)
    assert out.stdout.decode().split() == ["PocketSphinxSTT", "True"]


@pytest.mark.parametrize(
    ("factory", "name", "reason"),
    [
        (get_stt_model, "moonshine/base", "not bundled"),
        (get_tts_model, "kokoro", "not bundled"),
        (get_tts_model, "cartesia", "cloud service"),
        (get_stt_model, "espeak", "get_tts_model"),
        (get_tts_model, "pocketsphinx", "get_stt_model"),
        (get_stt_model, "whisper", "unknown STT model"),
        (get_tts_model, "", "unknown TTS model"),
    ],
)
def test_a_model_that_is_not_here_is_a_clear_error(factory, name: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        factory(name)
