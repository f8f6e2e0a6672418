"""ReplyOnPause as the worker drives it: 20 ms frames of (48000, int16 (1, 960)), real VAD,
real espeak-ng speech, no WebRTC."""

from __future__ import annotations

import threading
import time
from typing import Any

import cloudpickle
import numpy as np
import pytest

from tests.speech import (
    Composition,
    RecordingHooks,
    compose,
    drive,
    frames,
    locate,
    stereo_to_mono,
    white_noise,
)
from workers.audio import float32_to_int16
from workers.handlers import AdditionalOutputs, StreamHandler
from workers.voice.reply_on_pause import (
    LOG_PAUSE_DETECTED,
    LOG_RESPONSE_STARTING,
    VAD_HOP_S,
    ReplyOnPause,
)
from workers.voice.vad import AlgoOptions, SileroVADModel, SileroVadOptions

RATE = 48_000
FIRST = "hello there, how are you"
SECOND = "what time is it"
GAP_S = 1.5
TAIL_S = 2.5  # enough silence after the last word for the pause to be seen
OUT_RATE = 24_000
OUT_FRAME = np.zeros((1, 480), dtype=np.int16)  # 20 ms at 24 kHz
LEAD_TOLERANCE_S = 0.1  # the utterance may start at most this much after the voice does
TRAIL_LIMIT_S = 2.2  # ... and end at most this much after it (pad 0.4 s + up to ~3 chunks)
MAX_WAIT_ITERATIONS = 10_000
FRAME_S = 0.02  # drive()'s frames
# the VAD's own lag past the audible end of the voice (Silero's probability decays over a
# window or two) plus one frame of decision granularity
PAUSE_LAG_MARGIN_S = 0.05
# where an utterance starts in the stream: a sweep over a whole audio_chunk_duration, so the
# voice ends at every phase relative to the stream start (the old whole-chunk cliff)
LEAD_OFFSETS_S = [0.5 + k * 0.075 for k in range(9)]
BREATH_S = 0.1  # inserted between sentences; espeak's own padding makes the silences ~0.4 s


def _stereo_mix(c: Composition) -> np.ndarray:
    """The composition as a browser's stereo capture down-mixed to mono by the worker:
    the right channel is the same voice 2 dB quieter over different noise."""
    right = float32_to_int16(c.samples / 32768 * 0.8 + white_noise(c.duration + 1, -60.0, RATE, seed=99)[: c.samples.size])
    return stereo_to_mono(c.samples, right)


@pytest.fixture(scope="module")
def two_utterances() -> tuple[Composition, np.ndarray]:
    c = compose([0.5, FIRST, GAP_S, SECOND, TAIL_S], sample_rate=RATE)
    return c, _stereo_mix(c)


class Recorder:
    """A reply function that records its calls and yields ``n_frames`` of 20 ms audio."""

    def __init__(self, n_frames: int = 3, extra: Any = None) -> None:
        self.calls: list[tuple[tuple[int, np.ndarray], tuple[Any, ...]]] = []
        self.n_frames = n_frames
        self.extra = extra
        self.closed: list[int] = []  # per call: how many frames it had yielded when closed
        self.finished = 0

    def __call__(self, audio: tuple[int, np.ndarray], *args: Any):
        self.calls.append((audio, args))
        k = 0
        try:
            for k in range(self.n_frames):  # noqa: B007 - k is read in the except clause
                yield (OUT_RATE, OUT_FRAME + len(self.calls), "mono")
            if self.extra is not None:
                yield self.extra
            self.finished += 1
        except GeneratorExit:
            self.closed.append(k)
            raise


def _handler(fn: Any, **kw: Any) -> tuple[ReplyOnPause, RecordingHooks]:
    h = ReplyOnPause(fn, **kw)
    hooks = RecordingHooks()
    h._hooks = hooks  # what the worker plugs in
    h.set_args([])  # the worker sets the stream's other inputs (none here)
    return h, hooks


