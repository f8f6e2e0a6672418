"""The session directory and the media-process registry.

A session's lease names its gateway (an engine: a media process, or an app process's own);
the registry maps that gateway id to the media process's actor, so any gateway can forward
a session's requests to the process that holds it (``locate``). The scheduler waits on each
media process's ``run()``, which returns only when the process dies: then its leases come
back at once (not after GATEWAY_TTL_S).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from runtime.control.messages import EngineLoad, MediaRow, SessionLocation
from runtime.control.pools import reason

log = logging.getLogger("rtcpool.scheduler")


class Leased(Protocol):
    """What the directory reads of a lease."""

    gateway_id: str
    session_id: str


@dataclass
class MediaRecord:
    """A media process: its actor (any gateway forwards a session's requests to it) and
    the front that started it."""

    actor: Any
    front_id: str
    node_id: str
    pid: int
    in_app: bool = False  # an app process's inbox (runtime/media/inbox.py), not a media process
    watch: asyncio.Task[None] | None = None


class Directory:
    def __init__(self, on_gone: Callable[[str], Awaitable[int]]) -> None:
        # ``on_gone(gateway_id)``: a media process died; gives back its leases (or holds them for
        # a resume, docs/failover.md), says how many
        self._on_gone = on_gone
        self.media: dict[str, MediaRecord] = {}  # by gateway id
        self.loads: dict[str, EngineLoad] = {}  # gateway id -> its engine's last load

    def add(self, gateway_id: str, actor: Any, front_id: str, node_id: str, pid: int, in_app: bool) -> None:
        record = self.media[gateway_id] = MediaRecord(actor, front_id, node_id, pid, in_app)
        record.watch = asyncio.get_running_loop().create_task(self._watch(gateway_id, record))

    async def _watch(self, gateway_id: str, record: MediaRecord) -> None:
        try:
            await record.actor.run.remote()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.media.get(gateway_id) is record:
                n = await self._on_gone(gateway_id)
                log.warning("media process %s (pid %s) is gone (%s): %d lease(s) given back or held for their resume", gateway_id, record.pid, reason(exc), n)

    def forget(self, gateway_id: str) -> None:
        self.loads.pop(gateway_id, None)
        record = self.media.pop(gateway_id, None)
        if record is not None and record.watch is not None and record.watch is not asyncio.current_task():
            record.watch.cancel()

    def locate(self, session_id: str, leases: Iterable[Leased]) -> SessionLocation | None:
        for lease in leases:
            if lease.session_id == session_id:
                record = self.media.get(lease.gateway_id)
                return SessionLocation(lease.gateway_id, record.actor if record is not None else None)
        return None

    def rows(self, leases: Iterable[Leased]) -> tuple[MediaRow, ...]:
        """Every engine known by a registration or by its load, for `rtcpool status`."""
        sessions: dict[str, int] = {}
        for lease in leases:
            sessions[lease.gateway_id] = sessions.get(lease.gateway_id, 0) + 1
        rows = []
        for gid in sorted(set(self.media) | set(self.loads)):
            r, load = self.media.get(gid), self.loads.get(gid)
            rows.append(
                MediaRow(
                    gateway_id=gid,
                    front_id=r.front_id if r is not None else "",
                    node_id=(r.node_id if r is not None else "") or (load.node_id if load is not None else ""),
                    pid=r.pid if r is not None else (load.pid if load is not None else None),
                    in_app=r is None or r.in_app,
                    sessions=sessions.get(gid, 0),
                    cpu_percent=load.cpu_percent if load is not None else None,
                    loop_lag_ms=load.loop_lag_ms if load is not None else None,
                )
            )
        return tuple(rows)
