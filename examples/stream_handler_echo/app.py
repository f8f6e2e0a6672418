"""gradio_webrtc's "Stream Handler" guide snippet on rtcpool: the user's audio, echoed back.

Exactly the seed's ``EchoHandler``, including its blocking ``emit`` (``queue.get()``): the
worker runs ``receive`` and ``emit`` on threads of their own, so a blocking emit only waits
for the next frame. The handler holds a ``queue.Queue``, which does not pickle, so each
worker recovers it by re-importing this file (workers/process/loader.py).

Run:  python examples/stream_handler_echo/app.py   (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)
"""

import os
from queue import Queue

import gradio as gr
import numpy as np

from gradio_ext import StreamHandler, WebRTC

DEFAULT_PORT = 7860


class EchoHandler(StreamHandler):
    def __init__(self) -> None:
        super().__init__()
        self.queue = Queue()

    def receive(self, frame: tuple[int, np.ndarray]) -> None:
        self.queue.put(frame)

    def emit(self) -> None:
        return self.queue.get()

    def copy(self) -> StreamHandler:
        return EchoHandler()


with gr.Blocks() as demo:
    with gr.Column():
        with gr.Group():
            audio = WebRTC(
                mode="send-receive",
                modality="audio",
            )
        audio.stream(fn=EchoHandler(), inputs=[audio], outputs=[audio], time_limit=15)

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)),
    )
