"""A stream event as the media plane sees it: its media shape and limits, and (in the front)
its handler. The front registers streams (runtime/front/gateway.py); an engine and its
sessions only read them, and a media process is sent one without its handler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workers.process.loader import StreamOutputs


@dataclass
class StreamEvent:
    """A stream event: its media shape and limits, and (in the front) its handler."""

    event_id: str
    handler: Any = None
    mode: str = "send-receive"
    modality: str = "video"
    concurrency_limit: int | None = 1
    time_limit: float | None = None
    initial_args: list[Any] = field(default_factory=list)
    index: int = 0
    stream_every: float | None = None
    outputs: StreamOutputs = field(default_factory=StreamOutputs)
    # a full stream's waiting room: None = the config's queue section
    queue: bool = True
    max_queue: int | None = None
    queue_timeout_s: float | None = None

    @property
    def has_video(self) -> bool:
        return self.modality in ("video", "audio-video")

    @property
    def has_audio(self) -> bool:
        return self.modality in ("audio", "audio-video")

    def media_only(self) -> StreamEvent:
        """This event without its handler: what a media process is sent (by Ray, so no
        user object travels; the workers load the handler themselves)."""
        return StreamEvent(
            self.event_id,
            None,
            self.mode,
            self.modality,
            self.concurrency_limit,
            self.time_limit,
            list(self.initial_args),
            self.index,
            self.stream_every,
            StreamOutputs(),
            self.queue,
            self.max_queue,
            self.queue_timeout_s,
        )
