"""A handler's snapshots (workers/process/snapshots.py): when they are sent, what is refused."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from workers.handlers import StreamHandler
from workers.link.wire import Control, Snapshot, unpackb
from workers.process.snapshots import Snapshots, restore
from workers.voice.reply_on_pause import ReplyOnPause

INTERVAL_S = 60.0  # long: nothing in a test waits for it


class Kept:
    def __init__(self, value: Any = 0) -> None:
        self.value = value

    def snapshot(self) -> Any:
        return self.value

    def restore(self, value: Any) -> None:
        self.value = value


def sink() -> tuple[list[Control], Any]:
    sent: list[Control] = []
    return sent, sent.append


def values(sent: list[Control]) -> list[Any]:
    return [unpackb(m.state) for m in sent if isinstance(m, Snapshot)]


def test_save_state_sends_at_once_then_at_most_once_per_interval() -> None:
    h = Kept(1)
    sent, send = sink()
    snaps = Snapshots(h, send, INTERVAL_S, 1 << 20)
    snaps.request()
    h.value = 2
    snaps.request()  # too soon: not sent
    assert values(sent) == [1]
    snaps.tick(time.monotonic() + INTERVAL_S)  # the interval is up: the stats thread sends
    assert values(sent) == [1, 2]


def test_an_unchanged_state_is_not_sent_again() -> None:
    h = Kept({"turns": ["hi"]})
    sent, send = sink()
    snaps = Snapshots(h, send, 0.001, 1 << 20)
    snaps.take()
    snaps.take()
    h.value = {"turns": ["hi", "there"]}
    snaps.take()
    assert values(sent) == [{"turns": ["hi"]}, {"turns": ["hi", "there"]}]


def test_a_snapshot_over_the_limit_or_that_fails_is_not_sent(caplog: Any) -> None:
    sent, send = sink()
    big = Snapshots(Kept(np.zeros(1000, np.uint8)), send, 0.001, 100)
    big.take()
    big.take()

    class Broken(Kept):
        def snapshot(self) -> Any:
            raise RuntimeError("no")

    broken = Snapshots(Broken(), send, 0.001, 1 << 20)
    broken.take()
    unpicklable = Snapshots(Kept(object()), send, 0.001, 1 << 20)
    unpicklable.take()
    assert sent == []
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("over the 100-byte limit" in w for w in warnings) == 1  # said once
    assert any("RuntimeError: no" in w for w in warnings)
    assert any("cannot send a value of type object" in w for w in warnings)


def test_a_handler_without_snapshot_sends_nothing() -> None:
    sent, send = sink()
    snaps = Snapshots(lambda frame: frame, send, 0.001, 1 << 20)
    assert not snaps.enabled
    snaps.request()
    snaps.tick(time.monotonic() + 1)
    assert sent == []


def test_restore_gives_the_value_back_and_skips_what_cannot_take_it() -> None:
    sent, send = sink()
    Snapshots(Kept([1, 2, np.arange(3)]), send, 0.001, 1 << 20).take()
    fresh = Kept()
    assert restore(fresh, sent[0].state)
    assert fresh.value[:2] == [1, 2] and np.array_equal(fresh.value[2], np.arange(3))
    assert not restore(lambda frame: frame, sent[0].state)  # no restore(): nothing to do
    assert not restore(fresh, None)


class Conversation:
    """An app's function that keeps its conversation and opts in to failover."""

    def __init__(self) -> None:
        self.turns: list[str] = []

    def __call__(self, audio: Any) -> Any:
        self.turns.append("reply")
        yield audio

    def snapshot(self) -> list[str]:
        return list(self.turns)

    def restore(self, value: list[str]) -> None:
        self.turns = list(value)


def test_reply_on_pause_keeps_state_only_when_its_function_opts_in() -> None:
    convo = Conversation()
    opted = ReplyOnPause(convo)
    assert opted.snapshot is not None and opted.restore is not None
    convo.turns.append("hello")
    assert opted.snapshot() == ["hello"]
    opted.restore(["a", "b"])
    assert convo.turns == ["a", "b"]

    def plain(audio: Any) -> Any:
        yield audio

    assert ReplyOnPause(plain).snapshot is None
    assert not Snapshots(ReplyOnPause(plain), lambda m: None, 0.001, 1 << 20).enabled


def test_save_state_outside_a_worker_is_a_no_op() -> None:
    class Echo(StreamHandler):
        def receive(self, frame: Any) -> None: ...

        def emit(self) -> Any:
            return None

        def copy(self) -> Echo:
            return Echo()

    Echo().save_state()
