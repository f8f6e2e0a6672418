"""``ReplyOnStopWords``: wait for a stop word ("computer"), then reply to what follows.

Two phases per turn. Listening: every frame's 16 kHz audio goes to the keyword spotter
(workers/voice/stopwords.py); the VAD does not run. When a stop word is heard, the client gets
``{"type": "stopword", "data": <phrase>}``, a reply in progress is interrupted (if
``can_interrupt``), and the handler arms: from the sample where the phrase ended it works
exactly like ReplyOnPause, so the reply function gets the utterance after the stop word
up to the pause. Then it listens for the stop word again. An armed handler that hears no
speech for ``STOPWORD_ARMED_TIMEOUT_S`` goes back to listening, so a stray "computer" does
not turn a later, unrelated sentence into a command.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from workers.handlers import DEFAULT_OUTPUT_FRAME_SIZE, DEFAULT_OUTPUT_SAMPLE_RATE, Layout
from workers.voice.reply_on_pause import AudioTuple, ReplyOnPause, _Stream
from workers.voice.stopwords import StopWordDetector, StopWordOptions, check_stop_words
from workers.voice.vad import VAD_SAMPLE_RATE, AlgoOptions, PauseDetectionModel, SileroVadOptions

REPLY_ON_STOPWORDS_INPUT_SAMPLE_RATE = 48_000  # Hz, gradio_webrtc's and fastrtc's default
STOPWORD_ARMED_TIMEOUT_S = 8.0  # s without speech after a stop word before listening again
STOPWORD_MESSAGE_TYPE = "stopword"


class ReplyOnStopWords(ReplyOnPause):
    """ReplyOnPause gated by stop words: ``stop_words`` are words or short phrases from the
    English dictionary, e.g. ``["computer"]`` or ``["ok computer", "hello iris"]``."""

    def __init__(
        self,
        fn: Callable[..., Any],
        stop_words: Sequence[str],
        algo_options: AlgoOptions | None = None,
        model_options: SileroVadOptions | None = None,
        expected_layout: Layout = "mono",
        output_sample_rate: int = DEFAULT_OUTPUT_SAMPLE_RATE,
        output_frame_size: int = DEFAULT_OUTPUT_FRAME_SIZE,
        input_sample_rate: int = REPLY_ON_STOPWORDS_INPUT_SAMPLE_RATE,
        *,
        can_interrupt: bool = True,
        model: PauseDetectionModel | None = None,
        startup_fn: Callable[..., Any] | None = None,
        stopword_options: StopWordOptions | None = None,
    ) -> None:
        """Positional parameters in gradio_webrtc's order; the rest keyword-only (see
        ReplyOnPause)."""
        # validated here, in the app's process, so a typo fails at start-up, not per session
        self.stop_words = check_stop_words(stop_words)
        self.stopword_options = stopword_options or StopWordOptions()
        super().__init__(
            fn,
            algo_options=algo_options,
            model_options=model_options,
            can_interrupt=can_interrupt,
            expected_layout=expected_layout,
            output_sample_rate=output_sample_rate,
            output_frame_size=output_frame_size,
            input_sample_rate=input_sample_rate,
            model=model,
            startup_fn=startup_fn,
        )

    _RUNTIME = (*ReplyOnPause._RUNTIME, "_detector", "_armed", "_armed_at16")

    def _init_runtime(self) -> None:
        super()._init_runtime()
        self._detector: StopWordDetector | None = None
        self._armed = False
        self._armed_at16 = 0

    def copy(self) -> ReplyOnStopWords:
        return ReplyOnStopWords(
            self.fn,
            self.stop_words,
            algo_options=self.algo_options,
            model_options=self.model_options,
            can_interrupt=self.can_interrupt,
            expected_layout=self.expected_layout,
            output_sample_rate=self.output_sample_rate,
            output_frame_size=self.output_frame_size,
            input_sample_rate=self.input_sample_rate,
            model=self.model,
            startup_fn=self.startup_fn,
            stopword_options=self.stopword_options,
        )

    def warmup(self) -> None:
        super().warmup()
        # the worker calls start_up() on its emit thread while frames may already arrive
        with self._lock:
            self._get_detector().load()

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._armed = False
            if self._detector is not None:
                self._detector.close()
                self._detector = None

    def shutdown(self) -> None:
        super().shutdown()
        with self._lock:
            if self._detector is not None:
                self._detector.close()
                self._detector = None

    def _get_detector(self) -> StopWordDetector:
        if self._detector is None:
            self._detector = StopWordDetector(self.stop_words, self.stopword_options)
        return self._detector

    # --- hooks into ReplyOnPause's listening loop (lock held) ----------------------------------

    def _on_new_stream(self, st: _Stream) -> None:
        self._armed = False

    def _listening_for_turns(self) -> bool:
        return self._armed

    def _on_audio16(self, st: _Stream, x16: np.ndarray, pos16: int, actions: list[Callable[[], None]]) -> None:
        if self._armed or x16.size == 0:
            return
        hit = self._get_detector().process(x16, pos16)
        if hit is None:
            return
        phrase = hit.phrase
        actions.append(lambda: self.send_message_sync(phrase, STOPWORD_MESSAGE_TYPE))
        if self.can_interrupt and (self._active or self._replied):
            self._interrupt(actions)
        self._replied = False
        # listen for the command from where the phrase ended; the audio since is replayed
        self._armed = True
        self._armed_at16 = hit.end_sample
        st.floor16 = max(hit.end_sample, st.audio16.start)
        st.window_end16 = st.floor16 + self._chunk_samples  # the first whole window after it
        st.talking = False

    def _on_chunk(
        self, st: _Stream, speech_s: float, segments: list[dict], a: int, b: int, actions: list[Callable[[], None]]
    ) -> None:
        super()._on_chunk(st, speech_s, segments, a, b, actions)
        if self._armed and not st.talking and b - self._armed_at16 > STOPWORD_ARMED_TIMEOUT_S * VAD_SAMPLE_RATE:
            self._disarm(st)

    def _on_speech_start(self, actions: list[Callable[[], None]]) -> None:
        # the stop word already interrupted any reply; the command itself must not
        self._replied = False

    def _on_utterance(self, utterance: AudioTuple, actions: list[Callable[[], None]]) -> None:
        super()._on_utterance(utterance, actions)
        st = self._stream
        if st is not None:
            self._disarm(st)

    def _disarm(self, st: _Stream) -> None:
        self._armed = False
        st.talking = False


__all__ = ["ReplyOnStopWords", "StopWordOptions"]
