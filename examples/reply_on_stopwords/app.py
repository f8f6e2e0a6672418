"""gradio_webrtc's "Reply On Stopwords" guide snippet on rtcpool: say "computer", then speak.

The seed's fragment calls ``generate`` with a chat history and a code box and never
defines them; here ``generate`` echoes back what was said after the stop word (from the
stop word's end to the pause), and logs each turn in a Chatbot through AdditionalOutputs.
The stream is ``send-receive`` so the reply can be heard (the seed's ``mode="send"``
would have nowhere to play it). Stop words are spotted offline with PocketSphinx.

Run:  python examples/reply_on_stopwords/app.py   (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)
"""

import os

import gradio as gr
import numpy as np

from gradio_ext import AdditionalOutputs, ReplyOnStopWords, WebRTC

CHUNK_S = 0.5
DEFAULT_PORT = 7860


def generate(audio: tuple[int, np.ndarray], history: list[dict]):
    """This function must yield audio frames"""
    sampling_rate, array = audio
    seconds = array.shape[-1] / sampling_rate
    history = [
        *history,
        {"role": "assistant", "content": f"heard {seconds:.1f} s after 'computer'"},
    ]
    yield AdditionalOutputs(history)
    step = int(sampling_rate * CHUNK_S)
    for start in range(0, array.shape[1], step):
        yield (sampling_rate, array[:, start : start + step], "mono")


with gr.Blocks() as demo:
    gr.HTML(
        """
    <h1 style='text-align: center'>
    Chat (Powered by WebRTC ⚡️) — say "computer" first
    </h1>
    """
    )
    with gr.Column():
        with gr.Group():
            webrtc = WebRTC(
                mode="send-receive",
                modality="audio",
            )
        history = gr.Chatbot(label="turns")
        webrtc.stream(
            ReplyOnStopWords(generate, input_sample_rate=16000, stop_words=["computer"]),
            inputs=[webrtc, history],
            outputs=[webrtc],
            time_limit=90,
            concurrency_limit=10,
        )
        webrtc.on_additional_outputs(
            lambda h: h, outputs=[history], queue=False, show_progress="hidden"
        )

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)),
    )
