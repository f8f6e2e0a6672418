"""Stop-word spotting (PocketSphinx) and ReplyOnStopWords on espeak-ng speech, no WebRTC."""

from __future__ import annotations

from typing import Any

import cloudpickle
import numpy as np
import pytest

from tests.speech import RecordingHooks, compose, drive, frames, locate, white_noise
from workers.audio import float32_to_int16, int16_to_float32
from workers.handlers import StreamHandler
from workers.voice.reply_on_pause import LOG_PAUSE_DETECTED, VAD_HOP_S
from workers.voice.reply_on_stopwords import ReplyOnStopWords
from workers.voice.stopwords import (
    KWS_SEARCH_WINDOW_S,
    KWS_THRESHOLD_PER_PHONE,
    StopWordDetector,
    StopWordOptions,
    check_stop_words,
    phrase_phones,
    phrase_threshold,
)
from workers.voice.vad import AlgoOptions

COMMAND = "computer, what time is it"
NO_STOP_WORD = "hello there, how are you"
TAIL_S = 2.5
KWS_RATE = 16_000
OUT = (24_000, np.zeros((1, 480), dtype=np.int16))
STOP_WORD_MIN_S = 0.3  # espeak's "computer" lasts ~0.5 s: the reply never hears its first 0.3 s


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, np.ndarray], tuple[Any, ...]]] = []

    def __call__(self, audio: tuple[int, np.ndarray], *args: Any):
        self.calls.append((audio, args))
        yield OUT


def _handler(rate: int = KWS_RATE, **kw: Any) -> tuple[ReplyOnStopWords, Recorder, RecordingHooks]:
    fn = Recorder()
    h = ReplyOnStopWords(fn, stop_words=kw.pop("stop_words", ["computer"]), input_sample_rate=rate, **kw)
    hooks = RecordingHooks()
    h._hooks = hooks
    h.set_args(kw.pop("args", []))
    return h, fn, hooks


def _hits(samples: np.ndarray, words: list[str] | None = None) -> list[tuple[str, int]]:
    det = StopWordDetector(words or ["computer"])
    hits, pos = [], 0
    for _, frame in frames(samples, KWS_RATE):
        x = int16_to_float32(frame[0])
        hit = det.process(x, pos)
        pos += x.size
        if hit is not None:
            hits.append((hit.phrase, hit.end_sample))
    det.close()
    return hits


# --- the detector --------------------------------------------------------------------------------


def test_stop_words_are_normalised_and_checked_against_the_dictionary() -> None:
    assert check_stop_words(["Computer!", "ok  computer", "computer"]) == ["computer", "ok computer"]
    with pytest.raises(ValueError, match="xyzzyq"):
        check_stop_words(["hey xyzzyq"])
    with pytest.raises(ValueError):
        check_stop_words([])
    with pytest.raises(ValueError, match="xyzzyq"):
        ReplyOnStopWords(lambda a: None, stop_words=["xyzzyq"])


def test_threshold_scales_with_phrase_length() -> None:
    assert phrase_phones("computer") == 8  # K AH M P Y UW T ER
    assert phrase_threshold("computer", StopWordOptions()) == pytest.approx(KWS_THRESHOLD_PER_PHONE**8)
    assert phrase_threshold("computer", StopWordOptions()) == pytest.approx(1e-40)
    assert phrase_threshold("ok computer", StopWordOptions()) < phrase_threshold("computer", StopWordOptions())
    assert phrase_threshold("computer", StopWordOptions(threshold=1e-20)) == 1e-20


def test_detector_hears_computer_and_where_it_ends() -> None:
    c = compose([0.5, COMMAND, TAIL_S], sample_rate=KWS_RATE)
    hits = _hits(c.samples)
    assert [w for w, _ in hits] == ["computer"]
    start, end = c.active_span(c.speech_spans()[0])
    # the phrase ends after its first 0.3 s and well before the sentence does
    assert start + STOP_WORD_MIN_S * KWS_RATE < hits[0][1] < end - 0.5 * KWS_RATE


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param([0.5, NO_STOP_WORD, TAIL_S], id="hello-there"),
        pytest.param([0.5, "what time is it", 1.0, "the weather is nice today", TAIL_S], id="other-words"),
        pytest.param([8.0], id="silence"),
    ],
)
def test_detector_ignores_other_speech_and_silence(parts: list[Any]) -> None:
    assert _hits(compose(parts, sample_rate=KWS_RATE).samples) == []


