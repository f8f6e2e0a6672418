"""rtcpool for Gradio apps: ``from gradio_ext import WebRTC, ReplyOnPause, ...``.

The names and meaning are gradio_webrtc's; each stream's handler runs in a worker process.
Importing this package hooks Gradio's app creation and launch (see gradio_ext/serving.py).
"""

from runtime.guard.turn import (
    get_hf_turn_credentials,
    get_turn_credentials,
    get_twilio_turn_credentials,
)
from workers.context import Context, get_current_context
from workers.handlers import (
    AdditionalOutputs,
    AsyncAudioVideoStreamHandler,
    AsyncStreamHandler,
    AudioVideoStreamHandler,
    CloseStream,
    StreamHandler,
    VideoStreamHandler,
)
from workers.utils import (
    aggregate_bytes_to_16bit,
    async_aggregate_bytes_to_16bit,
    audio_to_bytes,
    audio_to_file,
    audio_to_float32,
    audio_to_int16,
)
from workers.voice.reply_on_pause import ReplyOnPause
from workers.voice.reply_on_stopwords import ReplyOnStopWords
from workers.voice.speech_models import (
    EspeakTTSOptions,
    get_stt_model,
    get_tts_model,
    stt_for_chunks,
)
from workers.voice.stopwords import StopWordOptions
from workers.voice.vad import AlgoOptions, PauseDetectionModel, SileroVADModel, SileroVadOptions

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
    "get_current_context",
    "get_stt_model",
    "get_tts_model",
    "get_hf_turn_credentials",
    "get_turn_credentials",
    "get_twilio_turn_credentials",
    "stt_for_chunks",
    "AdditionalOutputs",
    "AlgoOptions",
    "AsyncAudioVideoStreamHandler",
    "AsyncStreamHandler",
    "AudioVideoStreamHandler",
    "CloseStream",
    "Context",
    "EspeakTTSOptions",
    "PauseDetectionModel",
    "ReplyOnPause",
    "ReplyOnStopWords",
    "SileroVADModel",
    "SileroVadOptions",
    "StopWordOptions",
    "StreamHandler",
    "VideoStreamHandler",
    "WebRTC",
]
