"""runtime/guard/socket_limits.py: counts per key at their edge, release once, addresses
counted as the per-address limits count them, and the config keys' bounds."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from runtime.config_loader import load_config
from runtime.errors import ErrorCode, Refused
from runtime.front.statuses import close_code, http_headers, http_status
from runtime.guard.socket_limits import (
    MAX_UNSTARTED_SOCKETS_PER_ADDRESS,
    HoldCounter,
    SocketsConfig,
)


def counter(limit: int = 2) -> HoldCounter:
    return HoldCounter(limit, code=ErrorCode.TOO_MANY_UNSTARTED_SOCKETS, what="sockets that have not sent 'start'", per="client address")


def test_a_key_holds_at_most_the_limit_and_a_release_frees_one_once():
    c = counter(2)
    first, _ = c.take("a"), c.take("a")
    with pytest.raises(Refused) as refused:
        c.take("a")
    err = refused.value
    assert err.code == ErrorCode.TOO_MANY_UNSTARTED_SOCKETS and err.body()["meta"]["limit"] == 2
    assert (http_status(err), close_code(err)) == (429, 4429) and int(http_headers(err)["Retry-After"]) >= 1
    assert c.take("b") is not None, "another key is not affected"
    first.release()
    first.release()  # twice: still one
    assert c.held("a") == 1
    c.take("a")
    with pytest.raises(Refused):
        c.take("a")


def test_only_keys_holding_something_are_kept():
    c = counter(3)
    holds = [c.take(f"k{i}") for i in range(100)]
    assert c.total == 100
    for hold in holds:
        hold.release()
    assert c.total == 0 and c._held == {}


def test_addresses_are_counted_as_the_per_address_limits_count_them():
    c = counter(1)
    c.take_for_address("2001:db8::1", exempt_loopback=False)
    with pytest.raises(Refused):  # the same /64
        c.take_for_address("2001:db8::2", exempt_loopback=False)
    c.take_for_address("203.0.113.7", exempt_loopback=False)
    with pytest.raises(Refused):  # IPv4 through a dual-stack socket is the IPv4 address
        c.take_for_address("::ffff:203.0.113.7", exempt_loopback=False)
    for _ in range(5):  # an exempt loopback client holds nothing
        c.take_for_address("127.0.0.1", exempt_loopback=True)
    assert c.held("127.0.0.1") == 0
    c.take_for_address("127.0.0.1", exempt_loopback=False)
    with pytest.raises(Refused):
        c.take_for_address("127.0.0.1", exempt_loopback=False)


def test_the_config_keys():
    cfg = load_config()
    assert cfg.sockets.max_unstarted_per_address == MAX_UNSTARTED_SOCKETS_PER_ADDRESS
    assert load_config(overrides={"sockets": {"start_timeout_s": 2.5}}).sockets.start_timeout_s == 2.5
    with pytest.raises(ValidationError):
        SocketsConfig(max_unstarted_per_address=0)
    with pytest.raises(ValidationError):
        SocketsConfig(start_timeout_s=0.0)
    assert cfg.queue.max_update_streams_per_ticket >= 1 and cfg.telephone.max_call_tokens_per_address >= 1