@pytest.mark.parametrize("dbfs", [-50.0, -30.0])
def test_detector_ignores_noise(dbfs: float) -> None:
    assert _hits(float32_to_int16(white_noise(8.0, dbfs, KWS_RATE))) == []


def test_detector_survives_digital_silence_before_the_stop_word() -> None:
    # no noise floor at all: exact zeros, as a muted or synthetic source sends
    c = compose([1.0, COMMAND, TAIL_S], sample_rate=KWS_RATE, noise_dbfs=None)
    assert [w for w, _ in _hits(c.samples)] == ["computer"]


@pytest.mark.parametrize("lead_s", [KWS_SEARCH_WINDOW_S - 0.4, KWS_SEARCH_WINDOW_S - 0.1, pytest.param(30.0, marks=pytest.mark.slow)])  # 30 s: over 2 s
def test_detector_hears_the_stop_word_after_long_silence(lead_s: float) -> None:
    # test-found: the running cepstral mean settled on the noise floor after ~30 s, and
    # a phrase spanning the periodic restart of the search must not be lost either
    c = compose([lead_s, COMMAND, TAIL_S], sample_rate=KWS_RATE)
    hits = _hits(c.samples)
    start, end = c.active_span(c.speech_spans()[0])
    assert [w for w, _ in hits] == ["computer"]
    assert start < hits[0][1] < end


def test_detector_hears_the_phrase_among_several() -> None:
    c = compose([0.5, COMMAND, TAIL_S], sample_rate=KWS_RATE)
    assert [w for w, _ in _hits(c.samples, ["hello iris", "computer"])] == ["computer"]


# --- the handler ---------------------------------------------------------------------------------


def test_is_a_stream_handler_with_gradio_webrtc_signature() -> None:
    h = ReplyOnStopWords(lambda a: None, stop_words=["computer"])
    assert isinstance(h, StreamHandler)
    assert h.input_sample_rate == 48_000 and h.stop_words == ["computer"]  # upstream's default
    # gradio_webrtc's positional order after stop_words; the additions are keyword-only
    opts = AlgoOptions(audio_chunk_duration=0.5)
    p = ReplyOnStopWords(lambda a: None, ["computer"], opts, None, "mono", 24_000, 480, 16_000)
    assert (p.algo_options, p.input_sample_rate) == (opts, 16_000)
    with pytest.raises(TypeError):
        ReplyOnStopWords(lambda a: None, ["computer"], None, None, "mono", 24_000, 480, 16_000, False)


@pytest.mark.parametrize("rate", [16_000, 48_000])
def test_replies_to_what_follows_the_stop_word(rate: int) -> None:
    c = compose([0.5, COMMAND, TAIL_S], sample_rate=rate)
    h, fn, hooks = _handler(rate)
    out = drive(h, c.samples, rate)
    assert hooks.messages("stopword") == ["computer"]
    assert hooks.sent[0] == ("stopword", "computer")  # before the reply's log messages
    assert LOG_PAUSE_DETECTED in hooks.messages("log")
    assert len(fn.calls) == 1 and [item for _, item in out] == [OUT]
    sr, audio = fn.calls[0][0]
    assert sr == rate and audio.dtype == np.int16 and audio.shape[0] == 1
    start, end = c.active_span(c.speech_spans()[0])
    offset, corr = locate(c.samples, audio[0])
    assert corr > 0.999 and np.array_equal(c.samples[offset : offset + audio.shape[1]], audio[0])
    # after the stop word, up to the pause: "what time is it" and not "computer"
    assert offset > start + STOP_WORD_MIN_S * rate
    assert offset + audio.shape[1] >= end
    assert audio.shape[1] / rate < (end - start) / rate + 2.5


