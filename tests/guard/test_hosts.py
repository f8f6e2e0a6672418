"""runtime/guard/hosts.py and its use by SignallingAuth: the Host allow-list against DNS
rebinding (a page of evil.example rebinds its name to 127.0.0.1 and sends Host and Origin
both evil.example), and who counts as an operator for GET /webrtc/sessions."""

from __future__ import annotations

import pytest

from runtime.config_loader import ConfigError, load_config
from runtime.errors import Refused
from runtime.front.statuses import http_status
from runtime.guard.auth import AuthConfig, AuthConfigError, AuthGrant, SignallingAuth
from runtime.guard.hosts import HostAllowList, default_hosts, normalize_host_pattern

OPERATOR = "an-operator-token-of-32-chars!!!"
REBINDING = {"Origin": "http://evil.example:7860"}


def refused(fn, *args, **kwargs) -> Refused:
    with pytest.raises(Refused) as info:
        fn(*args, **kwargs)
    return info.value


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:7860", "127.0.0.1", "[::1]:7860", "10.0.0.5:80", "localhost:7860", "LOCALHOST",
        "app.localhost:7860", "example.com", "example.com.:443", "a.b.sub.example.org", "sub.example.org",
    ],
)  # fmt: skip
def test_allowed_hosts(host):
    HostAllowList(["example.com", "*.sub.example.org"]).check(host)


@pytest.mark.parametrize(
    "host",
    ["evil.example:7860", "example.com.evil.example", "notexample.com", "localhost.evil.example", "x" * 300, "[bad", "a b"],
)
def test_refused_hosts_are_421_host_not_allowed(host):
    err = refused(HostAllowList(["example.com", ".sub.example.org"]).check, host)
    assert (http_status(err), err.error) == (421, "host_not_allowed")
    assert "gateway.allowed_hosts" in err.message


def test_star_allows_any_name_and_no_host_is_allowed():
    HostAllowList(["*"]).check("evil.example")
    HostAllowList([]).check(None)


@pytest.mark.parametrize("bad", ["http://example.com", "example.com:80", "example.com/x", "", "*.", "a*b.com"])
def test_patterns_that_are_urls_are_config_errors(bad):
    with pytest.raises(ValueError, match="not a host name"):
        normalize_host_pattern(bad)
    with pytest.raises(ConfigError, match="gateway.allowed_hosts"):
        load_config(overrides={"gateway": {"allowed_hosts": [bad]}})


def test_default_hosts_are_the_bind_name_and_the_public_urls_host():
    assert default_hosts("0.0.0.0", None) == []
    assert default_hosts("127.0.0.1", None) == []  # an IP is allowed anyway
    assert default_hosts("media.internal", "https://calls.example.com/app") == ["media.internal", "calls.example.com"]


def test_the_gateways_check_refuses_a_rebinding_page_in_auth_none():
    """Before: Origin equal to Host passed the Origin rule, and auth none let it in."""
    a = load_config().gateway.signalling_auth()
    err = refused(a.check, REBINDING, host="evil.example:7860", stream_id=None)
    assert (http_status(err), err.error) == (421, "host_not_allowed")
    # the same page on the server's own address is the app's own origin, as before
    assert a.check({"Origin": "http://127.0.0.1:7860"}, host="127.0.0.1:7860", stream_id=None) == AuthGrant("none")
    listed = load_config(overrides={"gateway": {"allowed_hosts": ["evil.example"]}}).gateway.signalling_auth()
    assert listed.check(REBINDING, host="evil.example:7860", stream_id=None) == AuthGrant("none")
    public = load_config(overrides={"telephone": {"public_url": "https://evil.example"}}).gateway
    public.signalling_auth("https://evil.example").check(REBINDING, host="evil.example:7860", stream_id=None)


async def test_the_host_is_checked_before_credentials_in_gradio_mode_too():
    from starlette.requests import Request

    a = SignallingAuth(AuthConfig(mode="gradio"), hosts=HostAllowList([]))
    scope = {"type": "http", "headers": [(b"host", b"evil.example")], "app": None}
    with pytest.raises(Refused) as info:
        await a.check_request(Request(scope), stream_id=None)
    assert info.value.error == "host_not_allowed"


# --- operators -------------------------------------------------------------------------


def test_an_operator_token_gets_in_in_token_modes_and_says_operator():
    env = {"RTCPOOL_JOIN_SECRET": "s" * 32, "RTCPOOL_OPERATOR_TOKENS": OPERATOR}
    a = SignallingAuth(AuthConfig(mode="join_token"), environ=env)
    grant = a.check({"Authorization": f"Bearer {OPERATOR}"}, host=None, stream_id=None)
    assert grant.operator and a.is_operator(grant, {}, "203.0.113.9")
    ordinary = a.check({"Authorization": f"Bearer {a.mint_join_token()}"}, host=None, stream_id=None)
    assert not ordinary.operator
    assert not a.is_operator(ordinary, {}, "203.0.113.9")


def test_a_direct_loopback_client_is_an_operator_a_proxied_one_is_not():
    a = SignallingAuth(AuthConfig(), environ={})
    grant = AuthGrant("none")
    assert a.is_operator(grant, {}, "127.0.0.1")
    assert a.is_operator(grant, {}, "::1")
    assert not a.is_operator(grant, {"X-Forwarded-For": "203.0.113.9"}, "127.0.0.1")
    assert not a.is_operator(grant, {"forwarded": "for=203.0.113.9"}, "127.0.0.1")
    assert not a.is_operator(grant, {}, "203.0.113.9")
    assert not a.is_operator(grant, {}, None)
    assert not a.is_operator(grant, {"Authorization": "Bearer not-the-operator-token-at-all"}, "203.0.113.9")


def test_operator_tokens_in_auth_none_still_say_operator():
    a = SignallingAuth(AuthConfig(), environ={"RTCPOOL_OPERATOR_TOKENS": OPERATOR})
    assert a.is_operator(AuthGrant("none"), {"Authorization": f"Bearer {OPERATOR}"}, "203.0.113.9")


def test_short_operator_tokens_are_a_config_error():
    with pytest.raises(AuthConfigError, match="operator token"):
        SignallingAuth(AuthConfig(), environ={"RTCPOOL_OPERATOR_TOKENS": "short"})
