"""runtime/front/twilio.py CallTokens and the webhook's helpers, without a server: call
tokens are bounded per address and in all without forgetting an announced call; a token
is single-use; an expired one frees its place; client strings reach the log escaped."""

from __future__ import annotations

import time

import pytest

from runtime.config_loader import load_config
from runtime.errors import ErrorCode, Refused
from runtime.front.statuses import http_headers, http_status
from runtime.front.twilio import CallTokens, unsigned_refused
from runtime.ops.logs import shown

ATTACKER, CALLER = "203.0.113.66", "198.51.100.7"


def test_an_address_holds_at_most_its_outstanding_call_tokens():
    tokens = CallTokens(max_per_address=3)
    minted = [tokens.mint("audio", ATTACKER) for _ in range(3)]
    with pytest.raises(Refused) as refused:
        tokens.mint("audio", ATTACKER)
    assert refused.value.code == ErrorCode.TOO_MANY_CALL_TOKENS and http_status(refused.value) == 429
    assert int(http_headers(refused.value)["Retry-After"]) >= 1
    assert tokens.spend(tokens.mint("audio", CALLER)) == (True, "audio"), "another address is not affected"
    assert tokens.spend(minted[0]) == (True, "audio")
    assert tokens.spend(minted[0]) == (False, None), "single use"
    assert tokens.outstanding(ATTACKER) == 2
    tokens.mint("audio", ATTACKER)  # the spent one's place


def test_a_full_book_refuses_new_calls_and_keeps_every_announced_one():
    tokens = CallTokens(max_per_address=100, max_tokens=3)
    announced = [tokens.mint(None, f"198.51.100.{i}") for i in range(3)]
    for _ in range(5):
        with pytest.raises(Refused) as refused:
            tokens.mint(None, ATTACKER)
        assert refused.value.code == ErrorCode.TOO_MANY_CALL_TOKENS
    assert [tokens.spend(t) for t in announced] == [(True, None)] * 3, "a flood evicted a real caller's token"
    assert len(tokens) == 0


def test_expired_tokens_free_their_places():
    tokens = CallTokens(max_per_address=1, ttl_s=0.01)
    stale = tokens.mint(None, ATTACKER)
    time.sleep(0.02)
    fresh = tokens.mint(None, ATTACKER)  # the expired one no longer counts
    assert tokens.outstanding(ATTACKER) == 1 and len(tokens) == 1
    assert tokens.spend(stale) == (False, None)
    tokens.spend(fresh)  # live or expired by now: either way it is gone and uncounted
    assert tokens.outstanding(ATTACKER) == 0 and len(tokens) == 0


def test_exempt_loopback_is_not_counted():
    tokens = CallTokens(max_per_address=1, exempt_loopback=True)
    for _ in range(3):
        tokens.mint(None, "127.0.0.1")
    assert tokens.outstanding("127.0.0.1") == 0


def test_unsigned_webhooks_are_refused_whenever_auth_is_on():
    assert not unsigned_refused(load_config(overrides={"gateway": {"auth": {"mode": "none"}}}))
    for mode in ("bearer", "join_token", "gradio"):
        assert unsigned_refused(load_config(overrides={"gateway": {"auth": {"mode": mode}}}))


def test_a_client_string_in_a_log_line_is_one_escaped_bounded_line():
    forged = "x\n2026-12-07 05:00:00,000 CRITICAL rtcpool: forged\r\x1b[2J"
    out = shown(forged)
    assert "\n" not in out and "\r" not in out and "\x1b" not in out and out.startswith("'x\\n")
    long = shown("y" * 1_000_000, 80)
    assert len(long) <= 80 + 5 and long.endswith("...")
    assert shown({"event": "a\nb"}) == repr({"event": "a\nb"})


def test_a_gradio_login_also_turns_unsigned_webhooks_away():
    """auth mode none on a Gradio app launched with auth=: the routes take its login, so an
    unsigned webhook is no way around it either."""
    from types import SimpleNamespace

    from gradio.routes import App

    config = load_config(overrides={"gateway": {"auth": {"mode": "none"}}})
    app = App.__new__(App)  # as launch() makes it, without serving it
    app.auth, app.auth_dependency = None, None
    request = SimpleNamespace(scope={"app": app})
    assert not unsigned_refused(config, request)  # type: ignore[arg-type]
    app.auth = [("user", "password")]
    assert unsigned_refused(config, request)  # type: ignore[arg-type]
