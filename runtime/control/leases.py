"""What the scheduler answers an engine's ``acquire``: a grant, a place in line, or a refusal, typed.

Both cross Ray (pickled by Ray on the control plane, never on the data plane); ``ok`` tells
them apart without an isinstance on the caller's side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from runtime import constants as C
from runtime.errors import ErrorCode


@dataclass(frozen=True)
class FailoverPolicy:
    """What a session does when its worker dies (the stream's pool config): how often its
    handler's state is snapshot, and how many restarts it gets in a window."""

    snapshot_interval_s: float = C.SNAPSHOT_INTERVAL_S
    max_restarts: int = C.MAX_RESTARTS
    restart_window_s: float = C.RESTART_WINDOW_S
    max_snapshot_bytes: int = C.MAX_SNAPSHOT_BYTES
    worker_memory_limit_mb: int = C.WORKER_MEMORY_LIMIT_MB


@dataclass(frozen=True)
class LeaseGrant:
    """A slot and a worker armed with ``token`` for one session. A failover grant
    (``Scheduler.failover``) has the same ``lease_id``, a new worker and token."""

    ok: ClassVar[bool] = True
    lease_id: str
    worker: Any  # the worker actor's handle
    endpoint: str  # its Unix socket (abstract namespace): shared memory on its node
    tcp_endpoint: str  # "host:port" for an engine on another node ("" if it has none)
    token: str  # the lease's secret: the worker takes one session that presents it
    pid: int
    node_id: str
    time_limit: float | None
    failover: FailoverPolicy = FailoverPolicy()
    resumed: bool = False  # the session's own worker, held for it after its media process died


@dataclass(frozen=True)
class LeaseDenied:
    """No slot: ``error`` is the reason's code (concurrency_limit_reached, unknown_stream,
    duplicate_webrtc_id, no_node_fits, no_worker, expired)."""

    ok: ClassVar[bool] = False
    error: ErrorCode
    message: str = ""
    limit: int | None = None
    retry_after: int | None = None
    queue_size: int | None = None  # users waiting for the stream, on a refusal because it is full


@dataclass(frozen=True)
class LeaseQueued:
    """No slot now: the session waits in the stream's line (runtime/control/waiting_room.py) with
    ``ticket``, the secret its client follows the line with and posts its offer again with."""

    ok: ClassVar[bool] = False
    ticket: str
    position: int
    size: int
    eta_s: float | None


Lease = LeaseGrant | LeaseDenied | LeaseQueued
