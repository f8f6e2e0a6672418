"""The Gradio streaming-inputs guide's "Keeping track of past inputs or outputs" on rtcpool.

The guide streams the microphone to ``transcribe_handler(current_audio, state,
transcript)`` every second (``stream_every=1``) and keeps the last three chunks in a
``gr.State``. Adapted to rtcpool:

* the microphone is a ``mode="send"`` audio WebRTC component, and a ``StreamHandler``
  cuts its audio into 1 s chunks and calls the guide's ``transcribe_handler`` on each;
* a stream's only output is its WebRTC component, so the new State and Textbox values
  are yielded as ``AdditionalOutputs`` and ``on_additional_outputs`` writes them;
* the State holds the last three chunks' *texts* (what the browser round-trips as the
  State's value), and ``transcribe`` decodes the chunk with PocketSphinx (no model
  download; words cut at a chunk boundary come out rough). A chunk with no words adds "".

Run:  python examples/state_transcription/app.py   (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)
"""

import os
from math import gcd
from queue import Empty, Queue

import gradio as gr
import numpy as np
from scipy.signal import resample_poly

from gradio_ext import AdditionalOutputs, StreamHandler, WebRTC

STREAM_EVERY_S = 1.0
HISTORY_CHUNKS = 3
ASR_SAMPLE_RATE = 16_000
DEFAULT_PORT = 7860

_decoder = None


def decoder():
    """One PocketSphinx decoder per worker process, made on first use."""
    global _decoder
    if _decoder is None:
        import pocketsphinx

        _decoder = pocketsphinx.Decoder(logfn=os.devnull)
    return _decoder


def transcribe(current_audio: tuple[int, np.ndarray], history: list[str]) -> str:
    """Words in the chunk, with a leading space ("" when none)."""
    rate, array = current_audio
    x = array.reshape(-1).astype(np.float32)
    if rate != ASR_SAMPLE_RATE:
        g = gcd(rate, ASR_SAMPLE_RATE)
        x = resample_poly(x, ASR_SAMPLE_RATE // g, rate // g)
    d = decoder()
    d.start_utt()
    d.process_raw(np.clip(x, -32768, 32767).astype(np.int16).tobytes(), full_utt=True)
    d.end_utt()
    hyp = d.hyp()
    text = hyp.hypstr.strip() if hyp is not None else ""
    return f" {text}" if text else ""


def transcribe_handler(current_audio, state, transcript):
    next_text = transcribe(current_audio, history=state)
    state.append(next_text)
    state = state[-HISTORY_CHUNKS:]
    return state, transcript + next_text


class ChunkedTranscriber(StreamHandler):
    """Collects ``STREAM_EVERY_S`` of audio, then runs ``transcribe_handler`` on it."""

    def __init__(self) -> None:
        super().__init__(input_sample_rate=ASR_SAMPLE_RATE)
        self.frames: list[np.ndarray] = []
        self.outputs: Queue = Queue()
        self.state: list[str] = []
        self.transcript = ""

    def copy(self) -> "ChunkedTranscriber":
        return ChunkedTranscriber()

    def receive(self, frame: tuple[int, np.ndarray]) -> None:
        rate, array = frame
        self.frames.append(array.reshape(1, -1))
        if sum(f.shape[1] for f in self.frames) < rate * STREAM_EVERY_S:
            return
        chunk = (rate, np.concatenate(self.frames, axis=1))
        self.frames = []
        self.state, self.transcript = transcribe_handler(chunk, self.state, self.transcript)
        self.outputs.put(AdditionalOutputs(list(self.state), self.transcript))

    def emit(self):
        try:
            return self.outputs.get(timeout=0.1)
        except Empty:
            return None


with gr.Blocks() as demo:
    with gr.Row():
        with gr.Column():
            mic = WebRTC(label="Microphone", mode="send", modality="audio")
            state = gr.State(value=[])
        with gr.Column():
            transcript = gr.Textbox(label="Transcript")
    mic.stream(
        ChunkedTranscriber(),
        [mic, state, transcript],
        [mic],
        time_limit=10,
        stream_every=STREAM_EVERY_S,
    )
    mic.on_additional_outputs(
        lambda s, t: (s, t), outputs=[state, transcript], queue=False, show_progress="hidden"
    )

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)),
    )
