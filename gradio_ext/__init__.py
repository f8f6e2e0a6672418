"""rtcpool for Gradio apps: ``from gradio_ext import WebRTC, StreamHandler, ...``.

The names and meaning are gradio_webrtc's; each stream's handler runs in a worker process.
Importing this package hooks Gradio's app creation and launch (see gradio_ext/serving.py).
"""

from workers.handlers import (
    AdditionalOutputs,
    AsyncStreamHandler,
    AudioVideoStreamHandler,
    CloseStream,
    StreamHandler,
)

from . import serving
from .webrtc import WebRTC

serving.install()

__all__ = [
    "AdditionalOutputs",
    "AsyncStreamHandler",
    "AudioVideoStreamHandler",
    "CloseStream",
    "StreamHandler",
    "WebRTC",
]
