"""runtime/guard/limits.py: every limit at its edge, release, expiry on an injected clock, the
memory bound, and a table of ICE candidates (what browsers and aiortc send, and what an
attacker would)."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from runtime.errors import ErrorCode, Refused
from runtime.front.statuses import http_headers, http_status
from runtime.guard import limits as L
from runtime.guard.limits import (
    AddressLimits,
    AdmissionState,
    LimitsConfig,
    PerSessionCount,
    TokenBucket,
    check_candidate_address,
    client_key,
)


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def refused(fn, *args, **kwargs) -> Refused:
    with pytest.raises(Refused) as info:
        fn(*args, **kwargs)
    return info.value


def limits(clock: FakeClock | None = None, **kw) -> AddressLimits:
    kw.setdefault("exempt_loopback", False)
    return AddressLimits(clock=clock or FakeClock(), **kw)


# --- TokenBucket ------------------------------------------------------------------------


def test_bucket_burst_then_rate():
    b = TokenBucket(2.0, 4, now=0.0)
    assert [b.take(now=0.0) for _ in range(5)] == [True, True, True, True, False]
    assert b.retry_after(now=0.0) == pytest.approx(0.5)
    assert not b.take(now=0.4)
    assert b.take(now=0.5)
    assert not b.take(now=0.5)
    # refills to the burst, never past it
    assert b.full(now=100.0)
    assert [b.take(now=100.0) for _ in range(5)] == [True] * 4 + [False]


def test_bucket_take_n_is_all_or_nothing():
    b = TokenBucket(1.0, 3, now=0.0)
    assert b.take(2, now=0.0)
    assert not b.take(2, now=0.0)
    assert b.tokens == pytest.approx(1.0)
    assert b.retry_after(5, now=0.0) == math.inf


def test_bucket_clock_going_back_neither_refills_nor_drains():
    b = TokenBucket(1.0, 2, now=10.0)
    assert b.take(2, now=10.0)
    assert not b.take(now=5.0)
    assert b.take(now=11.0)


def test_bucket_default_clock_is_monotonic_and_injectable():
    clock = FakeClock(0.0)
    b = TokenBucket(1.0, 1, clock=clock)
    assert b.take()
    assert not b.take()
    clock.advance(1.0)
    assert b.take()


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0), (math.inf, 1), (math.nan, 1), (1, math.nan)])
def test_bucket_rejects_bad_parameters(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_data_channel_and_input_defaults():
    cfg = LimitsConfig()
    dc = TokenBucket(cfg.data_channel_messages_per_s, cfg.data_channel_message_burst, now=0.0)
    assert sum(dc.take(now=0.0) for _ in range(200)) == L.DATA_CHANNEL_MESSAGE_BURST
    assert sum(dc.take(now=1.0) for _ in range(200)) == L.DATA_CHANNEL_MESSAGES_PER_S
    posts = TokenBucket(cfg.max_input_posts_per_s, cfg.input_post_burst, now=0.0)
    assert sum(posts.take(now=0.0) for _ in range(100)) == L.INPUT_POST_BURST


# --- client keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "key", "loopback"),
    [
        ("203.0.113.7", "203.0.113.7", False),
        ("127.0.0.1", "127.0.0.1", True),
        ("127.8.9.10", "127.8.9.10", True),
        ("::1", "::/64", True),
        ("::ffff:127.0.0.1", "127.0.0.1", True),
        ("::ffff:198.51.100.2", "198.51.100.2", False),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64", False),
        ("2001:DB8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64", False),
        ("fe80::1%eth0", "fe80::/64", False),
        ("testclient", "name:testclient", False),
        (None, "unknown", False),
        ("", "unknown", False),
    ],
)
def test_client_key(address, key, loopback):
    assert client_key(address) == L.ClientKey(key, loopback)


# --- AddressLimits ----------------------------------------------------------------------


def test_pending_offers_limit_and_release():
    lim = limits(max_pending=2, max_sessions=10, offers_per_min=100)
    a, b = lim.admit_offer("198.51.100.1"), lim.admit_offer("198.51.100.1")
    err = refused(lim.admit_offer, "198.51.100.1")
    assert (http_status(err), err.error) == (429, "too_many_pending_offers")
    assert http_headers(err)["Retry-After"] == str(L.PENDING_RETRY_AFTER_S)
    assert err.body()["meta"]["limit"] == 2
    # another address is not affected
    lim.admit_offer("198.51.100.2")
    a.connected()  # no longer pending: room for one more offer
    assert lim.holds("198.51.100.1") == (1, 1)
    c = lim.admit_offer("198.51.100.1")
    b.ended()
    c.ended()
    assert lim.holds("198.51.100.1") == (0, 1)


def test_sessions_limit_counts_pending_and_live():
    lim = limits(max_pending=4, max_sessions=3, offers_per_min=100)
    held = [lim.admit_offer("203.0.113.9") for _ in range(3)]
    held[0].connected()
    held[1].connected()
    err = refused(lim.admit_offer, "203.0.113.9")
    assert (http_status(err), err.error) == (429, "too_many_sessions")
    assert http_headers(err)["Retry-After"] == str(L.SESSIONS_RETRY_AFTER_S)
    held[0].ended()
    held[3:] = [lim.admit_offer("203.0.113.9")]
    for h in held:
        h.connected()
    assert lim.holds("203.0.113.9") == (0, 3)
    assert refused(lim.admit_offer, "203.0.113.9").error == "too_many_sessions"


def test_offer_rate_limited_and_window_expiry():
    clock = FakeClock()
    lim = limits(clock, max_pending=100, max_sessions=100, offers_per_min=30)
    for _ in range(30):
        lim.admit_offer("192.0.2.50").ended()
    err = refused(lim.admit_offer, "192.0.2.50")
    assert (http_status(err), err.error) == (429, "offer_rate_limited")
    assert http_headers(err)["Retry-After"] == "2"  # 60 s / 30 offers
    clock.advance(1.9)
    assert http_headers(refused(lim.admit_offer, "192.0.2.50"))["Retry-After"] == "1"
    clock.advance(0.1)
    lim.admit_offer("192.0.2.50").ended()
    assert refused(lim.admit_offer, "192.0.2.50").error == "offer_rate_limited"
    # after a minute of quiet the whole burst is back
    clock.advance(60.0)
    for _ in range(30):
        lim.admit_offer("192.0.2.50").ended()
    assert refused(lim.admit_offer, "192.0.2.50").error == "offer_rate_limited"


def test_refused_offers_do_not_charge_the_rate():
    lim = limits(max_pending=1, max_sessions=10, offers_per_min=2)
    first = lim.admit_offer("192.0.2.1")
    for _ in range(10):
        assert refused(lim.admit_offer, "192.0.2.1").error == "too_many_pending_offers"
    first.ended()
    lim.admit_offer("192.0.2.1")  # the second of the two per minute


def test_limit_order_pending_before_sessions_before_rate():
    lim = limits(max_pending=1, max_sessions=1, offers_per_min=1)
    a = lim.admit_offer("192.0.2.3")
    assert refused(lim.admit_offer, "192.0.2.3").error == "too_many_pending_offers"
    a.connected()
    assert refused(lim.admit_offer, "192.0.2.3").error == "too_many_sessions"
    a.ended()
    assert refused(lim.admit_offer, "192.0.2.3").error == "offer_rate_limited"


def test_ended_is_idempotent_and_releases_what_it_holds():
    lim = limits(max_pending=1, max_sessions=1, offers_per_min=100)
    a = lim.admit_offer("192.0.2.4")
    assert a.state is AdmissionState.PENDING
    a.ended()
    a.ended()
    a.connected()  # a late ICE event: holds nothing again
    assert a.state is AdmissionState.ENDED
    assert lim.holds("192.0.2.4") == (0, 0)
    b = lim.admit_offer("192.0.2.4")
    b.connected()
    b.connected()
    assert lim.holds("192.0.2.4") == (0, 1)
    b.ended()
    b.ended()
    assert lim.holds("192.0.2.4") == (0, 0)
    assert lim.stats().pending == 0 and lim.stats().live == 0
    lim.admit_offer("192.0.2.4")  # the count did not go negative: one more still fits...
    assert refused(lim.admit_offer, "192.0.2.4").error == "too_many_pending_offers"  # ...not two


def test_context_manager_ends_on_exception_only():
    lim = limits(max_pending=1, max_sessions=2, offers_per_min=100)
    with pytest.raises(RuntimeError), lim.admit_offer("192.0.2.5"):
        raise RuntimeError("the SDP was bad")
    assert lim.holds("192.0.2.5") == (0, 0)
    with lim.admit_offer("192.0.2.5") as adm:
        pass
    assert adm.state is AdmissionState.PENDING
    assert lim.holds("192.0.2.5") == (1, 0)


def test_loopback_exempt_only_when_asked():
    lim = limits(max_pending=1, max_sessions=1, offers_per_min=1, exempt_loopback=True)
    held = [lim.admit_offer(a) for a in ["127.0.0.1"] * 20 + ["::1"] * 20 + ["::ffff:127.0.0.1", "127.255.0.1"]]
    assert all(h.exempt for h in held)
    for h in held:
        h.connected()
        h.ended()
    assert lim.stats() == L.AddressStats(0, 0, 0, 0)
    # a non-loopback address is still limited
    lim.admit_offer("192.0.2.6")
    assert refused(lim.admit_offer, "192.0.2.6").error == "too_many_pending_offers"
    strict = limits(max_pending=1, max_sessions=1, offers_per_min=1, exempt_loopback=False)
    strict.admit_offer("127.0.0.1")
    assert refused(strict.admit_offer, "127.0.0.1").error == "too_many_pending_offers"
    assert refused(strict.admit_offer, "::ffff:127.0.0.1").error == "too_many_pending_offers"
    strict.admit_offer("::1")
    assert refused(strict.admit_offer, "::1").error == "too_many_pending_offers"


def test_ipv6_grouped_by_64():
    lim = limits(max_pending=2, max_sessions=10, offers_per_min=100)
    lim.admit_offer("2001:db8:aa:bb::1")
    lim.admit_offer("2001:db8:aa:bb:ffff:1234:5678:9abc")
    assert refused(lim.admit_offer, "2001:db8:aa:bb:1::1").error == "too_many_pending_offers"
    # the neighbouring /64 is someone else
    lim.admit_offer("2001:db8:aa:bc::1")
    assert lim.holds("2001:db8:aa:bb::42") == (2, 0)
    assert lim.stats().tracked == 2


def test_idle_entries_dropped_once_their_rate_is_forgotten():
    clock = FakeClock()
    lim = limits(clock, max_pending=4, max_sessions=4, offers_per_min=30)
    for i in range(50):
        lim.admit_offer(f"198.51.100.{i}").ended()
    assert lim.stats() == L.AddressStats(tracked=50, idle=50, pending=0, live=0)
    clock.advance(1.0)  # one offer each refills in 2 s: still remembered
    lim.admit_offer("203.0.113.1").ended()
    assert lim.stats().tracked == 51
    clock.advance(2.0)
    lim.admit_offer("203.0.113.1").ended()
    # the 50 are full again and gone (203.0.113.1 too, before its second offer made it anew)
    assert lim.stats() == L.AddressStats(tracked=1, idle=1, pending=0, live=0)


def test_busy_entries_are_never_dropped():
    clock = FakeClock()
    lim = limits(clock, max_pending=1, max_sessions=1, offers_per_min=30, max_tracked=2)
    live = lim.admit_offer("198.51.100.1")
    live.connected()
    clock.advance(3600.0)
    for i in range(10):
        lim.admit_offer(f"192.0.2.{i}").ended()
    assert lim.holds("198.51.100.1") == (0, 1)
    assert refused(lim.admit_offer, "198.51.100.1").error == "too_many_sessions"
    live.ended()
    lim.admit_offer("198.51.100.1")


def test_eviction_bound_keeps_memory_flat():
    clock = FakeClock()
    lim = limits(clock, max_pending=4, max_sessions=4, offers_per_min=30, max_tracked=100)
    for i in range(5000):  # all within one clock instant: nothing is full again
        lim.admit_offer(f"10.{i // 256 % 256}.{i % 256}.1").ended()
        assert lim.stats().tracked <= 100
    # the newest are remembered (still rate-limited), the oldest forgotten
    for _ in range(29):
        lim.admit_offer("10.19.135.1").ended()  # i = 4999
    assert refused(lim.admit_offer, "10.19.135.1").error == "offer_rate_limited"
    for _ in range(30):
        lim.admit_offer("10.0.0.1").ended()  # i = 0: evicted, a fresh allowance
    assert refused(lim.admit_offer, "10.0.0.1").error == "offer_rate_limited"


def test_busy_addresses_may_exceed_the_tracking_cap():
    lim = limits(max_pending=1, max_sessions=1, offers_per_min=30, max_tracked=3)
    held = [lim.admit_offer(f"192.0.2.{i}") for i in range(10)]
    assert lim.stats().tracked == 10 and lim.stats().pending == 10
    for h in held:
        h.ended()
    lim.admit_offer("198.51.100.1").ended()
    assert lim.stats().tracked <= 3


def test_from_config_and_constructor_checks():
    cfg = LimitsConfig(max_pending_offers_per_address=1, exempt_loopback=True)
    lim = AddressLimits.from_config(cfg, clock=FakeClock())
    assert (lim.max_pending, lim.max_sessions, lim.offers_per_min, lim.max_tracked) == (1, L.MAX_SESSIONS_PER_ADDRESS, L.MAX_OFFERS_PER_ADDRESS_PER_MIN, L.MAX_TRACKED_ADDRESSES)
    assert lim.exempt_loopback
    with pytest.raises(ValueError):
        AddressLimits(0, exempt_loopback=False)


def test_limits_config_defaults_and_strictness():
    cfg = LimitsConfig()
    assert cfg.max_pending_offers_per_address == 4
    assert cfg.max_sessions_per_address == 8
    assert cfg.max_offers_per_address_per_min == 30
    assert cfg.max_candidates_per_session == 64
    assert (cfg.data_channel_messages_per_s, cfg.data_channel_message_burst) == (50, 100)
    assert (cfg.max_input_posts_per_s, cfg.input_post_burst) == (20, 40)
    assert cfg.max_sse_readers_per_session == 4
    assert cfg.max_tracked_addresses == 100_000
    assert cfg.exempt_loopback is False and cfg.allow_loopback_candidates is False
    assert all(f.description for f in LimitsConfig.model_fields.values())
    for bad in ({"max_sessions_per_address": 0}, {"max_pending": 3}, {"max_sessions_per_address": "8"}, {"data_channel_messages_per_s": 0}):
        with pytest.raises(ValidationError):
            LimitsConfig(**bad)


# --- PerSessionCount --------------------------------------------------------------------


def test_candidates_count():
    c = PerSessionCount.candidates(limit=3)
    for _ in range(3):
        c.take()
    err = refused(c.take)
    assert (http_status(err), err.error, http_headers(err)) == (400, "too_many_candidates", {})
    assert c.count == 3
    assert PerSessionCount.candidates().limit == L.MAX_CANDIDATES_PER_SESSION


def test_readers_count_and_hold():
    r = PerSessionCount.readers(limit=2)
    with r.hold(), r.hold():
        err = refused(r.take)
        assert (http_status(err), err.error) == (429, "too_many_readers")
        assert http_headers(err)["Retry-After"] == str(L.READERS_RETRY_AFTER_S)
    assert r.count == 0
    with pytest.raises(KeyError), r.hold():  # a reader that fails still gives its place back
        raise KeyError
    assert r.count == 0
    r.release()  # never below zero
    assert r.count == 0
    assert PerSessionCount.readers().limit == L.MAX_SSE_READERS_PER_SESSION
    with pytest.raises(ValueError):
        PerSessionCount(0, code=ErrorCode.BAD_REQUEST, what="x")


# --- ICE candidates ---------------------------------------------------------------------

OK = None  # accepted
FORBIDDEN = "forbidden_candidate_address"
BAD = "bad_candidate"

CANDIDATES = [
    # (candidate, allow_loopback, expected reason, expected address_kind)
    # what aiortc/aioice send (Candidate.to_sdp) and browsers send
    ("candidate:0f8f6e4a 1 udp 2130706431 192.168.1.20 52310 typ host", False, OK, None),
    ("0f8f6e4a 1 udp 2130706431 192.168.1.20 52310 typ host", False, OK, None),
    ("candidate:842163049 1 udp 1677729535 203.0.113.77 61000 typ srflx raddr 192.168.1.20 rport 52310 generation 0 ufrag 4ZcD network-cost 999", False, OK, None),
    ("candidate:1 1 udp 16777215 198.51.100.3 3478 typ relay raddr 203.0.113.77 rport 61000", False, OK, None),
    ("candidate:2 1 udp 1845501695 203.0.113.5 40000 typ prflx raddr 0.0.0.0 rport 0", False, OK, None),
    ("candidate:3 1 tcp 1518280447 192.168.1.20 9 typ host tcptype active generation 0", False, OK, None),
    ("candidate:4 1 TCP 1518280447 10.1.2.3 443 typ host tcptype passive", False, OK, None),
    ("candidate:5 1 udp 2122260223 2001:db8:1::7 56143 typ host generation 0", False, OK, None),
    ("candidate:6 2 udp 2122260222 100.64.3.4 5000 typ host", False, OK, None),
    ("  candidate:7 1 udp 2122260223 172.16.0.9 56143 typ host  ", False, OK, None),
    # mDNS: browsers hide their host address
    ("candidate:3442447574 1 udp 2122260223 1f4712db-ea17-4bcf-a596-105139dfd8bf.local 54321 typ host generation 0 network-id 1", False, OK, None),
    ("candidate:8 1 udp 2122260223 ABCDEF.LOCAL 1 typ host", False, OK, None),
    # metadata and link-local
    ("candidate:9 1 udp 2122260223 169.254.169.254 80 typ host", False, FORBIDDEN, "link-local"),
    ("candidate:9 1 udp 2122260223 169.254.169.254 80 typ host", True, FORBIDDEN, "link-local"),
    ("candidate:10 1 udp 1677729535 169.254.0.1 5000 typ srflx raddr 10.0.0.1 rport 1", False, FORBIDDEN, "link-local"),
    ("candidate:11 1 udp 2122260223 fe80::1 5000 typ host", False, FORBIDDEN, "link-local"),
    ("candidate:12 1 udp 2122260223 fe80::1%eth0 5000 typ host", False, FORBIDDEN, "link-local"),
    ("candidate:13 1 udp 2122260223 febf:ffff::1 5000 typ host", False, FORBIDDEN, "link-local"),
    ("candidate:14 1 udp 2122260223 ::ffff:169.254.169.254 80 typ host", False, FORBIDDEN, "link-local"),
    ("candidate:15 1 udp 2122260223 fec0::1 5000 typ host", False, FORBIDDEN, "site-local"),
    # cloud metadata services outside 169.254/16, as host, srflx or relay, and IPv4-mapped
    ("candidate:40 1 udp 2122260223 100.100.100.200 80 typ host", False, FORBIDDEN, "metadata"),
    ("candidate:41 1 udp 1677729535 100.100.100.200 80 typ srflx raddr 10.0.0.1 rport 1", True, FORBIDDEN, "metadata"),
    ("candidate:42 1 udp 2122260223 192.0.0.192 80 typ host", False, FORBIDDEN, "metadata"),
    ("candidate:43 1 udp 16777215 168.63.129.16 80 typ relay raddr 1.2.3.4 rport 1", False, FORBIDDEN, "metadata"),
    ("candidate:44 1 udp 2122260223 fd00:ec2::254 80 typ host", False, FORBIDDEN, "metadata"),
    ("candidate:45 1 udp 2122260223 FD00:0EC2:0000::0254 80 typ host", False, FORBIDDEN, "metadata"),
    ("candidate:46 1 udp 2122260223 fd00:ec2::253 53 typ host", False, FORBIDDEN, "metadata"),
    ("candidate:47 1 udp 2122260223 ::ffff:100.100.100.200 80 typ host", False, FORBIDDEN, "metadata"),
    ("candidate:48 1 udp 2122260223 ::ffff:192.0.0.192 80 typ host", False, FORBIDDEN, "metadata"),
    # their neighbours are ordinary addresses
    ("candidate:49 1 udp 2122260223 100.100.100.201 80 typ host", False, OK, None),
    ("candidate:50 1 udp 2122260223 192.0.0.193 80 typ host", False, OK, None),
    ("candidate:51 1 udp 2122260223 fd00:ec2::1:254 80 typ host", False, OK, None),
    # loopback: only where allowed
    ("candidate:16 1 udp 2122260223 127.0.0.1 5000 typ host", False, FORBIDDEN, "loopback"),
    ("candidate:16 1 udp 2122260223 127.0.0.1 5000 typ host", True, OK, None),
    ("candidate:17 1 udp 2122260223 127.1.2.3 5000 typ host", False, FORBIDDEN, "loopback"),
    ("candidate:18 1 udp 2122260223 ::1 5000 typ host", False, FORBIDDEN, "loopback"),
    ("candidate:18 1 udp 2122260223 ::1 5000 typ host", True, OK, None),
    ("candidate:19 1 udp 2122260223 ::ffff:127.0.0.1 5000 typ host", False, FORBIDDEN, "loopback"),
    ("candidate:19 1 udp 2122260223 ::ffff:127.0.0.1 5000 typ host", True, OK, None),
    # unspecified
    ("candidate:20 1 udp 2122260223 0.0.0.0 5000 typ host", False, FORBIDDEN, "unspecified"),
    ("candidate:20 1 udp 2122260223 0.0.0.0 5000 typ host", True, FORBIDDEN, "unspecified"),
    ("candidate:21 1 udp 2122260223 0.1.2.3 5000 typ host", False, FORBIDDEN, "unspecified"),
    ("candidate:22 1 udp 2122260223 :: 5000 typ host", False, FORBIDDEN, "unspecified"),
    # multicast, broadcast, reserved
    ("candidate:23 1 udp 2122260223 224.0.0.1 5000 typ host", False, FORBIDDEN, "multicast"),
    ("candidate:24 1 udp 2122260223 239.255.255.250 1900 typ host", False, FORBIDDEN, "multicast"),
    ("candidate:25 1 udp 2122260223 ff02::1 5000 typ host", False, FORBIDDEN, "multicast"),
    ("candidate:26 1 udp 2122260223 255.255.255.255 5000 typ host", False, FORBIDDEN, "reserved"),
    ("candidate:27 1 udp 2122260223 240.0.0.1 5000 typ host", False, FORBIDDEN, "reserved"),
    ("candidate:28 1 udp 2122260223 64:ff9b::a9fe:a9fe 80 typ host", False, FORBIDDEN, "reserved"),
    ("candidate:29 1 udp 2122260223 ::127.0.0.1 80 typ host", True, FORBIDDEN, "reserved"),
    # names other than mDNS: their DNS answer is the client's to choose
    ("candidate:30 1 udp 2122260223 metadata.google.internal 80 typ host", False, FORBIDDEN, "hostname"),
    ("candidate:31 1 udp 2122260223 localhost 5000 typ host", True, FORBIDDEN, "hostname"),
    ("candidate:32 1 udp 2122260223 evil.example.com 5000 typ host", False, FORBIDDEN, "hostname"),
    ("candidate:33 1 udp 2122260223 .local 5000 typ host", False, FORBIDDEN, "hostname"),
    ("candidate:34 1 udp 2122260223 -bad-.local 5000 typ host", False, FORBIDDEN, "hostname"),
    ("candidate:35 1 udp 2122260223 a.local.evil.com 5000 typ host", False, FORBIDDEN, "hostname"),
    # garbage
    ("", False, BAD, None),
    ("   ", False, BAD, None),
    ("candidate:", False, BAD, None),
    ("garbage", False, BAD, None),
    ("candidate:1 1 udp 2122260223 192.168.1.20 5000 typ", False, BAD, None),
    ("candidate:1 1 udp 2122260223 192.168.1.20 5000 host srflx", False, BAD, None),
    ("candidate:1 1 udp 2122260223 192.168.1.20 5000 typ bogus", False, BAD, None),
    ("candidate:1 1 sctp 2122260223 192.168.1.20 5000 typ host", False, BAD, None),
    ("candidate:1 x udp 2122260223 192.168.1.20 5000 typ host", False, BAD, None),
    ("candidate:1 0 udp 2122260223 192.168.1.20 5000 typ host", False, BAD, None),
    ("candidate:1 1 udp 2122260223 192.168.1.20 65536 typ host", False, BAD, None),
    ("candidate:1 1 udp 2122260223 192.168.1.20 -1 typ host", False, BAD, None),
    ("candidate:1 1 udp 2122260223 192.168.1.20 port typ host", False, BAD, None),
    ("candidate:1 1 udp prio 192.168.1.20 5000 typ host", False, BAD, None),
    ("candidate:1 1 udp 2122260223 192.168.1.20 5000 typ srflx raddr 1.2.3.4 rport x", False, BAD, None),
    ("candidate:1 1 udp 2122260223 192.168.1.20 5000 typ host " + "x " * 600, False, BAD, None),
    ("candidate:1 1 udp 2122260223 192.168.1.20 5000 typ host\x00", False, BAD, None),
]


@pytest.mark.parametrize(("candidate", "allow_loopback", "reason", "kind"), CANDIDATES)
def test_candidate_address_table(candidate, allow_loopback, reason, kind):
    if reason is None:
        assert check_candidate_address(candidate, allow_loopback=allow_loopback) is None
        return
    err = refused(check_candidate_address, candidate, allow_loopback=allow_loopback)
    assert (http_status(err), err.error) == (400, reason)
    if kind is not None:
        assert err.body()["meta"]["address_kind"] == kind


@pytest.mark.parametrize("value", [None, 5, b"candidate:1 1 udp 1 1.2.3.4 5 typ host", ["x"], {"candidate": "x"}])
def test_candidate_not_a_string(value):
    assert refused(check_candidate_address, value, allow_loopback=False).error == BAD


def test_candidate_table_is_large_enough_and_parses_like_aiortc():
    from aiortc.sdp import candidate_from_sdp

    assert len(CANDIDATES) >= 30
    # whatever this module accepts, aiortc's own parser accepts too
    for candidate, _allow, reason, _kind in CANDIDATES:
        if reason is None:
            text = candidate.strip().removeprefix("candidate:")
            ice = candidate_from_sdp(text)
            assert ice.ip and ice.port >= 0


def test_candidate_every_truncation_is_a_400():
    full = "candidate:842163049 1 udp 1677729535 203.0.113.77 61000 typ srflx raddr 192.168.1.20 rport 52310"
    for n in range(len(full)):
        try:
            check_candidate_address(full[:n], allow_loopback=False)
        except Refused as err:
            assert http_status(err) == 400 and err.error in (BAD, FORBIDDEN)
