"""Stream events as the front registers them: the options checked at registration, the
config's per-stream overrides applied, and the scheduler's :class:`EventSpec` for each."""

from __future__ import annotations

import math
from typing import Any

from runtime.config import Config
from runtime.control.pools import EventSpec, PoolSpec
from runtime.errors import ErrorCode, Refused
from runtime.media.stream_event import StreamEvent
from workers.handlers import StreamHandlerBase, VideoStreamHandler
from workers.link.shape import Modality, StreamShape
from workers.process.loader import StreamOutputs, app_file_of, make_spec

WORKER_TCP_HOST_EMBEDDED = "127.0.0.1"  # under the embedded local Ray no other host reaches a worker


def check_stream_options(handler: Any, stream_every: Any, outputs: StreamOutputs | None) -> None:
    """Refuse, at registration, what a stream event cannot run: ``stream_every`` must be a
    positive number of seconds (or None); a StreamHandler's ``emit()`` gives the stream's
    media only, so its other components are updated with AdditionalOutputs instead."""
    if stream_every is not None and (
        isinstance(stream_every, bool)
        or not isinstance(stream_every, (int, float))
        or not math.isfinite(stream_every)
        or stream_every <= 0
    ):
        raise ValueError(
            f"stream_every must be a positive number of seconds or None, got {stream_every!r}"
        )
    if outputs is not None and outputs.mapped and isinstance(handler, StreamHandlerBase):
        raise ValueError(
            f"{type(handler).__name__} is a StreamHandler: its emit() gives the stream's media, so its "
            "only output is the WebRTC component; update other components by yielding "
            "AdditionalOutputs (.on_additional_outputs)"
        )


def make_event(
    config: Config,
    events: dict[str, StreamEvent],
    handler: Any,
    *,
    mode: str,
    modality: str,
    concurrency_limit: int | None,
    time_limit: float | None,
    initial_args: list[Any] | None,
    event_id: str | None,
    stream_every: float | None,
    outputs: StreamOutputs | None,
    queue: bool,
    max_queue: int | None,
    queue_timeout_s: float | None,
) -> StreamEvent:
    """A new stream event beside ``events`` (see Gateway.add_stream), or ValueError."""
    shape = StreamShape.parse(mode, modality)
    if concurrency_limit is not None and concurrency_limit < 1:
        raise ValueError("concurrency_limit must be None or at least 1")
    if max_queue is not None and (isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0):
        raise ValueError("max_queue must be None or a whole number >= 0")
    if queue_timeout_s is not None and not queue_timeout_s > 0:
        raise ValueError("queue_timeout_s must be None or > 0 seconds")
    check_stream_options(handler, stream_every, outputs)
    if isinstance(handler, VideoStreamHandler) and shape.modality != Modality.VIDEO:
        raise ValueError(f"a VideoStreamHandler handles video: the stream's modality must be 'video', got {modality!r}")
    event_id = event_id or f"stream-{len(events)}"
    # a worker that recovers the handler by re-importing its file counts that file's
    # registrations only (workers/process/loader.py)
    app_file = app_file_of(handler)
    index = sum(1 for e in events.values() if app_file_of(e.handler) == app_file)
    if event_id in events:
        raise ValueError(f"stream id {event_id!r} is registered twice")
    override = config.streams.get(event_id)
    if override is not None:
        concurrency_limit = override.concurrency_limit or concurrency_limit
        time_limit = override.time_limit or time_limit
        queue = queue if override.queue is None else override.queue
        max_queue = max_queue if override.max_queue is None else override.max_queue
        queue_timeout_s = override.queue_timeout_s or queue_timeout_s
    return StreamEvent(
        event_id,
        handler,
        shape.mode,
        shape.modality,
        concurrency_limit,
        time_limit,
        list(initial_args or []),
        index,
        None if stream_every is None else float(stream_every),
        outputs or StreamOutputs(),
        bool(queue),
        max_queue,
        queue_timeout_s,
    )


def event_spec(config: Config, event: StreamEvent) -> EventSpec:
    """What the scheduler keeps of a stream event: its handler, limits, pool and line."""
    pool = config.pool
    override = config.streams.get(event.event_id)
    if override is not None and override.pool is not None:
        pool = override.pool
    return EventSpec(
        event_id=event.event_id,
        handler=make_spec(
            event.handler, event.index, stream_every=event.stream_every, outputs=event.outputs
        ),
        concurrency_limit=event.concurrency_limit,
        time_limit=event.time_limit,
        pool=PoolSpec(**pool.model_dump()),
        # its TCP listener (used only when gateway.transport forces tcp) stays on loopback
        worker_tcp_host=WORKER_TCP_HOST_EMBEDDED if config.ray.embedded else "",
        queue=event.queue,
        max_queue=event.max_queue if event.max_queue is not None else config.queue.max_size,
        queue_timeout_s=event.queue_timeout_s or config.queue.timeout_s,
        admit_hold_s=config.queue.admit_hold_s,
    )


def pick_event(events: dict[str, StreamEvent], stream_id: Any) -> StreamEvent:
    """The stream an offer names (None: the app's only one), or the Refused to answer."""
    if stream_id is None:
        if len(events) == 1:
            return next(iter(events.values()))
        if not events:
            raise Refused(ErrorCode.NO_STREAMS, "this app has no stream events")
        raise Refused(ErrorCode.STREAM_ID_REQUIRED, f"this app has {len(events)} streams: pass 'stream_id' (GET /webrtc/streams)")
    if not isinstance(stream_id, str) or stream_id not in events:
        raise Refused(ErrorCode.UNKNOWN_STREAM, f"no stream {stream_id!r} (GET /webrtc/streams)")
    return events[stream_id]


def unknown_stream_overrides(config: Config, events: dict[str, StreamEvent]) -> list[str]:
    """``streams.<id>`` config keys that match no stream event (a typo, or an id that changed)."""
    return sorted(set(config.streams) - set(events))
