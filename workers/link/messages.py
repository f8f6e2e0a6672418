"""What a worker answers over Ray (its control plane), typed: frozen dataclasses, not dicts.

The scheduler (and a tool or test driving a Worker directly) reads these; the link is the
package both sides import, so they are defined here. Ray carries them between processes;
nothing on the data plane (workers/link/wire.py) is one of them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from workers.link.channel import ChannelStats


@dataclass(frozen=True)
class WorkerInfo:
    """``Worker.ready()``: where a worker listens and who it is. ``token``: the one armed
    now, for a Worker driven directly (tests, benchmarks); the scheduler drops it
    (:meth:`without_token`) and arms a token of its own for every lease."""

    endpoint: str  # its Unix SEQPACKET socket, in the abstract namespace
    tcp_endpoint: str  # its TCP listener (a gateway on another node)
    token: str
    pid: int
    node_id: str
    host: str

    def without_token(self) -> WorkerInfo:
        return replace(self, token="")


@dataclass(frozen=True)
class WorkerStats:
    """``Worker.stats()``: sessions served, and the current session's channel counters
    (a copy taken at the call; None between sessions)."""

    pid: int
    sessions_served: int
    busy: bool
    channel: ChannelStats | None
