"""The event-loop stall guard (runtime/media/stall_guard.py): a real asyncio loop on a thread
of its own, held by a callback that sleeps, and a media process held the same way behind a
served gateway, whose /webrtc/ready must say so.

No millisecond assertions: the holds are seconds long beside a threshold of a fraction of
one, and every wait polls with a generous deadline (a 2-core box shared with other runs).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from runtime.media.stall_guard import StallGuard
from tests.conftest import wait_until

WARN_S = 0.5  # the guard's threshold in these tests
HOLD_S = 2.0  # a stall: four thresholds long
SETTLE_S = 15.0  # deadline of every wait for the guard to notice (a loaded box is slow)
STALL_LOGGER = "rtcpool.media.stall"


def hold_the_loop_for_test(seconds: float) -> None:
    """The code that holds the loop: its name must be in the warning's stack."""
    time.sleep(seconds)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def stalls(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == logging.WARNING]

    def ends(self) -> list[logging.LogRecord]:
        return [r for r in self.records if r.levelno == logging.INFO and "stall ended" in r.getMessage()]


@pytest.fixture
def records() -> Iterator[Records]:
    # a handler of its own on the guard's logger: rtcpool's logger may not propagate to
    # caplog's root handler once logs.configure has run in this session
    logger = logging.getLogger(STALL_LOGGER)
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-loop", daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def start_on(loop: asyncio.AbstractEventLoop, guard: StallGuard) -> StallGuard:
    """guard.start() on the loop's thread, as the engine calls it."""

    async def start() -> None:
        guard.start()

    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    return guard


def started(loop: asyncio.AbstractEventLoop, warn_s: float) -> StallGuard:
    return start_on(loop, StallGuard(warn_s))


def hold(loop: asyncio.AbstractEventLoop, guard: StallGuard, records: Records) -> None:
    """One stall: the loop held HOLD_S; ``stalled`` true while held, false once it runs."""
    warned = len(records.stalls())
    loop.call_soon_threadsafe(hold_the_loop_for_test, HOLD_S)
    assert wait_until(lambda: guard.stalled, SETTLE_S), "the guard did not see the loop held"
    assert guard.stall_s > 0
    assert wait_until(lambda: not guard.stalled, SETTLE_S + HOLD_S), "the stall did not end"
    assert guard.stall_s == 0.0
    # the loop runs again: the warning went out while it was held, once
    assert len(records.stalls()) - warned >= 1


def test_one_warning_per_stall_with_the_stack_holding_the_loop(loop, records):
    guard = started(loop, WARN_S)
    try:
        assert not guard.stalled
        hold(loop, guard, records)
        held = [m for m in records.stalls() if "hold_the_loop_for_test" in m]
        assert len(held) == 1, records.stalls()
        assert "event loop stalled for" in held[0]
        assert wait_until(lambda: len(records.ends()) == 1, SETTLE_S)
        assert records.ends()[0].rtcpool["stall_s"] >= WARN_S  # type: ignore[attr-defined]

        hold(loop, guard, records)  # a second stall is warned about again, once
        held = [m for m in records.stalls() if "hold_the_loop_for_test" in m]
        assert len(held) == 2, records.stalls()
        assert wait_until(lambda: len(records.ends()) == 2, SETTLE_S)
        assert guard.stalls >= 2
    finally:
        guard.stop()


def test_a_disabled_guard_watches_nothing(loop, records):
    guard = started(loop, 0)
    assert not guard.enabled
    assert guard._thread is None  # no watchdog thread at all
    loop.call_soon_threadsafe(hold_the_loop_for_test, HOLD_S)
    time.sleep(HOLD_S / 2)
    assert not guard.stalled and guard.stall_s == 0.0
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(SETTLE_S + HOLD_S)  # the hold is over
    assert records.records == []
    guard.stop()


def test_stop_ends_the_thread_and_is_safe_twice(loop, records):
    guard = started(loop, WARN_S)
    thread = guard._thread
    assert thread is not None and thread.is_alive()
    asyncio.run_coroutine_threadsafe(guard.aclose(), loop).result(10)
    assert not thread.is_alive()
    guard.stop()  # again, from another thread
    start_on(loop, guard)
    assert guard._thread is None  # a stopped guard does not start again
    assert records.records == []


# --- a media process behind a served gateway: /webrtc/ready ------------------------------------


def invert(frame: np.ndarray) -> np.ndarray:
    return 255 - frame


def _noop(media_process) -> None:
    pass


def _hold_media_loop(media_process, seconds: float) -> None:
    # run by Ray in the media process (actor.__ray_call__, on a thread of Ray's): queues the
    # hold on the sessions' loop, the one the guard watches
    media_process.engine.stall_guard._loop.call_soon_threadsafe(hold_the_loop_for_test, seconds)


def test_a_stalled_media_process_is_not_ready(make_gateway):
    with make_gateway(
        lambda gw: gw.add_stream(invert, event_id="stall-ready", concurrency_limit=1), processes=2, loop_stall_warn_ms=int(1000 * WARN_S)
    ) as served:
        ready = f"{served.url}/webrtc/ready"
        assert wait_until(lambda: httpx.get(ready, timeout=10).status_code == 200, SETTLE_S), httpx.get(ready, timeout=10).text
        slot = served.gateway.media[0]
        import ray

        # test-found: Ray unpickles a call's function on the actor's event loop, and the first
        # one imports this module (pytest, numpy, httpx): a real stall of about half a second,
        # which the guard reported. Import it once and let that pass, so the 503 below is the hold's.
        ray.get(slot.actor.__ray_call__.remote(_noop), timeout=30)
        assert wait_until(lambda: httpx.get(ready, timeout=10).status_code == 200, SETTLE_S), httpx.get(ready, timeout=10).text
        ray.get(slot.actor.__ray_call__.remote(_hold_media_loop, 3 * HOLD_S), timeout=30)
        answer = wait_until(lambda: (r := httpx.get(ready, timeout=10)).status_code == 503 and r, 3 * HOLD_S)
        assert answer, "a media process held its loop and the gateway stayed ready"
        body = answer.json()
        assert body["status"] == "not_ready"
        assert any(slot.engine_id in p and "stalled" in p for p in body["problems"]), body
        assert wait_until(lambda: httpx.get(ready, timeout=10).status_code == 200, SETTLE_S + 3 * HOLD_S), httpx.get(ready, timeout=10).text
