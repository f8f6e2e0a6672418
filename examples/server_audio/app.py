"""gradio_webrtc's audio "Server-To-Client Only" snippet on rtcpool: the server plays a file.

As in the seed, ``generation`` reads ``audio_file.wav`` with pydub and yields it
``num_steps`` times. The seed ships no WAV, so this app writes one at start-up (a 1 s
three-note chime, made with numpy and ``wave``) into a temporary directory.

The seed starts the stream with ``trigger=button.click``; the component's own button
starts it too.

Run:  python examples/server_audio/app.py   (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)
"""

import os
import tempfile
import wave
from pathlib import Path

import gradio as gr
import numpy as np
from pydub import AudioSegment

from gradio_ext import WebRTC

SAMPLE_RATE = 24_000
NOTES_HZ = (523.25, 659.25, 783.99)  # C5 E5 G5, one third of a second each
NOTE_S = 1 / 3
LEVEL = 0.3  # peak amplitude, full scale = 1
DEFAULT_PORT = 7860
AUDIO_FILE = Path(tempfile.gettempdir()) / "rtcpool-examples" / "audio_file.wav"


def write_chime(path: Path) -> Path:
    """A mono 16-bit WAV of three notes, each with a short fade in and out."""
    t = np.arange(int(SAMPLE_RATE * NOTE_S)) / SAMPLE_RATE
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.02)
    notes = [LEVEL * fade * np.sin(2 * np.pi * hz * t) for hz in NOTES_HZ]
    pcm = (np.concatenate(notes) * 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
    os.replace(tmp, path)  # atomic: a worker re-importing this file never reads half a WAV
    return path


if not AUDIO_FILE.exists():
    write_chime(AUDIO_FILE)


def generation(num_steps):
    for _ in range(num_steps):
        segment = AudioSegment.from_file(str(AUDIO_FILE))
        array = np.array(segment.get_array_of_samples()).reshape(1, -1)
        yield (segment.frame_rate, array)


with gr.Blocks() as demo:
    audio = WebRTC(label="Stream", mode="receive", modality="audio")
    num_steps = gr.Slider(label="Number of Steps", minimum=1, maximum=10, step=1, value=5)
    button = gr.Button("Generate")
    audio.stream(fn=generation, inputs=[num_steps], outputs=[audio], trigger=button.click)

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)),
    )
