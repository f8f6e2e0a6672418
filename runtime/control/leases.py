"""What the scheduler answers an engine's ``acquire``: a grant, a place in line, or a refusal, typed.

Both cross Ray (pickled by Ray on the control plane, never on the data plane); ``ok`` tells
them apart without an isinstance on the caller's side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from runtime.errors import ErrorCode


@dataclass(frozen=True)
class LeaseGrant:
    """A slot and a worker armed with ``token`` for one session."""

    ok: ClassVar[bool] = True
    lease_id: str
    worker: Any  # the worker actor's handle
    endpoint: str  # its Unix socket (abstract namespace): shared memory on its node
    tcp_endpoint: str  # "host:port" for an engine on another node ("" if it has none)
    token: str  # the lease's secret: the worker takes one session that presents it
    pid: int
    node_id: str
    time_limit: float | None


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
