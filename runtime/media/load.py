"""An engine's load sampler (the EngineLoad it reports is in runtime/control/messages.py:
the scheduler reads it too)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Protocol

from runtime.control.messages import EngineLoad

LOAD_SAMPLE_S = 1.0  # how often an engine measures its own CPU and event-loop lag


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
