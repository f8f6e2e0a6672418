"""What an engine reports of its load, for placing sessions and for `rtcpool status`, and
its sampler."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

LOAD_SAMPLE_S = 1.0  # how often an engine measures its own CPU and event-loop lag


@dataclass(frozen=True)
class EngineLoad:
    """What an engine reports for placement and `rtcpool status`."""

    engine_id: str
    pid: int
    node_id: str
    sessions: int
    cpu_percent: float  # of one core, over the last LOAD_SAMPLE_S
    loop_lag_ms: float  # how late a LOAD_SAMPLE_S timer fired, last sample

    def score(self) -> float:
        """Lower is less loaded: sessions, plus CPU in units of what one session costs.
        A 640x480@30 video session costs a media process ~20-30% of a core (issue 10's
        measurement), so CPU_PER_SESSION_PERCENT converts CPU to sessions; a lagging loop
        counts as loaded whatever its session count."""
        return self.sessions + self.cpu_percent / CPU_PER_SESSION_PERCENT + self.loop_lag_ms / LAG_PER_SESSION_MS


CPU_PER_SESSION_PERCENT = 25.0  # CPU% of one core a video session costs a media process, for placement
LAG_PER_SESSION_MS = 20.0  # event-loop lag counted as one more session, for placement


class Measured(Protocol):
    """What the load sampler reads of its engine, and where it leaves each sample."""

    gateway_id: str
    node_id: str
    last_load: EngineLoad

    def live_sessions(self) -> Sequence[object]: ...


async def sample_load(engine: Measured) -> None:
    """Sample the process's CPU and the event loop's lag every LOAD_SAMPLE_S into
    ``engine.last_load``, forever (a task on the loop: a late timer is the lag)."""
    cpu0, t0 = time.process_time(), time.monotonic()
    while True:
        await asyncio.sleep(LOAD_SAMPLE_S)
        cpu1, t1 = time.process_time(), time.monotonic()
        lag = max(0.0, t1 - t0 - LOAD_SAMPLE_S)
        engine.last_load = EngineLoad(
            engine.gateway_id,
            os.getpid(),
            engine.node_id,
            len(engine.live_sessions()),
            round(100.0 * (cpu1 - cpu0) / max(t1 - t0, 1e-6), 1),
            round(1000.0 * lag, 1),
        )
        cpu0, t0 = cpu1, t1
