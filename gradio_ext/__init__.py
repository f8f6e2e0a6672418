"""rtcpool for Gradio apps: ``from gradio_ext import WebRTC, ReplyOnPause, ...``.

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
from workers.reply_on_pause import ReplyOnPause
from workers.reply_on_stopwords import ReplyOnStopWords
from workers.stopwords import StopWordOptions
from workers.vad import AlgoOptions, PauseDetectionModel, SileroVADModel, SileroVadOptions

from . import serving
from .webrtc import WebRTC

serving.install()

__all__ = [
    "AdditionalOutputs",
    "AlgoOptions",
    "AsyncStreamHandler",
    "AudioVideoStreamHandler",
    "CloseStream",
    "PauseDetectionModel",
    "ReplyOnPause",
    "ReplyOnStopWords",
    "SileroVADModel",
    "SileroVadOptions",
    "StopWordOptions",
    "StreamHandler",
    "WebRTC",
]
