"""runtime/guard/limits.py AddressRate: the per-address bucket on requests about sessions
(close, input, candidates, outputs), charged before any Ray call."""

from __future__ import annotations

import pytest

from runtime.errors import ErrorCode, Refused
from runtime.front.statuses import http_headers, http_status
from runtime.guard.limits import AddressRate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rate(clock: Clock, **kwargs) -> AddressRate:
    options = {"exempt_loopback": False, "max_tracked": 100, **kwargs}
    return AddressRate(10.0, 5, code=ErrorCode.SESSION_REQUEST_RATE_LIMITED, what="requests about sessions", clock=clock, **options)


def test_a_burst_then_the_rate_per_address_others_unaffected():
    clock = Clock()
    r = rate(clock)
    for _ in range(5):
        r.take("203.0.113.9")
    with pytest.raises(Refused) as info:
        r.take("203.0.113.9")
    err = info.value
    assert (http_status(err), err.error) == (429, "session_request_rate_limited")
    assert http_headers(err)["Retry-After"] == "1"
    r.take("203.0.113.10")  # another address has its own bucket
    clock.now += 0.1  # one token back at 10/s
    r.take("203.0.113.9")
    with pytest.raises(Refused):
        r.take("203.0.113.9")


def test_ipv6_counts_per_64_and_loopback_may_be_exempt():
    clock = Clock()
    r = rate(clock)
    for i in range(5):
        r.take(f"2001:db8::{i + 1}")
    with pytest.raises(Refused):
        r.take("2001:db8::ffff")
    exempt = rate(clock, exempt_loopback=True)
    for _ in range(50):
        exempt.take("127.0.0.1")
    assert exempt.tracked == 0


def test_memory_is_bounded_full_buckets_forgotten():
    clock = Clock()
    r = rate(clock, max_tracked=3)
    for i in range(10):
        r.take(f"198.51.100.{i}")
    assert r.tracked == 3
    clock.now += 10  # all full again: as good as none
    r.take("198.51.100.200")
    assert r.tracked == 1
