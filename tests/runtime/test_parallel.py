"""Handlers of different sessions run in parallel processes, not under one GIL."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from runtime.client import Client
from workers.handlers import AdditionalOutputs

pytestmark = pytest.mark.asyncio(loop_scope="session")

BUSY_S = 0.04  # each call holds the GIL this long in a pure-Python loop
WINDOW_S = 3.0
ATTEMPTS = 3
MIN_PARALLELISM = 1.2  # CPU-seconds per second; 1.0 is the most one GIL allows


def hold_gil(frame: np.ndarray):
    cpu0, wall0 = time.thread_time(), time.time()
    end = time.perf_counter() + BUSY_S
    n = 0
    while time.perf_counter() < end:
        n += 1
    return frame, AdditionalOutputs(time.thread_time() - cpu0, wall0)


async def test_gil_holding_handlers_in_two_sessions_run_in_parallel(make_gateway):
    with make_gateway(lambda gw: gw.add_stream(hold_gil, event_id="par-gil", concurrency_limit=2)) as served:
        a = Client(served.url, size=(160, 120))
        b = Client(served.url, size=(160, 120))
        await a.connect()
        await b.connect()
        await asyncio.wait_for(asyncio.gather(a.first_frame.wait(), b.first_frame.wait()), 30)
        samples: list[tuple[float, float]] = []  # (cpu seconds of one call, its wall start)
        for c in (a, b):
            served.gateway.sessions[c.webrtc_id].on_outputs.append(lambda v: samples.append((v[0], v[1])))
        pids = {served.gateway.sessions[c.webrtc_id].worker_pid for c in (a, b)}
        ratios = []
        for _ in range(ATTEMPTS):
            samples.clear()
            start = time.time()
            await asyncio.sleep(WINDOW_S)
            end = time.time()
            inside = [cpu for cpu, wall in samples if start + 0.2 <= wall <= end - BUSY_S - 0.2]
            span = (end - BUSY_S - 0.2) - (start + 0.2)
            ratios.append(sum(inside) / span)
            if ratios[-1] > MIN_PARALLELISM:
                break
        await a.close()
        await b.close()
    assert len(pids) == 2, "each session has its own worker process"
    # One interpreter runs Python on one core at a time: the sum of the two handlers' CPU
    # time over a window can only exceed the window when they truly run in parallel. Other
    # load on the machine can steal a window, so the best of a few counts.
    assert max(ratios) > MIN_PARALLELISM, f"handlers used {ratios} CPU-s per second: not parallel"
