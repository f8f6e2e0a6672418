"""Fixtures of the worker's tests: workers in this process (``make_worker``), and the check
that a test's sessions leave no shared memory behind (``no_leaked_segments``, which a module
asks for with ``pytestmark = pytest.mark.usefixtures("no_leaked_segments")``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.workers.harness import WAIT_S, own_segments
from workers.process.actor import Worker
from workers.process.loader import make_spec


@pytest.fixture
def no_leaked_segments() -> Iterator[None]:
    before = own_segments()
    yield
    assert wait_until(lambda: own_segments() == before, WAIT_S), "a session left shared memory behind"


@pytest.fixture
def make_worker(request: pytest.FixtureRequest) -> Iterator[Callable[..., Worker]]:
    """``make_worker(handler, **spec)``: a Worker of ``handler`` (its make_spec options
    ``spec``), shut down at the test's end; its event is named for the test's module."""
    made: list[Worker] = []
    event_id = f"t-{request.module.__name__.rsplit('.', 1)[-1]}"

    def factory(handler: Any, **spec: Any) -> Worker:
        w = Worker(make_spec(handler, 0, **spec), event_id=event_id)
        made.append(w)
        return w

    yield factory
    for w in made:
        w.shutdown()
