"""Fixtures of the link's tests (helpers in ``pair.py``). The leak check is opted into per
module (``pytestmark``): every test of the channel, its framings, segments and handshake
checks on the way out that no segment this process created is left in /dev/shm.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.workers.link.blocking import socket_pair
from tests.workers.link.pair import (
    SMALL,
    Link,
    RawPeer,
    Side,
    make_link,
    own_segments,
)
from workers.link.channel import FrameChannel
from workers.link.shm import Segment


@pytest.fixture
def no_leaked_segments() -> Iterator[None]:
    before = own_segments()
    yield
    assert own_segments() == before, "a test left shared memory behind"


@pytest.fixture(params=["shm", "tcp"])
def link(request: pytest.FixtureRequest) -> Iterator[Link]:
    lk = make_link(tcp=request.param == "tcp")
    yield lk
    lk.close()


@pytest.fixture
def raw() -> Iterator[RawPeer]:
    sa, sb = socket_pair()
    up = Segment.create(SMALL)
    down = Segment.create(SMALL)
    side = Side()
    side.ch = FrameChannel(sb, tx=down, rx=up, **side.callbacks())
    peer = RawPeer(side, sa, tx=up, rx=down)
    yield peer
    side.ch.close(notify=False)
    sa.close()


@pytest.fixture
def tcp_link() -> Iterator[Link]:
    lk = make_link(tcp=True)
    yield lk
    lk.close()