def _assert_covers(source: np.ndarray, utterance: tuple[int, np.ndarray], span: tuple[int, int]) -> None:
    sr, audio = utterance
    assert sr == RATE
    assert audio.dtype == np.int16 and audio.ndim == 2 and audio.shape[0] == 1
    offset, corr = locate(source, audio[0])
    assert corr > 0.999
    # the utterance is the source's own samples, frame-exact
    assert np.array_equal(source[offset : offset + audio.shape[1]], audio[0])
    start, end = span
    assert offset <= start + LEAD_TOLERANCE_S * RATE
    assert offset + audio.shape[1] >= end
    voiced_s = (end - start) / RATE
    assert voiced_s - LEAD_TOLERANCE_S <= audio.shape[1] / RATE <= voiced_s + TRAIL_LIMIT_S + 0.4


def test_is_a_stream_handler_with_fastrtc_signature() -> None:
    h = ReplyOnPause(lambda audio: None)
    assert isinstance(h, StreamHandler)
    assert (h.input_sample_rate, h.output_sample_rate, h.output_frame_size, h.expected_layout) == (48_000, 24_000, 480, "mono")
    assert h.can_interrupt is True
    assert isinstance(h.model, SileroVADModel)
    assert h.algo_options == AlgoOptions() and h.model_options == SileroVadOptions()


def test_one_reply_per_utterance_covering_the_speech(two_utterances) -> None:
    c, mono = two_utterances
    fn = Recorder()
    h, hooks = _handler(fn)
    out = drive(h, mono, RATE)
    assert len(fn.calls) == 2
    spans = [c.active_span(s) for s in c.speech_spans()]
    for (utterance, args), span in zip(fn.calls, spans, strict=True):
        assert args == ()
        _assert_covers(mono, utterance, span)
    # each reply is emitted in order, after its utterance ended and before the next began
    items = [item for _, item in out]
    assert len(items) == 2 * fn.n_frames
    assert [int(a[1][0, 0]) for a in items] == [1] * fn.n_frames + [2] * fn.n_frames
    first_reply_frame = out[0][0] * 0.02
    assert spans[0][1] / RATE < first_reply_frame < spans[1][0] / RATE
    assert out[fn.n_frames][0] * 0.02 > spans[1][1] / RATE
    assert hooks.messages("log") == [LOG_PAUSE_DETECTED, LOG_RESPONSE_STARTING] * 2
    # the handler cannot know whether the first reply's audio still plays: it asks for a flush
    assert hooks.clears == 1
    assert fn.finished == 2


@pytest.mark.parametrize(
    "signal",
    [
        pytest.param(lambda: compose([10.0], sample_rate=RATE).samples, id="silence-under-noise-floor"),
        pytest.param(lambda: np.zeros(10 * RATE, dtype=np.int16), id="digital-silence"),
        pytest.param(lambda: float32_to_int16(white_noise(10.0, -40.0, RATE)), id="white-noise-40dBFS"),
    ],
)
def test_never_replies_without_speech(signal) -> None:
    fn = Recorder()
    h, hooks = _handler(fn)
    assert drive(h, signal(), RATE) == []
    assert fn.calls == [] and hooks.sent == []


def test_yields_pass_through_emit_including_additional_outputs(two_utterances) -> None:
    _, mono = two_utterances
    fn = Recorder(n_frames=2, extra=AdditionalOutputs("transcript"))
    h, _ = _handler(fn)
    items = [item for _, item in drive(h, mono, RATE, emits_per_frame=10)]
    assert len(items) == 6
    assert isinstance(items[2], AdditionalOutputs) and items[2].args == ("transcript",)
    assert items[0][0] == OUT_RATE and items[0][2] == "mono"


def test_a_plain_function_reply_is_emitted_once(two_utterances) -> None:
    _, mono = two_utterances
    got: list[int] = []

    def reply(audio: tuple[int, np.ndarray]) -> tuple[int, np.ndarray]:
        got.append(audio[1].shape[1])
        return (OUT_RATE, OUT_FRAME)

    h, _ = _handler(reply)
    items = [item for _, item in drive(h, mono, RATE)]
    assert len(got) == 2 and len(items) == 2
    assert all(item[0] == OUT_RATE for item in items)


def test_async_generator_reply(two_utterances) -> None:
    _, mono = two_utterances

    async def reply(audio: tuple[int, np.ndarray]):
        for _ in range(2):
            yield (OUT_RATE, OUT_FRAME)

    h, _ = _handler(reply)
    items = [item for _, item in drive(h, mono, RATE)]
    assert len(items) == 4
    h.shutdown()


