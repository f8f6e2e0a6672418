"""gradio_webrtc's "Additional Outputs" guide snippet on rtcpool: speech in, transcript out.

The seed talks to Qwen2-Audio; this project downloads no models, so ``transcribe`` uses
PocketSphinx (PyPI ``pocketsphinx``, which ships a US English acoustic and language model)
with its default decoder. It is a small, old recogniser: expect rough transcripts. When it
hears no words, the assistant message says how long the utterance was instead.

Each pause ends an utterance; the handler yields ``AdditionalOutputs(transformers_convo,
gradio_convo)`` and ``on_additional_outputs`` puts them into the State and the Chatbot.
Gradio 6 removed ``gr.Chatbot(type=...)`` (messages is the only format), so that argument
is dropped; nothing else changes from the seed.

Run:  python examples/transcript_outputs/app.py   (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)
"""

import os
from math import gcd

import gradio as gr
import numpy as np
from scipy.signal import resample_poly

from gradio_ext import AdditionalOutputs, ReplyOnPause, WebRTC

ASR_SAMPLE_RATE = 16_000  # PocketSphinx's default acoustic model is 16 kHz
DEFAULT_PORT = 7860


_decoder = None


def decoder():
    """One PocketSphinx decoder per worker process (~0.5 s to load), made on first use.

    A plain global rather than ``functools.cache``: the handler goes to its worker by
    cloudpickle, and a cached function of ``__main__`` pickles by reference, which the
    worker cannot resolve.
    """
    global _decoder
    if _decoder is None:
        import pocketsphinx

        _decoder = pocketsphinx.Decoder(logfn=os.devnull)
    return _decoder


def recognise(sample_rate: int, array: np.ndarray) -> str:
    """Words PocketSphinx hears in mono int16 audio; "" when it hears none."""
    x = array.reshape(-1).astype(np.float32)
    if sample_rate != ASR_SAMPLE_RATE:
        g = gcd(sample_rate, ASR_SAMPLE_RATE)
        x = resample_poly(x, ASR_SAMPLE_RATE // g, sample_rate // g)
    pcm = np.clip(x, -32768, 32767).astype(np.int16).tobytes()
    d = decoder()
    d.start_utt()
    d.process_raw(pcm, full_utt=True)
    d.end_utt()
    hyp = d.hyp()
    return hyp.hypstr.strip() if hyp is not None else ""


def transcribe(
    audio: tuple[int, np.ndarray], transformers_convo: list[dict], gradio_convo: list[dict]
):
    sample_rate, array = audio
    response = recognise(sample_rate, array)
    if not response:
        response = f"(no words recognised in {array.shape[-1] / sample_rate:.1f} s of speech)"
    transformers_convo.append({"role": "assistant", "content": response})
    gradio_convo.append({"role": "assistant", "content": response})
    yield AdditionalOutputs(transformers_convo, gradio_convo)


with gr.Blocks() as demo:
    gr.HTML(
        """
    <h1 style='text-align: center'>
    Talk to PocketSphinx (Powered by WebRTC ⚡️)
    </h1>
    """
    )
    transformers_convo = gr.State(value=[])
    with gr.Row():
        with gr.Column():
            audio = WebRTC(
                label="Stream",
                mode="send",
                modality="audio",
            )
        with gr.Column():
            transcript = gr.Chatbot(label="transcript")
    audio.stream(
        ReplyOnPause(transcribe),
        inputs=[audio, transformers_convo, transcript],
        outputs=[audio],
        time_limit=90,
    )
    audio.on_additional_outputs(
        lambda s, a: (s, a),
        outputs=[transformers_convo, transcript],
        queue=False,
        show_progress="hidden",
    )

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)),
    )
