"""The Gradio streaming-inputs guide's "Keeping track of past inputs or outputs" on rtcpool.

The guide's snippet, with ``gr.Audio(sources="microphone")`` replaced by a ``mode="send"``
audio WebRTC component and nothing else changed in the stream: ``stream_every=1`` hands
``transcribe_handler`` one second of microphone audio per call, and its return value maps
onto ``[state, transcript]``. Both are inputs too: rtcpool feeds the returned values to the
next call inside the worker (so the State keeps the last three chunks without a round trip
through the browser), and the page shows the transcript as it grows.

``transcribe`` is the guide's placeholder, filled in with PocketSphinx (no model download;
it decodes each chunk on its own, so a word cut at a chunk boundary comes out rough).

Run:  python examples/state_transcription/app.py   (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)
"""

import os
from math import gcd

import gradio as gr
import numpy as np
from scipy.signal import resample_poly

from gradio_ext import WebRTC

ASR_SAMPLE_RATE = 16_000  # Hz: what PocketSphinx's bundled English model takes
DEFAULT_PORT = 7860

_decoder = None


def decoder():
    """One PocketSphinx decoder per worker process, made on first use."""
    global _decoder
    if _decoder is None:
        import pocketsphinx

        _decoder = pocketsphinx.Decoder(logfn=os.devnull)
    return _decoder


def transcribe(current_audio: tuple[int, np.ndarray], history: list) -> str:
    """The words in the chunk, with a leading space ("" when none). ``history`` (the last
    chunks, kept in the State) is there for a model that can use the context; this one
    decodes the chunk alone."""
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
    state.append(current_audio)
    state = state[-3:]
    return state, transcript + next_text


with gr.Blocks() as demo:
    with gr.Row():
        with gr.Column():
            mic = WebRTC(mode="send", modality="audio")
            state = gr.State(value=[])
        with gr.Column():
            transcript = gr.Textbox(label="Transcript")
    mic.stream(
        transcribe_handler,
        [mic, state, transcript],
        [state, transcript],
        time_limit=10,
        stream_every=1,
    )

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)),
    )