def test_can_interrupt_stops_a_long_reply_when_the_next_utterance_starts(two_utterances) -> None:
    c, mono = two_utterances
    fn = Recorder(n_frames=1000)  # 20 s of reply audio: far longer than the gap
    h, hooks = _handler(fn)
    out = drive(h, mono, RATE)
    assert len(fn.calls) == 2
    # the first reply was closed part way, when the second utterance started
    assert len(fn.closed) == 1 and 0 < fn.closed[0] < 1000
    assert hooks.clears == 1
    second_start = c.active_span(c.speech_spans()[1])[0] / RATE
    clear_s = hooks.clear_at[0] * 0.02
    assert second_start < clear_s < second_start + 1.5  # within ~2 chunks of the voice
    # nothing of the first reply was emitted after the interruption
    assert all(int(item[1][0, 0]) == 2 for i, item in out if i * 0.02 > clear_s)
    # and the second reply is the second utterance
    _assert_covers(mono, fn.calls[1][0], c.active_span(c.speech_spans()[1]))


def test_without_can_interrupt_speech_during_a_reply_is_ignored(two_utterances) -> None:
    c, mono = two_utterances
    fn = Recorder(n_frames=250)  # 5 s: the whole second utterance falls inside the reply
    h, hooks = _handler(fn, can_interrupt=False)
    padded = np.concatenate((mono, np.zeros(5 * RATE, dtype=np.int16)))
    out = drive(h, padded, RATE)
    assert len(fn.calls) == 1
    assert fn.closed == [] and fn.finished == 1
    assert len(out) == 250 and hooks.clears == 0


def test_speaking_after_a_finished_reply_flushes_its_queued_audio(two_utterances) -> None:
    _, mono = two_utterances
    fn = Recorder(n_frames=3)
    h, hooks = _handler(fn)
    drive(h, mono, RATE, emits_per_frame=100)  # the reply is produced at once, then plays
    assert len(fn.calls) == 2 and fn.closed == []
    assert hooks.clears == 1  # when the second utterance began, reply audio may still be queued


def test_additional_inputs_reach_fn_and_follow_updates(two_utterances) -> None:
    _, mono = two_utterances
    fn = Recorder()
    h, _ = _handler(fn)
    h.set_args(["history", 3])
    half = mono.size // 2 // 960 * 960  # inside the gap between the two utterances
    drive(h, mono[:half], RATE)
    h.set_args(["history+1", 4])
    drive(h, mono[half:], RATE)
    assert [args for _, args in fn.calls] == [("history", 3), ("history+1", 4)]
    assert h.latest_args[0] == "__webrtc_value__"


def test_waits_for_args_when_none_were_set(two_utterances) -> None:
    _, mono = two_utterances
    fn = Recorder()
    h = ReplyOnPause(fn)
    hooks = RecordingHooks()
    hooks.request_args = lambda: (setattr(hooks, "arg_requests", hooks.arg_requests + 1), h.set_args(["late"]))  # type: ignore[method-assign]
    h._hooks = hooks
    drive(h, mono, RATE)
    assert hooks.arg_requests == 1  # asked once, before the first reply
    assert [args for _, args in fn.calls] == [("late",), ("late",)]


@pytest.mark.slow  # over 2 s: out of the quick subset
def test_emit_on_its_own_thread_like_the_worker(two_utterances) -> None:
    c, mono = two_utterances
    fn = Recorder(n_frames=5)
    h, _ = _handler(fn)
    emitted: list[Any] = []
    stop = threading.Event()

    def emit_loop() -> None:
        while not stop.is_set():
            item = h.emit()
            if item is None:
                time.sleep(0.001)
            else:
                emitted.append(item)

    t = threading.Thread(target=emit_loop)
    t.start()
    try:
        for frame in frames(mono, RATE):
            h.receive(frame)
            # paced (5x real time) like the worker's, so the emit thread gets to run: unpaced,
            # the second utterance can start -- and drop the first, still pending -- before
            # emit() has been scheduled at all
            time.sleep(FRAME_S / 5)
        for _ in range(MAX_WAIT_ITERATIONS):
            if len(emitted) >= 10:
                break
            time.sleep(0.001)
    finally:
        stop.set()
        t.join(5)
    assert len(fn.calls) == 2 and len(emitted) == 10
    for (utterance, _), span in zip(fn.calls, [c.active_span(s) for s in c.speech_spans()], strict=True):
        _assert_covers(mono, utterance, span)


