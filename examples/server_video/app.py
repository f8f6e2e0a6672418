"""gradio_webrtc's video "Server-to-Client Only" snippet on rtcpool: the server plays a video.

The seed streams an MP4 from a URL with ``cv2.VideoCapture``; this project makes no
downloads, so the app writes an 8 s test clip at start-up (a red square circling over a
colour-bar background, with a frame counter; MPEG-4 via ``cv2.VideoWriter``) into a
temporary directory and plays that. ``generation`` is the seed's, with one change besides
the file: OpenCV decodes BGR and rtcpool streams RGB (the handler contract, as the seed docs
say for frames), so each frame is converted on the way out. At the end of the file
``cap.read()`` gives ``(False, None)`` and, as in the seed, that ``None`` is yielded too:
a yielded ``None`` is no frame, and the stream ends with the generator.

The seed starts the stream with ``trigger=button.click``; the component's own button
starts it too.

Run:  python examples/server_video/app.py   (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)
"""

import os
import tempfile
from pathlib import Path

import cv2
import gradio as gr
import numpy as np

from gradio_ext import WebRTC

WIDTH, HEIGHT, FPS, SECONDS = 640, 480, 30, 8
SQUARE_PX = 120
SQUARE_RGB = (255, 0, 0)  # pure red: the browser test checks colour order with it
BARS_RGB = [(255, 255, 255), (255, 255, 0), (0, 255, 255), (0, 255, 0), (255, 0, 255), (0, 0, 255)]
DEFAULT_PORT = 7860
VIDEO_FILE = Path(tempfile.gettempdir()) / "rtcpool-examples" / "test_clip.mp4"


def clip_frame(i: int) -> np.ndarray:
    """Frame ``i`` of the test clip, RGB: dimmed colour bars, a red square on a circle."""
    frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    bar = WIDTH // len(BARS_RGB)
    for k, rgb in enumerate(BARS_RGB):
        frame[:, k * bar : (k + 1) * bar] = np.array(rgb, np.uint8) // 3
    angle = 2 * np.pi * i / (FPS * SECONDS)
    cx = int(WIDTH / 2 + (WIDTH / 2 - SQUARE_PX) * np.cos(angle))
    cy = int(HEIGHT / 2 + (HEIGHT / 2 - SQUARE_PX) * np.sin(angle))
    half = SQUARE_PX // 2
    frame[cy - half : cy + half, cx - half : cx + half] = SQUARE_RGB
    cv2.putText(frame, f"frame {i}", (20, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
    return frame


def write_clip(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp{path.suffix}")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    for i in range(FPS * SECONDS):
        writer.write(cv2.cvtColor(clip_frame(i), cv2.COLOR_RGB2BGR))  # OpenCV writes BGR
    writer.release()
    os.replace(tmp, path)  # atomic: a worker re-importing this file never reads half a clip
    return path


if not VIDEO_FILE.exists():
    write_clip(VIDEO_FILE)


def generation():
    cap = cv2.VideoCapture(str(VIDEO_FILE))
    iterating = True
    while iterating:
        iterating, frame = cap.read()
        yield frame if frame is None else cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


with gr.Blocks() as demo:
    output_video = WebRTC(label="Video Stream", mode="receive", modality="video")
    button = gr.Button("Start", variant="primary")
    output_video.stream(fn=generation, inputs=None, outputs=[output_video], trigger=button.click)

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)),
    )
