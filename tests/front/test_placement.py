"""Placement of new sessions on a front's media processes (runtime/front/supervisor.py MediaSlot):
pure bookkeeping, no Ray. The spread over real processes is test_media_processes."""

import time

from runtime.config_loader import load_config
from runtime.control.messages import EngineLoad
from runtime.front.supervisor import MediaSlot, MediaSupervisor


def _slot(index: int, sessions: int = 0, cpu: float = 0.0, lag: float = 0.0):
    return MediaSlot(index, f"m{index}", None, EngineLoad(f"m{index}", 1000 + index, "node", sessions, cpu, lag))


def _front(*slots):
    front = MediaSupervisor(load_config(), "gw", lambda: None, list)  # placement only: no Ray
    front.slots = list(slots)
    return front


def test_placement_spreads_a_burst_evenly_on_equal_loads():
    front = _front(_slot(0), _slot(1))
    placed = [front.least_loaded(f"s{i}").index for i in range(4)]
    assert sorted(placed) == [0, 0, 1, 1]


def test_placement_avoids_a_busy_or_lagging_process():
    assert _front(_slot(0, sessions=1, cpu=60.0), _slot(1, sessions=2)).least_loaded("s").index == 1
    assert _front(_slot(0, lag=100.0), _slot(1, sessions=3)).least_loaded("s").index == 1
    assert _front(_slot(0, sessions=1), _slot(1, sessions=3)).least_loaded("s").index == 0


def test_placement_survives_a_reading_taken_before_the_answer():
    a, b = _slot(0), _slot(1)
    front = _front(a, b)
    assert front.least_loaded("s0") is a
    asked_at = time.monotonic()  # the supervisor asks for a's load ...
    a.answered("s0", ok=True)  # ... the offer is answered meanwhile ...
    a.reading(a.load, asked_at)  # ... and the reading (which may not count it) arrives
    assert front.least_loaded("s1") is b, "the reading erased the placement"
    b.answered("s1", ok=True)
    b.reading(b.load.__class__(**{**vars(b.load), "sessions": 1}), time.monotonic())
    assert not b.unseen, "a reading asked after the answer counts the session"
    a.answered("s0", ok=True)
    a.reading(a.load.__class__(**{**vars(a.load), "sessions": 1}), time.monotonic())
    assert not a.unseen


def test_placement_forgets_a_refused_offer():
    a, b = _slot(0), _slot(1)
    front = _front(a, b)
    front.least_loaded("s0")
    a.answered("s0", ok=False)
    assert a.score() == b.score() == 0