def test_stereo_layout_keeps_the_frames_layout() -> None:
    c = compose([0.5, SECOND, TAIL_S], sample_rate=RATE)
    interleaved = np.repeat(c.samples, 2)  # L R L R ... as a packed s16 stereo frame
    fn = Recorder()
    h, _ = _handler(fn, expected_layout="stereo")
    for i in range(0, c.samples.size, 960):
        h.receive((RATE, interleaved[2 * i : 2 * (i + 960)].reshape(1, -1)))
        h.emit()
    assert len(fn.calls) == 1
    sr, audio = fn.calls[0][0]
    assert audio.shape[0] == 1 and audio.shape[1] % 2 == 0
    offset, corr = locate(interleaved, audio[0])
    assert corr > 0.999 and offset % 2 == 0


@pytest.mark.parametrize("rate", [16_000, 44_100])
def test_other_input_rates(rate: int) -> None:
    c = compose([0.5, SECOND, TAIL_S], sample_rate=rate)
    fn = Recorder()
    h, _ = _handler(fn, input_sample_rate=rate)
    drive(h, c.samples, rate)
    assert len(fn.calls) == 1 and fn.calls[0][0][0] == rate


def test_copy_is_fresh_and_shares_fn_options_and_model(two_utterances) -> None:
    _, mono = two_utterances
    fn = Recorder()
    opts = AlgoOptions(audio_chunk_duration=0.5)
    h, _ = _handler(fn, algo_options=opts, can_interrupt=False)
    drive(h, mono[: RATE], RATE)  # mid-first-utterance state must not leak into a copy
    c = h.copy()
    assert isinstance(c, ReplyOnPause) and c is not h
    assert c.fn is fn and c.algo_options is opts and c.model is h.model and c.can_interrupt is False
    assert c._stream is None and not c.args_set.is_set()


def test_pickles_by_value_like_the_loader_ships_it(two_utterances) -> None:
    _, mono = two_utterances
    h = ReplyOnPause(lambda audio, *a: iter([(OUT_RATE, OUT_FRAME)]))
    drive(h, mono[: 2 * RATE], RATE)
    clone = cloudpickle.loads(cloudpickle.dumps(h))
    clone._hooks = RecordingHooks()
    clone.set_args([])
    assert len(drive(clone, mono, RATE)) == 2


def test_reset_forgets_a_half_heard_utterance(two_utterances) -> None:
    c, mono = two_utterances
    fn = Recorder()
    h, _ = _handler(fn)
    end_first = c.active_span(c.speech_spans()[0])[1] // 960 * 960
    drive(h, mono[:end_first], RATE)
    h.reset()
    h.set_args([])
    drive(h, mono[end_first:], RATE)
    assert len(fn.calls) == 1  # only the second utterance
    _assert_covers(mono, fn.calls[0][0], c.active_span(c.speech_spans()[1]))


def test_reply_errors_propagate_and_the_next_turn_still_works(two_utterances) -> None:
    _, mono = two_utterances
    calls = []

    def reply(audio: tuple[int, np.ndarray]):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("model failed")
        yield (OUT_RATE, OUT_FRAME)

    h, _ = _handler(reply)
    errors, items = [], []
    for frame in frames(mono, RATE):
        h.receive(frame)
        try:
            item = h.emit()
        except RuntimeError as exc:
            errors.append(str(exc))
            continue
        if item is not None:
            items.append(item)
    assert errors == ["model failed"] and len(items) == 1 and len(calls) == 2


@pytest.mark.slow
def test_a_client_that_never_sends_inputs_gets_the_initial_values(two_utterances) -> None:
    _, mono = two_utterances
    fn = Recorder()
    h = ReplyOnPause(fn)
    hooks = RecordingHooks(initial_args=["initial"])  # request_args() goes unanswered
    h._hooks = hooks
    drive(h, mono, RATE)
    assert hooks.arg_requests == 1
    assert [args for _, args in fn.calls] == [("initial",), ("initial",)]


