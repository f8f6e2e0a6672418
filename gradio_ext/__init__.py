"""rtcpool for Gradio apps: ``from gradio_ext import WebRTC, ReplyOnPause, ...``.

The names and meaning are gradio_webrtc's; each stream's handler runs in a worker process.
Importing this package hooks Gradio's app creation and launch (see gradio_ext/serving.py).
"""

from runtime.turn import get_hf_turn_credentials, get_turn_credentials, get_twilio_turn_credentials
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
from workers.utils import (
    aggregate_bytes_to_16bit,
    async_aggregate_bytes_to_16bit,
    audio_to_bytes,
    audio_to_file,
    audio_to_float32,
    audio_to_int16,
)
from workers.vad import AlgoOptions, PauseDetectionModel, SileroVADModel, SileroVadOptions

from . import serving
from .webrtc import WebRTC

serving.install()

__all__ = [
    "aggregate_bytes_to_16bit",
    "async_aggregate_bytes_to_16bit",
    "audio_to_bytes",
    "audio_to_file",
    "audio_to_float32",
    "audio_to_int16",
    "get_hf_turn_credentials",
    "get_turn_credentials",
    "get_twilio_turn_credentials",
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
