"""The one heartbeat loop, driven as a thread (the front) and as a task (a media process),
against a fake scheduler: it beats, ends the sessions of reclaimed leases on their own loop,
asks for forgotten streams, survives a failing beat, and never beats after aclose()."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

import pytest

from runtime import constants as C
from runtime.control.messages import EngineLoad, HeartbeatAnswer
from runtime.errors import EndReason
from runtime.media.heartbeat import Heartbeat

BEAT_S = 0.02  # the test's HEARTBEAT_S


class FakeSession:
    def __init__(self, lease_id: str) -> None:
        self.lease_id = lease_id
        self.transport = "shm"
        self.loop = asyncio.get_running_loop()
        self.sent: list[tuple[str, Any]] = []
        self.closing: list[EndReason] = []
        self.threads: set[str] = set()

    def send_client(self, type_: str, data: Any) -> None:
        self.threads.add(threading.current_thread().name)
        self.sent.append((type_, data))

    def close_soon(self, reason: EndReason, detail: str, delay: float = 0.0) -> None:
        self.closing.append(reason)


class FakeScheduler:
    """heartbeat.remote() gives an awaitable, as a Ray ObjectRef does."""

    def __init__(self, gone: list[str], unknown: list[str], fail_first: int = 0) -> None:
        self.beats: list[tuple[Any, ...]] = []
        self.gone, self.unknown, self.fail_first = gone, unknown, fail_first
        self.heartbeat = self
        self.closed = False
        self.after_close = 0

    def remote(self, *args: Any) -> Any:
        self.beats.append(args)
        if self.closed:
            self.after_close += 1

        async def answer() -> HeartbeatAnswer:
            if len(self.beats) <= self.fail_first:
                raise RuntimeError("a failed beat")
            return HeartbeatAnswer(tuple(self.gone), tuple(self.unknown))

        return answer()


class FakeEngine:
    def __init__(self, scheduler: FakeScheduler, sessions: dict[str, FakeSession]) -> None:
        self.gateway_id = "gw-test"
        self.scheduler: Any = scheduler
        self.on_unknown_event = self.register_again
        self.registered: list[str] = []
        self._sessions = sessions

    @property
    def events(self) -> Mapping[str, Any]:
        return {"stream-a": None}

    def leased_sessions(self) -> dict[str, Any]:
        return dict(self._sessions)

    def load(self) -> EngineLoad:
        return EngineLoad(self.gateway_id, 1, "node", len(self._sessions), 0.0, 0.0)

    def scheduler_died(self, dead: Any) -> None:
        raise AssertionError("not in this test")

    def register_again(self, event_id: str) -> None:
        self.registered.append(event_id)


@pytest.fixture(autouse=True)
def fast_beats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(C, "HEARTBEAT_S", BEAT_S)


@pytest.mark.parametrize("driver", ["thread", "task"])
async def test_one_loop_two_drivers(driver: str) -> None:
    kept, reclaimed = FakeSession("lease-kept"), FakeSession("lease-gone")
    scheduler = FakeScheduler(gone=["lease-gone"], unknown=["stream-a"], fail_first=1)
    engine = FakeEngine(scheduler, {"lease-kept": kept, "lease-gone": reclaimed})
    beat = Heartbeat(engine)
    if driver == "thread":
        beat.start_thread()
        beat.start_thread()  # a second start while it runs is no second loop
    else:
        beat.start_task()
        beat.start_task()
    for _ in range(200):
        await asyncio.sleep(BEAT_S)
        if len(scheduler.beats) >= 3 and reclaimed.closing:
            break
    gateway, leases, events, transports, load = scheduler.beats[-1]
    assert (gateway, sorted(leases), events) == ("gw-test", ["lease-gone", "lease-kept"], ["stream-a"])
    assert transports == {"lease-gone": "shm", "lease-kept": "shm"} and load.sessions == 2
    # the reclaimed session is ended on its own loop's thread, whatever the driver
    assert reclaimed.sent[0] == ("end_stream", {"reason": "lease_reclaimed"})
    assert reclaimed.threads == {threading.current_thread().name}
    assert set(reclaimed.closing) == {EndReason.LEASE_RECLAIMED} and not kept.closing and not kept.sent
    assert "stream-a" in engine.registered
    thread = beat._thread
    await beat.aclose()
    scheduler.closed = True
    await asyncio.sleep(5 * BEAT_S)
    assert scheduler.after_close == 0
    await beat.aclose()  # twice is fine
    assert thread is None or not thread.is_alive()