@pytest.mark.slow
def test_pause_latency_is_one_window_wherever_the_speech_ends() -> None:
    """End of speech → pause decision within audio_chunk_duration + VAD_HOP_S (+ the VAD's
    lag), for utterances ending at every phase relative to the stream start: the window
    slides by VAD_HOP_S, so there is no cliff where ending just after a chunk boundary
    costs a whole extra chunk."""
    window = AlgoOptions().audio_chunk_duration
    latencies = []
    for lead in LEAD_OFFSETS_S:
        c = compose([lead, SECOND, TAIL_S], sample_rate=RATE)
        fn = Recorder()
        h, hooks = _handler(fn)
        out = drive(h, c.samples, RATE)
        assert len(fn.calls) == 1 and hooks.messages("log") == [LOG_PAUSE_DETECTED, LOG_RESPONSE_STARTING]
        voice_end_s = c.active_span(c.speech_spans()[0])[1] / RATE
        decided_s = (out[0][0] + 1) * FRAME_S  # the reply starts on the frame the pause was seen
        latencies.append(decided_s - voice_end_s)
    assert min(latencies) > 0, latencies
    assert max(latencies) <= window + VAD_HOP_S + PAUSE_LAG_MARGIN_S, latencies
    # and it hardly depends on the phase: at most one hop (plus a frame) between best and worst
    assert max(latencies) - min(latencies) <= VAD_HOP_S + FRAME_S, latencies


@pytest.mark.parametrize("chunk_s", [0.4, 1.0])
def test_pause_latency_follows_audio_chunk_duration(chunk_s: float) -> None:
    for lead in LEAD_OFFSETS_S[::4]:
        c = compose([lead, SECOND, TAIL_S], sample_rate=RATE)
        fn = Recorder()
        h, _ = _handler(fn, algo_options=AlgoOptions(audio_chunk_duration=chunk_s))
        out = drive(h, c.samples, RATE)
        assert len(fn.calls) == 1
        latency = (out[0][0] + 1) * FRAME_S - c.active_span(c.speech_spans()[0])[1] / RATE
        assert 0 < latency <= chunk_s + VAD_HOP_S + PAUSE_LAG_MARGIN_S, (lead, latency)


@pytest.mark.parametrize("lead", LEAD_OFFSETS_S[::3])
def test_a_long_utterance_with_short_breaths_is_one_turn(lead: float) -> None:
    # (silences shorter than the window never end a turn, wherever they fall in the stream;
    # ones of ~the window's length do, since some window then holds nothing but silence)
    sentences = [FIRST, SECOND, "the weather is nice today", "please tell me a story about a dragon"]
    parts: list[Any] = [lead]
    for s in sentences:
        parts += [s, BREATH_S]
    c = compose([*parts, TAIL_S], sample_rate=RATE)
    fn = Recorder()
    h, _ = _handler(fn)
    drive(h, c.samples, RATE)
    assert len(fn.calls) == 1
    spans = [c.active_span(s) for s in c.speech_spans()]
    _assert_covers(c.samples, fn.calls[0][0], (spans[0][0], spans[-1][1]))


@pytest.mark.slow
def test_buffers_stay_bounded_while_nobody_speaks() -> None:
    from workers.voice.reply_on_pause import HISTORY_S

    h, _ = _handler(Recorder())
    drive(h, compose([60.0], sample_rate=RATE).samples, RATE)
    st = h._stream
    assert st is not None
    kept_s = (st.audio16.end - st.audio16.start) / 16_000
    assert kept_s <= HISTORY_S + 0.6 + 0.02
    assert len(st.frames) * 0.02 <= HISTORY_S + 0.6 + 0.06


# --- upstream's signature and options ----------------------------------------------------------


def test_positional_arguments_are_gradio_webrtcs_and_the_additions_keyword_only() -> None:
    opts = AlgoOptions(audio_chunk_duration=0.5)
    h = ReplyOnPause(lambda audio: None, opts, None, "stereo", 16_000, 320, 16_000)
    assert (h.algo_options, h.expected_layout, h.output_sample_rate, h.input_sample_rate) == (opts, "stereo", 16_000, 16_000)
    c = h.copy()
    assert (c.algo_options, c.expected_layout, c.input_sample_rate) == (opts, "stereo", 16_000)
    with pytest.raises(TypeError):  # can_interrupt is keyword-only
        ReplyOnPause(lambda audio: None, None, None, "mono", 24_000, 480, 48_000, False)
    with pytest.raises(TypeError, match="startup_fn"):  # fastrtc's positional order fails loudly
        ReplyOnPause(lambda audio: None, lambda: None, AlgoOptions())
    with pytest.raises(ValueError, match="expected_layout"):
        ReplyOnPause(lambda audio: None, None, None, True)  # type: ignore[arg-type]


