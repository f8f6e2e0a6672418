"""The handler API, listed once: what an app author imports to write a handler.

``gradio_ext`` exports it beside the ``WebRTC`` component and ``runtime.stream`` beside
``Stream``; both take this list (and TURN credentials, which are the front's) rather than
keeping lists of their own. The names and meanings are gradio_webrtc's and fastrtc's.
"""

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
]
