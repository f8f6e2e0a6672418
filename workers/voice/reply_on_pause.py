"""``ReplyOnPause``: call the user's function with each utterance once the speaker pauses.

How a turn is found. Incoming frames (any rate, delivered at the handler's
``input_sample_rate`` by the worker) are mixed to mono and resampled to 16 kHz. Every
``VAD_HOP_S`` of that audio the pause-detection model measures the speech in the latest
window of ``audio_chunk_duration`` seconds (a sliding window, so how soon a pause is seen
does not depend on where the speech ended relative to the start of the stream). A window
with more than ``started_talking_threshold`` seconds of speech starts an utterance (from
the first speech the VAD found in it, or in the window's length of audio before it when
speech began there); once talking, a window with less than ``speech_threshold`` seconds is
the pause -- unless the speaker is already talking again at the window's end (see
``_talking_at_window_end``), so only silences of about a window end a turn, wherever they
fall in the stream. The utterance -- every frame from its start through the end of the
pausing window, at the rate and layout the frames came in -- goes to
``fn(audio, *latest_args[1:])``. A pause is therefore seen at most
``audio_chunk_duration + VAD_HOP_S`` (plus the VAD's own lag, a few tens of ms) after the
speech ends. While someone talks, each check runs the VAD over its window from a fresh
state, as fastrtc does per chunk (~4.7 ms for 0.6 s on one core here); while listening for
speech to start, the windows read one streamed pass of the model instead (``_window_vad``),
which roughly halves a session's CPU over a conversation.

Threads. The worker calls ``receive`` for each frame and ``emit`` in a loop of its own,
possibly on another thread. ``receive`` only runs the VAD (a few ms per check); the user's
function and generator run in ``emit``, which returns one item per call, or None when
nothing is ready. The reply generator is only ever touched by ``emit``'s thread:
``receive`` interrupts a reply by bumping an epoch under the lock, and ``emit`` closes the
generator (and drops anything it produced) when it sees the epoch move.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from workers.audio import Resampler, frame_samples, to_float_mono
from workers.handlers import (
    DEFAULT_OUTPUT_FRAME_SIZE,
    DEFAULT_OUTPUT_SAMPLE_RATE,
    WEBRTC_VALUE,
    AdditionalOutputs,
    Layout,
    StreamHandler,
)
from workers.voice.vad import (
    SILERO_CONTEXT_SAMPLES,
    SILERO_STATE_SHAPE,
    SILERO_WINDOW_SAMPLES,
    VAD_SAMPLE_RATE,
    AlgoOptions,
    PauseDetectionModel,
    SileroVADModel,
    SileroVadOptions,
    segments_from_probabilities,
)

REPLY_ON_PAUSE_INPUT_SAMPLE_RATE = 48_000  # Hz, fastrtc's default for ReplyOnPause
VAD_HOP_S = 0.1  # s of audio between two VAD checks of the latest audio_chunk_duration window
HISTORY_S = 2.0  # s of 16 kHz audio kept behind the window being checked (pre-roll, stop-word rewind)
SAMPLE_BUFFER_INITIAL_S = 4.0  # s: first allocation of the 16 kHz buffer; grows as needed
LOG_PAUSE_DETECTED = "pause_detected"  # data of the {"type": "log"} message at a pause
LOG_RESPONSE_STARTING = "response_starting"  # ... and when the reply function is called

AudioTuple = tuple[int, np.ndarray]


class SampleBuffer:
    """A float32 sample log indexed by absolute stream position, trimmed from the front."""

    def __init__(self, capacity: int) -> None:
        self._data = np.zeros(max(1, capacity), dtype=np.float32)
        self._head = 0  # index in _data of absolute position `start`
        self._len = 0
        self.start = 0  # absolute position of the oldest kept sample

    @property
    def end(self) -> int:
        return self.start + self._len

    def append(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        need = self._head + self._len + x.size
        if need > self._data.size:
            # compact, and grow when more than half would still be full
            keep = self._data[self._head : self._head + self._len]
            size = self._data.size
            while self._len + x.size > size // 2:
                size *= 2
            data = np.zeros(size, dtype=np.float32) if size != self._data.size else self._data
            data[: self._len] = keep
            self._data, self._head = data, 0
        self._data[self._head + self._len : self._head + self._len + x.size] = x
        self._len += x.size

    def view(self, a: int, b: int) -> np.ndarray:
        """Samples [a, b) in absolute positions (clamped to what is kept); valid until the next append."""
        a, b = max(a, self.start), min(b, self.end)
        return self._data[self._head + a - self.start : self._head + max(a, b) - self.start]

    def trim(self, before: int) -> None:
        """Forget samples before absolute position ``before``."""
        drop = min(max(0, before - self.start), self._len)
        self._head += drop
        self._len -= drop
        self.start += drop


class _Stream:
    """Per-stream listening state: audio logs at both rates and the turn being heard."""

    def __init__(self, sample_rate: int, chunk_samples: int) -> None:
        self.sample_rate = sample_rate
        self.resampler = Resampler(sample_rate, VAD_SAMPLE_RATE)
        self.frames: deque[tuple[int, np.ndarray]] = deque()  # (absolute input position, frame)
        self.in_pos = 0  # input samples received
        self.audio16 = SampleBuffer(int((SAMPLE_BUFFER_INITIAL_S) * VAD_SAMPLE_RATE) + chunk_samples)
        self.window_end16 = chunk_samples  # absolute 16 kHz end of the next window the VAD checks
        self.floor16 = 0  # windows and utterances never start before this (a stop word's end)
        self.talking = False
        self.utt_start16 = 0
        # streaming Silero (see ReplyOnPause._window_vad): the probability of each 32 ms
        # model window from grid0 on, the model's state after the last, where the next starts
        self.probs = np.zeros(0, dtype=np.float32)
        self.grid0 = 0
        self.grid16 = 0
        self.vad_state: np.ndarray | None = None

    def to_input(self, pos16: int) -> int:
        return pos16 * self.sample_rate // VAD_SAMPLE_RATE

    def frames_between(self, a: int, b: int, layout: str) -> list[np.ndarray]:
        """Frames overlapping input positions [a, b) (whole frames: 10-20 ms granularity)."""
        out = []
        for start, frame in self.frames:
            if start >= b:
                break
            if start + frame_samples(frame, layout) > a:
                out.append(frame)
        return out

    def trim_frames(self, before: int, layout: str) -> None:
        while self.frames:
            start, frame = self.frames[0]
            if start + frame_samples(frame, layout) > before:
                break
            self.frames.popleft()


class _Reply:
    """A running reply: the user's iterator (sync, or async driven by a private loop)."""

    def __init__(self, out: Any, epoch: int, loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
        self.epoch = epoch
        self.single: list[Any] | None = None
        self.it: Iterator[Any] | None = None
        self.agen: Any = None
        self.loop_factory = loop_factory
        if inspect.isgenerator(out) or isinstance(out, Iterator):
            self.it = out
        elif inspect.isasyncgen(out):
            self.agen = out
        elif inspect.iscoroutine(out):
            self.single = [loop_factory().run_until_complete(out)]
        else:
            self.single = [out]

    _DONE = object()

    def next(self) -> Any:
        """The next item, or ``_Reply._DONE``."""
        if self.single is not None:
            return self.single.pop() if self.single else self._DONE
        if self.it is not None:
            return next(self.it, self._DONE)
        try:
            return self.loop_factory().run_until_complete(self.agen.__anext__())
        except StopAsyncIteration:
            return self._DONE

    def close(self) -> None:
        if self.it is not None and hasattr(self.it, "close"):
            self.it.close()
        elif self.agen is not None:
            try:
                self.loop_factory().run_until_complete(self.agen.aclose())
            except Exception:
                pass


class ReplyOnPause(StreamHandler):
    """Reply to each utterance when the speaker pauses (gradio_webrtc/fastrtc semantics).

    ``fn(audio, *extra_inputs)`` gets ``(sample_rate, int16 array (1, N))`` -- the whole
    utterance -- and yields (or returns) ``(sr, array)``, ``(sr, array, layout)`` or
    ``AdditionalOutputs``; a coroutine function or async generator works too. A ``fn`` of one
    parameter gets the audio alone, whatever other inputs the stream has (as upstream).

    The positional parameters are gradio_webrtc's, in its order; the ones it did not have
    are keyword-only (fastrtc put ``startup_fn`` second, so a positional call written for it
    fails loudly here instead of shifting every argument):

    ``can_interrupt``: when the speaker starts a new utterance while a reply is still
    being produced or played, the reply stops and the audio already queued for the client
    is flushed. When False, what the speaker says during a reply is ignored.
    ``model``: the pause-detection model (:class:`PauseDetectionModel`; Silero by default).
    ``startup_fn``: called once per session before listening starts (with the stream's
    other inputs when ``fn`` takes them); what it yields or returns is played first.

    On a phone call (``phone_mode``) nothing waits for inputs (a phone sends none: ``fn``
    gets the inputs' initial values), and the AdditionalOutputs a reply yields become the
    next turn's inputs (see ``_feed_back``).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        algo_options: AlgoOptions | None = None,
        model_options: SileroVadOptions | None = None,
        expected_layout: Layout = "mono",
        output_sample_rate: int = DEFAULT_OUTPUT_SAMPLE_RATE,
        output_frame_size: int = DEFAULT_OUTPUT_FRAME_SIZE,
        input_sample_rate: int = REPLY_ON_PAUSE_INPUT_SAMPLE_RATE,
        *,
        can_interrupt: bool = True,
        model: PauseDetectionModel | None = None,
        startup_fn: Callable[..., Any] | None = None,
    ) -> None:
        if algo_options is not None and not isinstance(algo_options, AlgoOptions):
            raise TypeError(
                f"algo_options must be an AlgoOptions, got {type(algo_options).__name__} "
                "(fastrtc's positional startup_fn? pass startup_fn=... by keyword)"
            )
        if expected_layout not in ("mono", "stereo"):
            raise ValueError(f"expected_layout must be 'mono' or 'stereo', got {expected_layout!r}")
        super().__init__(expected_layout, output_sample_rate, output_frame_size, input_sample_rate)
        self.fn = fn
        self.algo_options = algo_options or AlgoOptions()
        self.model_options = model_options or SileroVadOptions()
        self.can_interrupt = can_interrupt
        self.model: PauseDetectionModel = model if model is not None else SileroVADModel()
        self.startup_fn = startup_fn
        self._init_runtime()

    @property
    def _needs_additional_inputs(self) -> bool:
        """Whether ``fn`` takes the stream's other inputs after the audio."""
        try:
            return len(inspect.signature(self.fn).parameters) > 1
        except (TypeError, ValueError):  # no signature to read (a builtin): pass them
            return True

    # --- per-session runtime state (never pickled) ---------------------------------------------

    _RUNTIME: tuple[str, ...] = ("_lock", "_stream", "_pending", "_reply", "_epoch", "_active", "_replied", "_deaf", "_aloop", "_startup_out")

    def _init_runtime(self) -> None:
        self._lock = threading.Lock()
        self._stream: _Stream | None = None
        self._pending: AudioTuple | None = None  # an utterance waiting for emit()
        self._reply: _Reply | None = None  # the running reply; only emit()'s thread touches it
        self._epoch = 0  # bumped on every interruption
        self._active = False  # a reply is pending or running
        self._replied = False  # a reply started since the speaker last started talking
        self._deaf = False  # audio was dropped during a reply (can_interrupt=False)
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._startup_out: Any = None  # what startup_fn gave, played before any reply

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for key in self._RUNTIME:
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._init_runtime()

    def copy(self) -> ReplyOnPause:
        return ReplyOnPause(
            self.fn,
            algo_options=self.algo_options,
            model_options=self.model_options,
            can_interrupt=self.can_interrupt,
            expected_layout=self.expected_layout,
            output_sample_rate=self.output_sample_rate,
            output_frame_size=self.output_frame_size,
            input_sample_rate=self.input_sample_rate,
            model=self.model,
            startup_fn=self.startup_fn,
        )

    def warmup(self) -> None:
        """Load the VAD now rather than on the first chunk."""
        self.model.warmup()

    # failover (docs/failover.md): the conversation is the app's function's, so it is the
    # function that opts in, by being an object with snapshot() and restore(value); the
    # state is saved after every reply. Without them these are None: nothing is kept.
    @property
    def snapshot(self) -> Callable[[], Any] | None:
        fn = getattr(self.fn, "snapshot", None)
        return fn if callable(fn) else None

    @property
    def restore(self) -> Callable[[Any], None] | None:
        fn = getattr(self.fn, "restore", None)
        return fn if callable(fn) else None

    def start_up(self) -> None:
        self.warmup()
        if self.startup_fn is not None:
            args: list[Any] = []
            if self._needs_additional_inputs:
                if not self.args_set.is_set():
                    self.wait_for_args_sync()
                args = self.latest_args[1:]
            out = self.startup_fn(*args)
            with self._lock:
                self._startup_out = out

    def reset(self) -> None:
        """Forget the stream: buffers, the turn in progress, any pending or running reply."""
        super().reset()
        with self._lock:
            self._stream = None
            self._pending = None
            self._active = False
            self._replied = False
            self._deaf = False
            self._epoch += 1  # emit() closes a running reply

    def shutdown(self) -> None:
        with self._lock:
            self._epoch += 1
            self._pending = None
            reply, self._reply = self._reply, None
        if reply is not None:
            reply.close()
        if self._aloop is not None:
            self._aloop.close()
            self._aloop = None

    # --- receive: listen for turns -------------------------------------------------------------

    @property
    def _chunk_samples(self) -> int:
        return max(1, round(self.algo_options.audio_chunk_duration * VAD_SAMPLE_RATE))

    @property
    def _hop_samples(self) -> int:
        # (never more than a window: with a tiny audio_chunk_duration no audio goes unchecked)
        return max(1, min(round(VAD_HOP_S * VAD_SAMPLE_RATE), self._chunk_samples))

    def receive(self, frame: AudioTuple) -> None:
        sample_rate, array = frame
        actions: list[Callable[[], None]] = []
        with self._lock:
            if self._active and not self.can_interrupt:
                self._deaf = True
                return
            if self._deaf or self._stream is None or self._stream.sample_rate != sample_rate:
                # start listening afresh (first frame, a new rate, or the end of a deaf reply)
                self._deaf = False
                self._stream = _Stream(int(sample_rate), self._chunk_samples)
                self._on_new_stream(self._stream)
            self._ingest(self._stream, np.array(array, copy=True), actions)
        for action in actions:
            action()

    def _ingest(self, st: _Stream, array: np.ndarray, actions: list[Callable[[], None]]) -> None:
        st.frames.append((st.in_pos, array))
        st.in_pos += frame_samples(array, self.expected_layout)
        pos16 = st.audio16.end
        x16 = st.resampler.process(to_float_mono(array, self.expected_layout))
        st.audio16.append(x16)
        self._on_audio16(st, x16, pos16, actions)
        chunk, hop = self._chunk_samples, self._hop_samples
        # every hop, the latest window of `chunk` samples (never reaching back before floor16);
        # a burst of audio is caught up hop by hop, so decisions never depend on frame sizes.
        # (re-checked per window: a subclass may stop listening for turns inside _on_chunk)
        while self._listening_for_turns() and st.audio16.end >= st.window_end16:
            b = st.window_end16
            a = b - chunk
            speech_s, segments = self._window_vad(st, a, b)
            st.window_end16 = b + hop
            self._on_chunk(st, speech_s, segments, a, b, actions)
        if not self._listening_for_turns():
            st.window_end16 = st.audio16.end + chunk
            st.vad_state = None  # the audio skipped meanwhile is not run: start afresh
        # the VAD needs a little history (onset look-back, stop-word rewind); the utterance
        # itself is kept only as the frames it will be handed over as
        keep16 = st.window_end16 - chunk - max(chunk, int(HISTORY_S * VAD_SAMPLE_RATE))
        st.audio16.trim(keep16)
        keep_frames16 = min(keep16, st.utt_start16) if st.talking else keep16
        st.trim_frames(st.to_input(max(0, keep_frames16)), self.expected_layout)

    def _window_vad(self, st: _Stream, a: int, b: int) -> tuple[float, list[dict]]:
        """Speech in window [a, b) of 16 kHz audio: seconds, and segments relative to ``a``.

        With Silero (the default model), while no one is talking the window's probabilities
        are read from one pass of the model over the stream, each 32 ms model window run once
        with its state carried on (Silero's streaming use), instead of a fresh pass over
        every 0.6 s window every 0.1 s: 6x fewer model runs while listening (measured over
        turns of speech and silence: 64 -> ~29 ms of CPU per second of audio per session). The window is the model windows that
        lie inside [a, b) (up to 32 ms shorter at each end). Other models, a Silero subclass
        with a ``vad()`` of its own, or a Silero whose options are not Silero's, are called on
        the window itself, as fastrtc does. Streamed
        is for listening for speech to start; while an utterance goes on each window is
        judged afresh, so pauses are found exactly when fastrtc's chunks would find them."""
        model, opts = self.model, self.model_options
        if not (isinstance(model, SileroVADModel) and type(model).vad is SileroVADModel.vad and isinstance(opts, SileroVadOptions)):
            return model.vad((VAD_SAMPLE_RATE, st.audio16.view(a, b)), opts)
        if st.talking:
            # the pause is decided as fastrtc decides it, on the window from a fresh state:
            # the streamed state remembers the voice, and its windows hold speech for ~100 ms
            # longer after it stops (measured: the bench's turns 640 -> 714 ms at p50, even
            # when only windows it measured under 0.55 s of speech were judged afresh)
            return model.vad((VAD_SAMPLE_RATE, st.audio16.view(a, b)), opts)
        return self._streamed_vad(st, a, b, model, opts)

    def _streamed_vad(self, st: _Stream, a: int, b: int, model: SileroVADModel, opts: SileroVadOptions) -> tuple[float, list[dict]]:
        window = SILERO_WINDOW_SAMPLES[VAD_SAMPLE_RATE]
        if st.vad_state is None or st.grid16 > st.audio16.end or st.grid16 + window <= a:
            # first check, or after a stretch the model did not hear: start the grid at a
            st.vad_state = np.zeros(SILERO_STATE_SHAPE, dtype=np.float32)
            st.grid0 = st.grid16 = a
            st.probs = np.zeros(0, dtype=np.float32)
        if b - st.grid16 >= window:
            ctx = SILERO_CONTEXT_SAMPLES[VAD_SAMPLE_RATE]
            context = st.audio16.view(st.grid16 - ctx, st.grid16)
            if context.size < ctx:
                context = np.concatenate((np.zeros(ctx - context.size, dtype=np.float32), context))
            new, st.vad_state = model.stream_probabilities(context, st.audio16.view(st.grid16, b), st.vad_state)
            st.probs = np.concatenate((st.probs, new))
            st.grid16 += new.size * window
        first = -(-(a - st.grid0) // window)  # the first model window starting at or after a
        last = (b - st.grid0) // window  # ... and the end of the last inside b
        keep_from = max(0, first - 2 * (self._chunk_samples // window + 1))
        if keep_from:  # only the windows later checks can still reach
            st.probs = st.probs[keep_from:]
            st.grid0 += keep_from * window
            first, last = first - keep_from, last - keep_from
        probs = st.probs[first:last]
        if probs.size == 0:
            return 0.0, []
        start = st.grid0 + first * window
        chunks = segments_from_probabilities(probs, probs.size * window, VAD_SAMPLE_RATE, opts)
        speech_s = sum(c["end"] - c["start"] for c in chunks) / VAD_SAMPLE_RATE
        shift = start - a
        return speech_s, [{"start": c["start"] + shift, "end": c["end"] + shift} for c in chunks]

    def _on_chunk(
        self, st: _Stream, speech_s: float, segments: list[dict], a: int, b: int, actions: list[Callable[[], None]]
    ) -> None:
        opts = self.algo_options
        if not st.talking:
            if speech_s > opts.started_talking_threshold:
                st.talking = True
                st.utt_start16 = self._onset(st, segments, a, b)
                self._on_speech_start(actions)
            return
        too_long = (b - st.utt_start16) / VAD_SAMPLE_RATE >= opts.max_continuous_speech_s
        if too_long or (speech_s < opts.speech_threshold and not self._talking_at_window_end(st, a, b)):
            st.talking = False
            lo, hi = st.to_input(st.utt_start16), st.to_input(b)
            frames = st.frames_between(lo, hi, self.expected_layout)
            if frames:
                audio = np.concatenate([np.atleast_2d(f) for f in frames], axis=-1)
                self._on_utterance((st.sample_rate, audio), actions)

    def _talking_at_window_end(self, st: _Stream, a: int, b: int) -> bool:
        """Whether a window that measured as a pause ends in speech that has just begun.

        Silero drops a segment shorter than ``min_speech_duration_ms``, including one that
        is only short because the window cuts it off: a voice that resumed in the window's
        last 0.25 s. Checked every hop, such windows would make every gap of ~0.3 s a pause;
        a speaker already talking again has not paused, so the window is looked at once more
        without the minimum length and the padding (only for a would-be pause, so about
        once per turn). Models whose options are not Silero's skip this."""
        opts = self.model_options
        if not (dataclasses.is_dataclass(opts) and hasattr(opts, "min_speech_duration_ms") and hasattr(opts, "speech_pad_ms")):
            return False
        raw = dataclasses.replace(opts, min_speech_duration_ms=0, speech_pad_ms=0)
        _, segments = self.model.vad((VAD_SAMPLE_RATE, st.audio16.view(a, b)), raw)
        return bool(segments) and int(segments[-1]["end"]) >= (b - a) - 1

    def _onset(self, st: _Stream, segments: list[dict], a: int, b: int) -> int:
        """Where the utterance that made window [a, b) talking began. Speech often starts
        before the window, too briefly to have counted in the windows checked before, so the
        VAD looks again over [a - window, b) (once per utterance); its segment start
        includes ``speech_pad_ms``."""
        lo = max(a - self._chunk_samples, st.floor16, st.audio16.start)
        first = a + int(segments[0]["start"]) if segments else a
        if lo < a:
            _, wider = self.model.vad((VAD_SAMPLE_RATE, st.audio16.view(lo, b)), self.model_options)
            if wider:
                first = min(first, lo + int(wider[0]["start"]))
        return max(first, st.floor16, st.audio16.start)

    def _on_speech_start(self, actions: list[Callable[[], None]]) -> None:
        """The speaker started an utterance: interrupt a reply in progress (lock held)."""
        if self.can_interrupt and (self._active or self._replied):
            self._interrupt(actions)
        self._replied = False

    def _interrupt(self, actions: list[Callable[[], None]]) -> None:
        self._epoch += 1
        self._pending = None
        self._active = False
        actions.append(self._clear_audio)

    def _on_utterance(self, utterance: AudioTuple, actions: list[Callable[[], None]]) -> None:
        """A complete utterance (lock held): queue it for emit()."""
        self._pending = utterance
        self._active = True
        actions.append(lambda: self.send_message_sync(LOG_PAUSE_DETECTED, "log"))

    # hooks for subclasses (lock held)
    def _on_new_stream(self, st: _Stream) -> None:
        pass

    def _on_audio16(self, st: _Stream, x16: np.ndarray, pos16: int, actions: list[Callable[[], None]]) -> None:
        pass

    def _listening_for_turns(self) -> bool:
        return True

    def _clear_audio(self) -> None:
        # flushes reply audio already queued for the client (StreamHandlerBase.clear_audio;
        # looked up defensively so the handler also runs beside an older handler base)
        clear = getattr(super(), "clear_audio", None) or getattr(self._hooks, "clear_audio", None)
        if callable(clear):
            clear()

    # --- emit: produce the reply ---------------------------------------------------------------

    def _reply_loop(self) -> asyncio.AbstractEventLoop:
        if self._aloop is None:
            self._aloop = asyncio.new_event_loop()
        return self._aloop

    def emit(self) -> Any:
        utterance: AudioTuple | None = None
        epoch = 0
        with self._lock:
            reply = self._reply
            stale = reply is not None and reply.epoch != self._epoch
            startup, self._startup_out = (self._startup_out, None) if reply is None else (None, self._startup_out)
            if startup is not None:
                reply = self._reply = _Reply(startup, self._epoch, self._reply_loop)
                self._active = True
            elif reply is None and self._pending is not None:
                utterance, self._pending = self._pending, None
                epoch = self._epoch
        if reply is not None:
            if stale:  # interrupted since the last call: close it here, on emit's thread
                self._finish(reply)
                return None
            return self._next(reply)
        if utterance is not None:
            return self._start_reply(utterance, epoch)
        return None

    def _start_reply(self, utterance: AudioTuple, epoch: int) -> Any:
        if self._needs_additional_inputs and not self.args_set.is_set():
            # the stream's other inputs: the worker sets them when the client sends them;
            # ask once and wait (bounded) rather than call fn with arguments missing
            self.wait_for_args_sync()
        self.send_message_sync(LOG_RESPONSE_STARTING, "log")
        with self._lock:
            self._replied = True
        try:
            extra = self.latest_args[1:] if self._needs_additional_inputs else []
            out = self.fn(utterance, *extra)
            reply = _Reply(out, epoch, self._reply_loop)
        except BaseException:
            with self._lock:
                if self._epoch == epoch:
                    self._active = False
            raise
        with self._lock:
            self._reply = reply
        return self._next(reply)

    def _next(self, reply: _Reply) -> Any:
        try:
            item = reply.next()
        except BaseException:
            self._finish(reply)
            raise
        if item is _Reply._DONE:
            self._finish(reply)
            return None
        with self._lock:
            interrupted = reply.epoch != self._epoch
        if interrupted:  # the speaker started talking while this item was being made
            self._finish(reply)
            return None
        if self.phone_mode:
            self._feed_back(item)
        return item

    def _feed_back(self, item: Any) -> None:
        """In phone mode, the AdditionalOutputs of a reply become the inputs of the next turn:
        a phone has no page to send them back, and a chatbot's history would start over
        every turn. fastrtc sets them the same way (0.0.34 then resets its arguments when
        the next turn starts, so its fn sees only the audio); here the next turn gets them.
        Inputs the input route sets still replace them."""
        outputs = item[-1] if isinstance(item, tuple) and item else item
        if isinstance(outputs, AdditionalOutputs):
            self.latest_args = [WEBRTC_VALUE, *outputs.args]

    def _finish(self, reply: _Reply) -> None:
        with self._lock:
            if self._reply is reply:
                self._reply = None
            if reply.epoch == self._epoch:
                self._active = False
        reply.close()
        if self.snapshot is not None:
            self.save_state()  # a reply is what changes a conversation

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        return f"{type(self).__name__}({name})"


__all__ = ["AlgoOptions", "ReplyOnPause", "SileroVadOptions", "SampleBuffer", "VAD_HOP_S"]