def test_a_one_parameter_fn_gets_the_audio_alone_whatever_the_other_inputs(two_utterances) -> None:
    _, mono = two_utterances
    calls: list[tuple[int, np.ndarray]] = []

    def reply(audio):  # the seeds' `def response(audio)` on a stream with more inputs
        calls.append(audio)
        yield (OUT_RATE, OUT_FRAME)

    h, hooks = _handler(reply)
    h.set_args(["a textbox", 3])
    out = drive(h, mono, RATE)
    assert len(calls) == 2 and all(sr == RATE for sr, _ in calls)
    assert [item for _, item in out].count((OUT_RATE, OUT_FRAME)) == 2
    assert hooks.arg_requests == 0


def test_max_continuous_speech_cuts_an_utterance_that_never_pauses() -> None:
    # about 7 s of speech with only short breaths: one turn by default (see above), and
    # two or more with a 2.5 s cap, each at most the cap plus a window
    sentences = [FIRST, SECOND, "the weather is nice today", "please tell me a story about a dragon"]
    parts: list[Any] = [0.5]
    for s in sentences:
        parts += [s, BREATH_S]
    c = compose([*parts, TAIL_S], sample_rate=RATE)
    cap_s = 2.5
    fn = Recorder()
    h, _ = _handler(fn, algo_options=AlgoOptions(max_continuous_speech_s=cap_s))
    drive(h, c.samples, RATE)
    assert len(fn.calls) >= 2
    for (sr, audio), _ in fn.calls:
        assert audio.shape[1] / sr <= cap_s + 0.6 + VAD_HOP_S + 0.05


def test_startup_fn_is_played_before_listening_and_gets_the_inputs(two_utterances) -> None:
    _, mono = two_utterances
    got: list[tuple[Any, ...]] = []

    def greet(*args):
        got.append(args)
        yield (OUT_RATE, OUT_FRAME + 7)

    fn = Recorder()
    h, _ = _handler(fn, startup_fn=greet)
    h.set_args(["name"])
    h.start_up()
    first = h.emit()
    assert first is not None and int(first[1][0, 0]) == 7 and got == [("name",)]
    drive(h, mono, RATE)
    assert len(fn.calls) == 2  # the replies still come
    assert h.copy().startup_fn is greet


class EnergyVAD:
    """A pause-detection model of one's own (the PauseDetectionModel protocol): speech is
    any 32 ms window louder than a threshold; no Silero involved."""

    WINDOW = 512  # samples at 16 kHz
    LEVEL = 0.02  # RMS of full scale above which a window is speech

    def __init__(self) -> None:
        self.calls = 0
        self.warmed = False

    def warmup(self) -> None:
        self.warmed = True

    def vad(self, audio: tuple[int, np.ndarray], options: Any) -> tuple[float, list[dict]]:
        self.calls += 1
        rate, x = audio
        n = len(x) // self.WINDOW
        loud = [float(np.sqrt(np.mean(x[i * self.WINDOW : (i + 1) * self.WINDOW] ** 2))) > self.LEVEL for i in range(n)]
        chunks: list[dict] = []
        for i, is_loud in enumerate(loud):
            if not is_loud:
                continue
            if chunks and chunks[-1]["end"] == i * self.WINDOW:
                chunks[-1]["end"] = (i + 1) * self.WINDOW
            else:
                chunks.append({"start": i * self.WINDOW, "end": (i + 1) * self.WINDOW})
        return sum(c["end"] - c["start"] for c in chunks) / rate, chunks


