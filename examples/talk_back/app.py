"""A voice agent with the built-in speech models: speak, pause, hear what it understood.

fastrtc's "talk to an LLM" shape with the LLM left out: ``get_stt_model()`` (PocketSphinx,
in its wheel) turns each utterance into text, ``get_tts_model()`` (espeak-ng, in the
``espeakng-loader`` wheel) speaks the answer back one sentence at a time, and the transcript
fills a Chatbot. Nothing is downloaded at run time. Put your own model between ``stt`` and
``stream_tts_sync`` to make it an assistant.

The same handler answers the browser (the WebRTC component below), fastrtc's WebSocket
clients at ``/websocket/offer`` and, with a ``telephone:`` section in the config, Twilio
phone calls at ``/telephone/incoming``: each session in a worker process of its own.

Run:  python examples/talk_back/app.py   (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)
"""

import os

import gradio as gr
import numpy as np

from gradio_ext import AdditionalOutputs, ReplyOnPause, WebRTC, get_stt_model, get_tts_model

DEFAULT_PORT = 7860
NOT_HEARD = "Sorry, I did not catch that."

# at module level, as the seed's models are: each worker re-imports this file and loads its own
stt_model = get_stt_model()
tts_model = get_tts_model()


def answer(text: str) -> str:
    """What the agent says to ``text``: replace with a call to your model."""
    return f"I heard: {text}." if text else NOT_HEARD


def talk_back(audio: tuple[int, np.ndarray], chat: list[dict]):
    text = stt_model.stt(audio)
    reply = answer(text)
    chat = [*chat, {"role": "user", "content": text or "(nothing recognised)"}, {"role": "assistant", "content": reply}]
    yield AdditionalOutputs(chat)
    yield from tts_model.stream_tts_sync(reply)


with gr.Blocks() as demo:
    gr.HTML("<h1 style='text-align: center'>Talk back (Powered by WebRTC ⚡️)</h1>")
    with gr.Row():
        with gr.Column():
            audio = WebRTC(label="Talk", mode="send-receive", modality="audio")
        with gr.Column():
            chat = gr.Chatbot(label="transcript")
    audio.stream(ReplyOnPause(talk_back), inputs=[audio, chat], outputs=[audio], time_limit=90)
    audio.on_additional_outputs(lambda c: c, outputs=[chat], queue=False, show_progress="hidden")

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)),
    )
