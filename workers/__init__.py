"""Everything that runs inside a worker process: the handler API and the worker loop.

Nothing here imports aiortc, Gradio or the gateway.
"""

from workers.context import Context, get_current_context
from workers.handlers import (
    AdditionalOutputs,
    AsyncAudioVideoStreamHandler,
    AsyncStreamHandler,
    AudioVideoStreamHandler,
    CloseStream,
    StreamHandler,
    StreamHandlerBase,
    VideoStreamHandler,
)

__all__ = [
    "AdditionalOutputs",
    "AsyncAudioVideoStreamHandler",
    "AsyncStreamHandler",
    "AudioVideoStreamHandler",
    "CloseStream",
    "Context",
    "StreamHandler",
    "StreamHandlerBase",
    "VideoStreamHandler",
    "get_current_context",
]