def test_a_model_of_ones_own_drives_the_turns() -> None:
    # two bursts of tone with silence between: the energy model finds two utterances
    rate = RATE
    t = np.arange(int(1.0 * rate)) / rate
    burst = (0.3 * 32767 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    silence = np.zeros(int(1.5 * rate), np.int16)
    samples = np.concatenate([silence[: rate // 2], burst, silence, burst, silence, silence])
    model = EnergyVAD()
    fn = Recorder()
    h, _ = _handler(fn, model=model)
    h.start_up()
    assert model.warmed
    drive(h, samples, rate)
    assert model.calls > 0
    assert len(fn.calls) == 2
    for (sr, audio), _ in fn.calls:
        assert sr == rate and 0.9 <= audio.shape[1] / rate <= 1.0 + 0.6 + 0.2
    assert h.copy().model is model


# --- phone_mode --------------------------------------------------------------------------------------


def test_on_a_phone_fn_never_waits_and_a_replys_outputs_are_the_next_turns_inputs(two_utterances) -> None:
    """A phone sends no inputs: fn gets the initial ones without asking, and what a reply
    yields as AdditionalOutputs (a chatbot's history) is what the next turn gets."""
    _, mono = two_utterances
    calls: list[list[Any]] = []

    def chat(audio: tuple[int, np.ndarray], history: list[Any]):
        calls.append(list(history))
        yield (OUT_RATE, OUT_FRAME)
        yield AdditionalOutputs([*history, f"turn {len(calls)}"])

    h = ReplyOnPause(chat)
    hooks = RecordingHooks(initial_args=[["hello"]])
    h._hooks = hooks
    h.phone_mode = True  # the worker sets it from the session's hello; args_set stays clear
    drive(h, mono, RATE, emits_per_frame=10)
    assert hooks.arg_requests == 0, "nobody to ask on a phone"
    assert calls == [["hello"], ["hello", "turn 1"]]
    assert h.args_set.is_set()


def test_off_the_phone_a_replys_outputs_do_not_become_inputs(two_utterances) -> None:
    _, mono = two_utterances
    calls: list[list[Any]] = []

    def chat(audio: tuple[int, np.ndarray], history: list[Any]):
        calls.append(list(history))
        yield AdditionalOutputs([*history, "reply"])

    h, _ = _handler(chat)
    h.set_args([["hello"]])
    drive(h, mono, RATE, emits_per_frame=10)
    assert calls == [["hello"], ["hello"]], "the page sends the outputs back as inputs, if it does"


class _FreshSilero(SileroVADModel):
    """Silero judged afresh on every window, as fastrtc does: a ``vad()`` of its own opts
    out of the streamed pass."""

    runs = 0

    def vad(self, audio: tuple[int, np.ndarray], options: Any = None) -> tuple[float, list[dict]]:
        return super().vad(audio, options)

    def speech_probabilities(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        probs = super().speech_probabilities(audio, sample_rate)
        _FreshSilero.runs += probs.size
        return probs


class _CountingSilero(SileroVADModel):
    runs = 0

    def speech_probabilities(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        probs = super().speech_probabilities(audio, sample_rate)
        _CountingSilero.runs += probs.size
        return probs

    def stream_probabilities(self, context: np.ndarray, audio: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, state = super().stream_probabilities(context, audio, state)
        _CountingSilero.runs += probs.size
        return probs, state


@pytest.mark.parametrize("lead_s", LEAD_OFFSETS_S[::4])
def test_the_streamed_listening_finds_the_same_turns_as_fastrtcs_fresh_windows(lead_s: float) -> None:
    """While nobody talks the windows read one streamed pass of the model (each 32 ms model
    window run once): the same utterances come out at the same frames as when every window
    is judged afresh, for far fewer model runs."""
    c = compose([lead_s, FIRST, GAP_S, SECOND, TAIL_S], sample_rate=RATE)
    results = {}
    for model in (_FreshSilero(), _CountingSilero()):
        type(model).runs = 0
        fn = Recorder()
        h, _ = _handler(fn, model=model)
        out = drive(h, c.samples, RATE)
        results[type(model).__name__] = ([u[1].shape[1] for u, _ in fn.calls], [i for i, _ in out], type(model).runs)
    (f_lens, f_at, f_runs), (s_lens, s_at, s_runs) = results["_FreshSilero"], results["_CountingSilero"]
    assert len(f_lens) == 2 and s_at == f_at, results
    for f, s in zip(f_lens, s_lens, strict=True):
        # where an utterance starts is found by the onset look-back either way; it may move by
        # the model window the stream's grid puts at the window's edge
        assert abs(f - s) <= 0.1 * RATE
    assert s_runs < 0.75 * f_runs, (s_runs, f_runs)  # mostly speech here: ~0.57 measured
