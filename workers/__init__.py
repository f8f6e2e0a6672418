"""Everything that runs inside a worker process: the handler API and the worker loop.

Nothing here imports aiortc, Gradio or the gateway.
"""

from workers.handlers import (
    AdditionalOutputs,
    AsyncStreamHandler,
    AudioVideoStreamHandler,
    CloseStream,
    StreamHandler,
    StreamHandlerBase,
)

__all__ = [
    "AdditionalOutputs",
    "AsyncStreamHandler",
    "AudioVideoStreamHandler",
    "CloseStream",
    "StreamHandler",
    "StreamHandlerBase",
]