@pytest.mark.parametrize("lead", [0.5, 0.7, 0.9])
def test_the_pause_after_a_command_is_heard_within_one_window(lead: float) -> None:
    # the command is heard with the same sliding window as ReplyOnPause, from the sample
    # where the stop word ended, wherever that falls in the stream
    c = compose([lead, COMMAND, TAIL_S], sample_rate=KWS_RATE)
    h, fn, _ = _handler()
    out = drive(h, c.samples, KWS_RATE)
    assert len(fn.calls) == 1 and len(out) == 1
    latency = (out[0][0] + 1) * 0.02 - c.active_span(c.speech_spans()[0])[1] / KWS_RATE
    assert 0 < latency <= AlgoOptions().audio_chunk_duration + VAD_HOP_S + 0.05, latency


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param([0.5, NO_STOP_WORD, TAIL_S], id="hello-there"),
        pytest.param([8.0], id="silence"),
    ],
)
def test_no_stop_word_no_reply(parts: list[Any]) -> None:
    h, fn, hooks = _handler()
    assert drive(h, compose(parts, sample_rate=KWS_RATE).samples, KWS_RATE) == []
    assert fn.calls == [] and hooks.sent == []


def test_each_command_needs_its_own_stop_word() -> None:
    c = compose([0.5, COMMAND, 2.0, NO_STOP_WORD, 2.0, COMMAND, TAIL_S], sample_rate=KWS_RATE)
    h, fn, hooks = _handler()
    drive(h, c.samples, KWS_RATE)
    assert hooks.messages("stopword") == ["computer", "computer"]
    assert len(fn.calls) == 2
    third = c.active_span(c.speech_spans()[2])
    offset, _ = locate(c.samples, fn.calls[1][0][1][0])
    assert offset > third[0] + STOP_WORD_MIN_S * KWS_RATE  # the second reply is the third sentence's tail


def test_a_stop_word_interrupts_a_running_reply() -> None:
    c = compose([0.5, COMMAND, 2.0, COMMAND, TAIL_S], sample_rate=KWS_RATE)
    closed: list[int] = []
    calls: list[int] = []

    def long_reply(audio: tuple[int, np.ndarray]):
        calls.append(1)
        try:
            for _ in range(1000):
                yield OUT
        except GeneratorExit:
            closed.append(len(calls))
            raise

    h = ReplyOnStopWords(long_reply, stop_words=["computer"], input_sample_rate=KWS_RATE)
    hooks = RecordingHooks()
    h._hooks = hooks
    h.set_args([])
    drive(h, c.samples, KWS_RATE)
    assert len(calls) == 2 and closed == [1]
    assert hooks.clears == 1 and hooks.messages("stopword") == ["computer", "computer"]


def test_additional_inputs_reach_fn() -> None:
    c = compose([0.5, COMMAND, TAIL_S], sample_rate=KWS_RATE)
    h, fn, _ = _handler()
    h.set_args([["chat history"], "code"])
    drive(h, c.samples, KWS_RATE)
    assert [args for _, args in fn.calls] == [(["chat history"], "code")]


def test_copy_and_pickle_give_working_fresh_handlers() -> None:
    c = compose([0.5, COMMAND, TAIL_S], sample_rate=KWS_RATE)
    h, fn, _ = _handler()
    drive(h, c.samples[: KWS_RATE], KWS_RATE)  # a detector exists mid-stream
    for fresh in (h.copy(), cloudpickle.loads(cloudpickle.dumps(h))):
        assert isinstance(fresh, ReplyOnStopWords) and fresh._detector is None
        assert fresh.stop_words == ["computer"]
        hooks = RecordingHooks()
        fresh._hooks = hooks
        fresh.set_args([])
        fresh.start_up()
        drive(fresh, c.samples, KWS_RATE)
        assert hooks.messages("stopword") == ["computer"]
        fresh.shutdown()
