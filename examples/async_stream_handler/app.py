"""gradio_webrtc's "Async Stream Handlers" guide snippet on rtcpool, without Gemini.

The seed's ``GeminiHandler`` streams the microphone to Google's live API and plays what it
answers. This project makes no network calls, so ``connect`` talks to ``FakeLiveSession``,
a local async stand-in for the live API with the same shape: it takes base64 PCM chunks
(16 kHz) from an async generator and yields raw 24 kHz PCM bytes back (the caller's own
voice, resampled, half a second late, like a parrot). Everything else is the seed's,
``emit`` verbatim: the handler's queues, ``wait_for_args`` before the generator starts,
``latest_args[1]`` as the "API key" from the Textbox, ``shutdown``, and the Textbox's
``submit`` revealing the stream. ``async_aggregate_bytes_to_16bit`` (not part of rtcpool's
API) is defined here. Two arguments of the seed's WebRTC are dropped because they reach the
internet: ``rtc_configuration=get_twilio_turn_credentials()`` (a call to Twilio; ICE servers
come from the deployment config instead) and ``icon=`` a gstatic.com URL (the browser would
fetch it).

Run:  python examples/async_stream_handler/app.py   (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)
"""

import asyncio
import base64
import os
from collections.abc import AsyncIterator

import gradio as gr
import numpy as np

from gradio_ext import AsyncStreamHandler, WebRTC

DEFAULT_PORT = 7860
PARROT_DELAY_S = 0.5  # the fake service answers this late


class FakeLiveSession:
    """A local stand-in for a live speech API: 16 kHz PCM in, 24 kHz PCM out."""

    IN_RATE, OUT_RATE = 16_000, 24_000

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key

    async def start_stream(
        self, stream: AsyncIterator[str], mime_type: str
    ) -> AsyncIterator[bytes]:
        assert mime_type == "audio/pcm"
        async for message in stream:
            pcm = np.frombuffer(base64.b64decode(message), np.int16).astype(np.float32)
            n_out = pcm.size * self.OUT_RATE // self.IN_RATE
            up = np.interp(np.linspace(0, pcm.size - 1, n_out), np.arange(pcm.size), pcm)
            await asyncio.sleep(0)  # a real service answers over the network
            yield up.astype(np.int16).tobytes()


async def async_aggregate_bytes_to_16bit(chunks: AsyncIterator[bytes]) -> AsyncIterator[np.ndarray]:
    """Raw little-endian PCM bytes -> int16 arrays of shape (1, N), keeping odd leftovers."""
    leftover = b""
    async for chunk in chunks:
        data = leftover + chunk
        whole = len(data) - len(data) % 2
        leftover = data[whole:]
        if whole:
            yield np.frombuffer(data[:whole], dtype="<i2").reshape(1, -1)


class ParrotHandler(AsyncStreamHandler):
    def __init__(
        self, expected_layout="mono", output_sample_rate=24000, output_frame_size=480
    ) -> None:
        super().__init__(
            expected_layout,
            output_sample_rate,
            output_frame_size,
            input_sample_rate=16000,
        )
        self.input_queue = asyncio.Queue()
        self.output_queue = asyncio.Queue()
        self.quit = asyncio.Event()

    def copy(self) -> "ParrotHandler":
        return ParrotHandler(
            expected_layout=self.expected_layout,
            output_sample_rate=self.output_sample_rate,
            output_frame_size=self.output_frame_size,
        )

    async def stream(self):
        while not self.quit.is_set():
            audio = await self.input_queue.get()
            yield audio

    async def connect(self, api_key: str):
        session = FakeLiveSession(api_key)
        await asyncio.sleep(PARROT_DELAY_S)
        async for audio in session.start_stream(stream=self.stream(), mime_type="audio/pcm"):
            if audio:
                yield audio

    async def receive(self, frame: tuple[int, np.ndarray]) -> None:
        _, array = frame
        array = array.squeeze()
        audio_message = base64.b64encode(array.tobytes()).decode("UTF-8")
        self.input_queue.put_nowait(audio_message)

    async def generator(self):
        async for audio_response in async_aggregate_bytes_to_16bit(
            self.connect(api_key=self.latest_args[1])
        ):
            self.output_queue.put_nowait(audio_response)

    async def emit(self):
        if not self.args_set.is_set():
            await self.wait_for_args()
            asyncio.create_task(self.generator())

        array = await self.output_queue.get()
        return (self.output_sample_rate, array)

    def shutdown(self) -> None:
        self.quit.set()


with gr.Blocks() as demo:
    gr.HTML(
        """
    <div style='text-align: center'>
        <h1>Async Voice Parrot</h1>
        <p>An AsyncStreamHandler talking to a local async "live API" that repeats you</p>
        <p>Enter any key and press Enter to show the stream</p>
    </div>
    """
    )
    with gr.Row() as api_key_row:
        api_key = gr.Textbox(
            label="API Key",
            placeholder="Enter your API Key",
            value=os.getenv("PARROT_API_KEY", ""),
            type="password",
        )
    with gr.Row(visible=False) as row:
        webrtc = WebRTC(
            label="Audio",
            modality="audio",
            mode="send-receive",
            pulse_color="rgb(35, 157, 225)",
            icon_button_color="rgb(35, 157, 225)",
        )

    webrtc.stream(
        ParrotHandler(),
        inputs=[webrtc, api_key],
        outputs=[webrtc],
        time_limit=90,
        concurrency_limit=2,
    )
    api_key.submit(
        lambda: (gr.update(visible=False), gr.update(visible=True)),
        None,
        [api_key_row, row],
    )

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)),
    )
