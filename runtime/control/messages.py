"""Every value the scheduler answers over Ray, typed: frozen dataclasses, not dicts.

The lease answers (grant, place in line, refusal) are in runtime/control/leases.py and a
waiting client's view of its ticket (``QueueView``) in runtime/control/waiting_room.py;
the rest is here. Each has ``to_json()``: the JSON form the HTTP routes, ``rtcpool status``
and the metrics were written against, key for key and in the same order, so a typed
value changes no output at the edge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from workers.link.messages import WorkerInfo


def to_json(value: Any) -> Any:
    """``value`` as JSON-ready builtins: a dataclass as a dict of its fields in order, a
    tuple as a list."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_json(v) for k, v in value.items()}
    return value


class _Json:
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = to_json(self)
        return out


@dataclass(frozen=True)
class RegisterAnswer(_Json):
    """``register``: the limits in force for the event (a changed spec that waits for its
    sessions to end is ``pending``, and ``warning`` says why)."""

    event_id: str
    limit: int | None
    time_limit: float | None
    pending: bool
    warning: str


@dataclass(frozen=True)
class HeartbeatAnswer(_Json):
    """``heartbeat``: the leases the scheduler no longer knows (the gateway ends those
    sessions) and the events it no longer knows (the gateway registers them again)."""

    gone: tuple[str, ...]
    unknown_events: tuple[str, ...]


@dataclass(frozen=True)
class SessionLocation(_Json):
    """``locate``: the engine that holds a session, and the media process's actor to
    forward to (None: an engine inside some app's process, which no other process reaches)."""

    gateway_id: str
    media: Any


@dataclass(frozen=True)
class WorkerStatus(_Json):
    """A pool worker, as its ``ready()`` answered (less its token), and whether it serves a session."""

    endpoint: str
    tcp_endpoint: str
    pid: int
    node_id: str
    host: str
    busy: bool

    @classmethod
    def of(cls, info: WorkerInfo, busy: bool) -> WorkerStatus:
        return cls(info.endpoint, info.tcp_endpoint, info.pid, info.node_id, info.host, busy)


@dataclass(frozen=True)
class EventStatus(_Json):
    """One stream event's pool, slots and line."""

    limit: int | None
    active: int  # busy workers
    leases: int  # slots taken by sessions
    idle: int
    starting: int
    workers: tuple[WorkerStatus, ...]
    started_total: int
    replaced_total: int
    last_error: str
    unplaceable: str  # why no alive node takes a worker ("" if one does)
    gateways: tuple[str, ...]
    queue: int  # users waiting in its line
    admitted: int  # admitted users whose slot is held for their offer
    max_queue: int | None
    expected_session_s: float | None


@dataclass(frozen=True)
class SessionRow(_Json):
    """A lease, for `rtcpool status`."""

    lease: str  # the lease id's first SHORT_LEASE_ID characters
    event_id: str
    gateway_id: str
    node_id: str
    pid: int | None
    age_s: float
    streaming_s: float | None
    transport: str  # "shm" or "tcp", as the gateway's heartbeat reports it ("" before)


@dataclass(frozen=True)
class MediaRow(_Json):
    """A media process (or an app process's engine), and its last reported load."""

    gateway_id: str
    front_id: str
    node_id: str
    pid: int | None
    in_app: bool
    sessions: int
    cpu_percent: float | None
    loop_lag_ms: float | None


@dataclass(frozen=True)
class EngineLoad(_Json):
    """What an engine reports of its load (sampled by runtime/media/load.py): the front
    places sessions by it, and its heartbeat carries it to the scheduler for `rtcpool status`."""

    engine_id: str
    pid: int
    node_id: str
    sessions: int
    cpu_percent: float  # of one core, over the engine's last load sample
    loop_lag_ms: float  # how late the last load sample's timer fired

    def score(self) -> float:
        """Lower is less loaded: sessions, plus CPU in units of what one session costs.
        A 640x480@30 video session costs a media process ~20-30% of a core (issue 10's
        measurement), so CPU_PER_SESSION_PERCENT converts CPU to sessions; a lagging loop
        counts as loaded whatever its session count."""
        return self.sessions + self.cpu_percent / CPU_PER_SESSION_PERCENT + self.loop_lag_ms / LAG_PER_SESSION_MS


CPU_PER_SESSION_PERCENT = 25.0  # CPU% of one core a video session costs a media process, for placement
LAG_PER_SESSION_MS = 20.0  # event-loop lag counted as one more session, for placement


@dataclass(frozen=True)
class SchedulerStatus(_Json):
    """``status``: the whole deployment as the scheduler sees it."""

    events: Mapping[str, EventStatus]
    leases: int
    tickets: int
    autoscale_request: tuple[Mapping[str, float], ...]
    autoscale_calls: int
    sessions: tuple[SessionRow, ...]
    gateways: tuple[str, ...]
    media: tuple[MediaRow, ...]


def status_json(status: SchedulerStatus | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The JSON form of a status (a typed one from the scheduler, or one already in JSON)."""
    if status is None or isinstance(status, dict):
        return status
    if isinstance(status, SchedulerStatus):
        return status.to_json()
    return dict(status)
