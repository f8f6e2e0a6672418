"""A stream event as the media plane sees it: its media shape and limits, and (in the front)
its handler. The front registers streams (runtime/front/gateway.py); an engine and its
sessions only read them, and a media process is sent one without its handler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workers.link.shape import Modality, Mode, StreamShape
from workers.process.loader import StreamOutputs


@dataclass
class StreamEvent:
    """A stream event: its media shape and limits, and (in the front) its handler."""

    event_id: str
    handler: Any = None
    mode: Mode = Mode.SEND_RECEIVE
    modality: Modality = Modality.VIDEO
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
    shape: StreamShape = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # the front registers what the app passed (strings); the planes ask the shape
        self.shape = StreamShape.parse(self.mode, self.modality)
        self.mode, self.modality = self.shape.mode, self.shape.modality

    @property
    def has_video(self) -> bool:
        return self.shape.has_video

    @property
    def has_audio(self) -> bool:
        return self.shape.has_audio

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
