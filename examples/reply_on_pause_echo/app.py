"""gradio_webrtc's "Reply on Pause" guide snippet on rtcpool: talk, pause, hear yourself.

The seed's ``response`` generator gets the whole utterance once the user pauses and yields
audio back; here it yields the utterance itself, in 0.5 s chunks, as ``(rate, array, "mono")``.

Run:  python examples/reply_on_pause_echo/app.py   (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)
"""

import os

import gradio as gr
import numpy as np

from gradio_ext import ReplyOnPause, WebRTC

CHUNK_S = 0.5  # the reply is yielded in chunks this long, as a TTS model would
DEFAULT_PORT = 7860


def response(audio: tuple[int, np.ndarray]):
    """This function must yield audio frames"""
    sampling_rate, array = audio  # array: int16, shape (1, num_samples)
    step = int(sampling_rate * CHUNK_S)
    for start in range(0, array.shape[1], step):
        yield (sampling_rate, array[:, start : start + step], "mono")


with gr.Blocks() as demo:
    gr.HTML(
        """
    <h1 style='text-align: center'>
    Chat (Powered by WebRTC ⚡️)
    </h1>
    """
    )
    with gr.Column():
        with gr.Group():
            audio = WebRTC(
                mode="send-receive",
                modality="audio",
            )
        audio.stream(fn=ReplyOnPause(response), inputs=[audio], outputs=[audio], time_limit=60)

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)),
    )
