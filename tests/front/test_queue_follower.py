"""runtime/front/queue_follower.py's bounds on update streams, without a scheduler: per
ticket, per client address (exempt loopback uncounted), released once."""

from __future__ import annotations

import pytest

from runtime.errors import ErrorCode, Refused
from runtime.front.queue_follower import QueueFollower
from runtime.front.statuses import http_headers, http_status


def follower(per_ticket: int = 2, per_address: int = 3, exempt_loopback: bool = False) -> QueueFollower:
    return QueueFollower(lambda: None, per_ticket, per_address, exempt_loopback=exempt_loopback)


def test_streams_per_ticket_are_bounded():
    f = follower(per_ticket=2, per_address=10)
    first = f.admit("T1", "203.0.113.1")
    f.admit("T1", "198.51.100.1")  # another address, same ticket
    with pytest.raises(Refused) as refused:
        f.admit("T1", "192.0.2.1")
    assert refused.value.code == ErrorCode.TOO_MANY_QUEUE_STREAMS and http_status(refused.value) == 429
    assert int(http_headers(refused.value)["Retry-After"]) >= 1
    assert f.held == (2, 2), "a refused stream holds nothing"
    first.release()
    first.release()
    assert f.held == (1, 1)
    f.admit("T1", "192.0.2.1")


def test_streams_per_address_are_bounded_across_tickets():
    f = follower(per_ticket=2, per_address=3)
    holds = [f.admit(f"T{i}", "203.0.113.1") for i in range(3)]
    with pytest.raises(Refused) as refused:
        f.admit("T9", "203.0.113.1")
    assert "client address" in refused.value.message
    assert f.held == (3, 3), "the refused ticket's count was given back"
    f.admit("T9", "198.51.100.1")
    for hold in holds:
        hold.release()
    f.admit("T9", "203.0.113.1")


def test_a_socket_client_and_an_exempt_loopback_count_on_their_ticket_only():
    f = follower(per_ticket=5, per_address=1, exempt_loopback=True)
    for i in range(3):
        f.admit(f"L{i}", "127.0.0.1")
        f.admit(f"W{i}", None)  # a WebSocket client's own line: its socket is bounded
    assert f.held == (6, 0)
