"""Bounds on what a client can make the gateway hold: pure bookkeeping, no I/O.

* :class:`AddressLimits` -- per client address: offers pending (posted, not yet connected
  or ended), live sessions, and offers per minute. One instance per front process; the
  offer route takes an :class:`Admission` before any lease or worker is asked for.
* :class:`TokenBucket` -- a rate with a burst: data-channel messages and input posts per
  session.
* :class:`PerSessionCount` -- a plain count with a ceiling: ICE candidates and SSE readers
  per session.
* :func:`check_candidate_address` -- an ICE candidate may not point the gateway's ICE
  checks at link-local (the cloud metadata service lives at 169.254.169.254) or the other
  cloud metadata addresses (:data:`CLOUD_METADATA_NETWORKS`), unspecified, multicast or
  reserved addresses, nor at loopback outside the local config.

Every refusal is a :class:`runtime.errors.Refused` with its code. Limits are per
front process: several gateways behind one load balancer each count their own clients.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from aioice import Candidate
from pydantic import BaseModel, ConfigDict, Field

from runtime import constants as C
from runtime.errors import ErrorCode, Refused

# --- per client address -----------------------------------------------------------------
MAX_PENDING_OFFERS_PER_ADDRESS = 4  # offers posted and not yet connected or ended
MAX_SESSIONS_PER_ADDRESS = 8  # live sessions, pending offers included (each may become one)
MAX_OFFERS_PER_ADDRESS_PER_MIN = 30  # offers admitted per minute (token bucket, burst = this)
MAX_TRACKED_ADDRESSES = 100_000  # idle addresses remembered (~250 bytes each) before eviction
# IPv6 clients are grouped by /64: one subscriber usually gets a whole /64 (RFC 6177), so
# counting single addresses would let one client rotate through 2^64 of them
IPV6_CLIENT_PREFIX_BITS = 64
SECONDS_PER_MIN = 60.0
# Retry-After of a too_many_pending_offers: a pending offer connects or times out within
# CONNECT_TIMEOUT_S, most within a second or two
PENDING_RETRY_AFTER_S = C.RETRY_AFTER_S
# Retry-After of a too_many_sessions: sessions last minutes; asking back sooner is noise
SESSIONS_RETRY_AFTER_S = 30
MAX_ADDRESS_KEY_CHARS = 64  # a non-IP client "address" (a test client's name) is cut to this
# requests about a session (close, input, candidates, outputs) per address: each may cost a
# Ray call to the session directory (~1 ms of the scheduler's, and 300 arrive in 0.9 s from
# one address). A page sends a handful per second; a slider drag is the most, at the
# per-session input rate below
SESSION_REQUESTS_PER_ADDRESS_PER_S = 20.0  # sustained, requests per second
SESSION_REQUEST_BURST_PER_ADDRESS = 40  # requests at once above that rate (a browser's trickled candidates, ~2-20)

# --- per session ------------------------------------------------------------------------
MAX_CANDIDATES_PER_SESSION = 64  # trickled ICE candidates; a browser sends 2-20
DATA_CHANNEL_MESSAGES_PER_S = 50.0  # sustained client messages per second on the data channel
DATA_CHANNEL_MESSAGE_BURST = 100  # messages a client may send at once above that rate
MAX_INPUT_POSTS_PER_S = 20.0  # sustained POST /webrtc/input per session per second (a slider drag)
INPUT_POST_BURST = 40  # input posts at once above that rate
MAX_SSE_READERS_PER_SESSION = 4  # concurrent output streams of one session (tabs, reconnects)
READERS_RETRY_AFTER_S = C.RETRY_AFTER_S  # a reader that went away is noticed at its next keep-alive

# --- ICE candidates ---------------------------------------------------------------------
MAX_CANDIDATE_CHARS = 1024  # a browser's candidate attribute is ~100-250 characters
CANDIDATE_PREFIX = "candidate:"
CANDIDATE_TYPES = frozenset({"host", "srflx", "prflx", "relay"})  # RFC 8445 section 5.1.1.1
CANDIDATE_TRANSPORTS = frozenset({"udp", "tcp"})  # RFC 6544 adds tcp; aiortc itself uses udp
MAX_CANDIDATE_COMPONENT = 256  # RFC 8445: a component id is 1-256
MAX_CANDIDATE_PRIORITY = 2**31 - 1  # RFC 8445 section 5.1.2.1
CANDIDATE_FIELDS = 8  # foundation component transport priority address port "typ" type
# a browser hides its host address behind "<uuid>.local" (mDNS, RFC 6762); aioice resolves it
MDNS_HOSTNAME_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+local\.?$", re.IGNORECASE)
# 0.0.0.0/8 is "this network": Linux sends to 0.0.0.0 as to loopback
THIS_NETWORK_V4 = ipaddress.ip_network("0.0.0.0/8")
# Cloud metadata and platform services outside 169.254/16 (which is refused as link-local,
# and holds AWS's, GCP's, Azure's and most others' 169.254.169.254): an ICE check is a UDP
# packet the gateway sends from inside the cloud, so a candidate here points it at the
# host's credentials service.
CLOUD_METADATA_NETWORKS = (
    ipaddress.ip_network("100.100.100.200/32"),  # Alibaba Cloud metadata
    ipaddress.ip_network("192.0.0.192/32"),  # Oracle Cloud metadata (its legacy address)
    ipaddress.ip_network("168.63.129.16/32"),  # Azure WireServer (the host's agent channel)
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS instance metadata over IPv6
    ipaddress.ip_network("fd00:ec2::253/128"),  # AWS's VPC DNS resolver over IPv6
    ipaddress.ip_network("fd00:ec2::123/128"),  # AWS's time service over IPv6
)


class LimitsConfig(BaseModel):
    """``gateway.limits``: what one client may make the gateway hold. Over a limit: 429 or
    400 with a JSON reason (data channel: a warning), and only the offending session ends."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_pending_offers_per_address: int = Field(
        MAX_PENDING_OFFERS_PER_ADDRESS,
        ge=1,
        description="offers posted and not yet connected or ended, per client address (IPv6: per /64)",
    )
    max_sessions_per_address: int = Field(
        MAX_SESSIONS_PER_ADDRESS,
        ge=1,
        description="live sessions plus pending offers per client address (IPv6: per /64)",
    )
    max_offers_per_address_per_min: int = Field(
        MAX_OFFERS_PER_ADDRESS_PER_MIN,
        ge=1,
        description="offers admitted per client address per minute (a burst of this many, then this rate)",
    )
    max_tracked_addresses: int = Field(
        MAX_TRACKED_ADDRESSES,
        ge=1,
        description="idle client addresses remembered for the offer rate; the oldest idle one is forgotten first",
    )
    exempt_loopback: bool = Field(
        False,
        description=(
            "leave clients at 127.0.0.0/8 and ::1 out of the per-address limits (the embedded "
            "local config: benchmarks and tests open many sessions from loopback)"
        ),
    )
    session_requests_per_address_per_s: float = Field(
        SESSION_REQUESTS_PER_ADDRESS_PER_S,
        gt=0,
        description="sustained requests about a session (close, input, candidates, outputs) per client address per second",
    )
    session_request_burst_per_address: int = Field(
        SESSION_REQUEST_BURST_PER_ADDRESS, ge=1, description="requests about a session at once above that rate, per client address"
    )
    max_candidates_per_session: int = Field(
        MAX_CANDIDATES_PER_SESSION, ge=1, description="trickled ICE candidates per session"
    )
    allow_loopback_candidates: bool = Field(
        False,
        description="accept ICE candidates at loopback addresses (the embedded local config only)",
    )
    data_channel_messages_per_s: float = Field(
        DATA_CHANNEL_MESSAGES_PER_S, gt=0, description="sustained data-channel messages per session per second"
    )
    data_channel_message_burst: int = Field(
        DATA_CHANNEL_MESSAGE_BURST, ge=1, description="data-channel messages at once above that rate"
    )
    max_input_posts_per_s: float = Field(
        MAX_INPUT_POSTS_PER_S, gt=0, description="sustained POST /webrtc/input per session per second"
    )
    input_post_burst: int = Field(INPUT_POST_BURST, ge=1, description="input posts at once above that rate")
    max_sse_readers_per_session: int = Field(
        MAX_SSE_READERS_PER_SESSION, ge=1, description="concurrent output streams (SSE) per session"
    )


# --- token bucket -----------------------------------------------------------------------


class TokenBucket:
    """``burst`` tokens, refilled at ``rate_per_s``; it starts full. ``now`` is seconds on
    the bucket's clock (monotonic unless one is given)."""

    __slots__ = ("rate_per_s", "burst", "_tokens", "_stamp", "_clock")

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: float | None = None,
    ) -> None:
        if not rate_per_s > 0 or not math.isfinite(rate_per_s):
            raise ValueError(f"rate_per_s must be a positive number, not {rate_per_s!r}")
        if not burst >= 1 or not math.isfinite(burst):
            raise ValueError(f"burst must be at least 1, not {burst!r}")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock() if now is None else now

    def _refill(self, now: float | None) -> float:
        now = self._clock() if now is None else now
        # a clock read earlier on another path may be older than the stamp: not a refill,
        # and never a drain
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate_per_s)
            self._stamp = now
        return now

    def take(self, n: float = 1, now: float | None = None) -> bool:
        """Take ``n`` tokens if there are that many (True), else take none (False)."""
        self._refill(now)
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    def retry_after(self, n: float = 1, now: float | None = None) -> float:
        """Seconds until ``n`` tokens are there (0: now; inf: more than the burst)."""
        self._refill(now)
        if n > self.burst:
            return math.inf
        return max(0.0, (n - self._tokens) / self.rate_per_s)

    def full(self, now: float | None = None) -> bool:
        """True when the bucket holds its whole burst: it is as good as a new one."""
        self._refill(now)
        return self._tokens >= self.burst

    @property
    def tokens(self) -> float:
        return self._tokens


# --- per client address -----------------------------------------------------------------


class AdmissionState(enum.StrEnum):
    PENDING = "pending"  # the offer is posted, ICE not connected yet
    LIVE = "live"  # the session is connected
    ENDED = "ended"  # released: counts nothing


@dataclass(frozen=True)
class ClientKey:
    """What a client address is counted as: its IPv4 address, its IPv6 /64, or (not an IP:
    a test client's name, a missing peer) the name itself."""

    key: str
    loopback: bool


@dataclass(frozen=True)
class AddressStats:
    """A snapshot of :class:`AddressLimits` (leak checks, metrics)."""

    tracked: int  # addresses with an entry
    idle: int  # of those, holding no offer or session (kept for their offer rate)
    pending: int  # offers pending, over all addresses
    live: int  # live sessions, over all addresses


def client_key(address: str | None) -> ClientKey:
    """The unit ``address`` is counted in (see :class:`ClientKey`)."""
    if not address:
        return ClientKey("unknown", False)
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # a scope id names an interface
    except ValueError:
        return ClientKey(f"name:{address[:MAX_ADDRESS_KEY_CHARS]}", False)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d
    if isinstance(ip, ipaddress.IPv4Address):
        return ClientKey(str(ip), ip.is_loopback)
    net = ipaddress.IPv6Network((ip, IPV6_CLIENT_PREFIX_BITS), strict=False)
    return ClientKey(str(net), ip.is_loopback)


class _Entry:
    __slots__ = ("pending", "live", "bucket")

    def __init__(self, bucket: TokenBucket) -> None:
        self.pending = 0
        self.live = 0
        self.bucket = bucket


class Admission:
    """One admitted offer. The caller marks it :meth:`connected` when ICE connects and
    :meth:`ended` when the offer fails or the session ends (safe to call twice; it releases
    whatever it still holds). As a context manager it ends on an exception only: the route
    wraps the work between admission and the session taking ownership of it."""

    __slots__ = ("_limits", "key", "_state")

    def __init__(self, limits: AddressLimits | None, key: str | None) -> None:
        self._limits = limits  # None: an exempt client, nothing is counted
        self.key = key
        self._state = AdmissionState.PENDING

    @property
    def state(self) -> AdmissionState:
        return self._state

    @property
    def exempt(self) -> bool:
        return self._limits is None

    def connected(self) -> None:
        if self._state is not AdmissionState.PENDING:
            return  # a late ICE event after the session ended holds nothing again
        self._state = AdmissionState.LIVE
        if self._limits is not None and self.key is not None:
            self._limits._connected(self.key)

    def ended(self) -> None:
        was, self._state = self._state, AdmissionState.ENDED
        if was is AdmissionState.ENDED or self._limits is None or self.key is None:
            return
        self._limits._released(self.key, was)

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc is not None:
            self.ended()

    def __repr__(self) -> str:
        return f"Admission({self.key!r}, {self._state.value})"


class AddressLimits:
    """Pending offers, live sessions and offers per minute per client address.

    Memory is bounded: an address holding no offer or session is kept only while its offer
    bucket is not full again (a full bucket is the same as none), and at most
    ``max_tracked`` addresses are kept; past that the one idle the longest is forgotten
    first (it gets a fresh rate allowance; nothing it holds is lost, as it holds nothing).
    Addresses holding an offer or a session are never evicted: each is bounded by an
    :class:`Admission` the gateway holds, so they may take the count above ``max_tracked``.

    Not thread-safe: one event loop owns it (the front's).
    """

    def __init__(
        self,
        max_pending: int = MAX_PENDING_OFFERS_PER_ADDRESS,
        max_sessions: int = MAX_SESSIONS_PER_ADDRESS,
        offers_per_min: int = MAX_OFFERS_PER_ADDRESS_PER_MIN,
        *,
        exempt_loopback: bool,
        max_tracked: int = MAX_TRACKED_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value in (("max_pending", max_pending), ("max_sessions", max_sessions), ("offers_per_min", offers_per_min), ("max_tracked", max_tracked)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        self.max_pending = max_pending
        self.max_sessions = max_sessions
        self.offers_per_min = offers_per_min
        self.exempt_loopback = exempt_loopback
        self.max_tracked = max_tracked
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        # entries holding nothing, the one idle longest first
        self._idle: OrderedDict[str, None] = OrderedDict()
        self._pending = 0
        self._live = 0

    @classmethod
    def from_config(cls, cfg: LimitsConfig, *, clock: Callable[[], float] = time.monotonic) -> AddressLimits:
        return cls(
            cfg.max_pending_offers_per_address,
            cfg.max_sessions_per_address,
            cfg.max_offers_per_address_per_min,
            exempt_loopback=cfg.exempt_loopback,
            max_tracked=cfg.max_tracked_addresses,
            clock=clock,
        )

    def admit_offer(self, address: str | None) -> Admission:
        """Admit an offer from ``address`` or raise Refused (429: too_many_pending_offers,
        too_many_sessions, offer_rate_limited) with a Retry-After header."""
        ck = client_key(address)
        if ck.loopback and self.exempt_loopback:
            return Admission(None, ck.key)
        now = self._clock()
        self._sweep(now)
        entry = self._entries.get(ck.key)
        if entry is not None:
            if entry.pending >= self.max_pending:
                raise _too_many(ErrorCode.TOO_MANY_PENDING_OFFERS, f"at most {self.max_pending} offers may wait to connect per client address", self.max_pending, PENDING_RETRY_AFTER_S)
            if entry.pending + entry.live >= self.max_sessions:
                raise _too_many(ErrorCode.TOO_MANY_SESSIONS, f"at most {self.max_sessions} sessions per client address", self.max_sessions, SESSIONS_RETRY_AFTER_S)
            # the rate is charged only for offers admitted: a refused one costs the server
            # nothing, and charging it would keep a retrying client refused for longer
            if not entry.bucket.take(1, now):
                wait = entry.bucket.retry_after(1, now)
                raise _too_many(ErrorCode.OFFER_RATE_LIMITED, f"at most {self.offers_per_min} offers per minute per client address", self.offers_per_min, max(1, math.ceil(wait)))
            self._idle.pop(ck.key, None)
        else:
            entry = _Entry(TokenBucket(self.offers_per_min / SECONDS_PER_MIN, self.offers_per_min, clock=self._clock, now=now))
            entry.bucket.take(1, now)
            self._make_room()
            self._entries[ck.key] = entry
        entry.pending += 1
        self._pending += 1
        return Admission(self, ck.key)

    def stats(self) -> AddressStats:
        return AddressStats(len(self._entries), len(self._idle), self._pending, self._live)

    def holds(self, address: str | None) -> tuple[int, int]:
        """(pending offers, live sessions) counted for ``address``'s key."""
        entry = self._entries.get(client_key(address).key)
        return (0, 0) if entry is None else (entry.pending, entry.live)

    # --- Admission's side -----------------------------------------------------------------

    def _connected(self, key: str) -> None:
        entry = self._entries[key]
        entry.pending -= 1
        entry.live += 1
        self._pending -= 1
        self._live += 1

    def _released(self, key: str, was: AdmissionState) -> None:
        entry = self._entries[key]
        if was is AdmissionState.PENDING:
            entry.pending -= 1
            self._pending -= 1
        else:
            entry.live -= 1
            self._live -= 1
        if entry.pending == 0 and entry.live == 0:
            self._idle[key] = None
            self._idle.move_to_end(key)

    # --- memory bound ---------------------------------------------------------------------

    def _sweep(self, now: float) -> None:
        """Forget idle entries whose bucket is full again, oldest idle first. It stops at
        the first that is not full: an entry idle since later may be full earlier, and is
        then forgotten a little late, never counted wrong (a full bucket is a fresh one)."""
        while self._idle:
            key = next(iter(self._idle))
            if not self._entries[key].bucket.full(now):
                return
            del self._idle[key]
            del self._entries[key]

    def _make_room(self) -> None:
        while len(self._entries) >= self.max_tracked and self._idle:
            key, _ = self._idle.popitem(last=False)
            del self._entries[key]


class AddressRate:
    """A token bucket per client address (:func:`client_key`), for requests that hold
    nothing: :meth:`take` one or raise Refused 429 ``code`` with a Retry-After.

    Memory is bounded as :class:`AddressLimits`'s: a full bucket is the same as none, so
    buckets full again are forgotten (least recently used first), and at most
    ``max_tracked`` are kept (past that the least recently used is forgotten: it gets a
    fresh allowance). Not thread-safe: one event loop owns it."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        code: ErrorCode,
        what: str,
        exempt_loopback: bool,
        max_tracked: int = MAX_TRACKED_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_tracked < 1:
            raise ValueError(f"max_tracked must be at least 1, not {max_tracked}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.code = code
        self.what = what
        self.exempt_loopback = exempt_loopback
        self.max_tracked = max_tracked
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()  # least recently used first

    def take(self, address: str | None) -> None:
        ck = client_key(address)
        if ck.loopback and self.exempt_loopback:
            return
        now = self._clock()
        while self._buckets:  # forget the full ones, oldest first (see AddressLimits._sweep)
            oldest = next(iter(self._buckets.values()))
            if not oldest.full(now):
                break
            self._buckets.popitem(last=False)
        bucket = self._buckets.get(ck.key)
        if bucket is None:
            while len(self._buckets) >= self.max_tracked:
                self._buckets.popitem(last=False)
            bucket = self._buckets[ck.key] = TokenBucket(self.rate_per_s, self.burst, clock=self._clock, now=now)
        self._buckets.move_to_end(ck.key)
        if not bucket.take(1, now):
            wait = max(1, math.ceil(bucket.retry_after(1, now)))
            raise Refused(self.code, f"at most {self.rate_per_s:g} {self.what} per second per client address", retry_after_s=wait, meta={"limit": self.rate_per_s})

    @property
    def tracked(self) -> int:
        return len(self._buckets)


def _too_many(code: ErrorCode, message: str, limit: int, retry_after_s: int) -> Refused:
    return Refused(code, message, retry_after_s=retry_after_s, meta={"limit": limit})


# --- per session ------------------------------------------------------------------------


class PerSessionCount:
    """A count with a ceiling, owned by one session: :meth:`take` one or raise the
    configured Refused, :meth:`release` one (never below zero). Candidates are only
    taken; readers are taken for as long as they read (:meth:`hold`)."""

    __slots__ = ("limit", "code", "what", "retry_after_s", "_count")

    def __init__(self, limit: int, *, code: ErrorCode, what: str, retry_after_s: int | None = None) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self.limit = limit
        self.code = code
        self.what = what
        self.retry_after_s = retry_after_s
        self._count = 0

    @classmethod
    def candidates(cls, limit: int = MAX_CANDIDATES_PER_SESSION) -> PerSessionCount:
        # 400, not 429: waiting does not help, a session's candidates never come back
        return cls(limit, code=ErrorCode.TOO_MANY_CANDIDATES, what="ICE candidates")

    @classmethod
    def readers(cls, limit: int = MAX_SSE_READERS_PER_SESSION) -> PerSessionCount:
        return cls(limit, code=ErrorCode.TOO_MANY_READERS, what="output readers", retry_after_s=READERS_RETRY_AFTER_S)

    @property
    def count(self) -> int:
        return self._count

    def take(self) -> None:
        if self._count >= self.limit:
            raise Refused(self.code, f"at most {self.limit} {self.what} per session", retry_after_s=self.retry_after_s, meta={"limit": self.limit})
        self._count += 1

    def release(self) -> None:
        self._count = max(0, self._count - 1)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        self.take()
        try:
            yield
        finally:
            self.release()


# --- ICE candidates ---------------------------------------------------------------------


def _bad_candidate(message: str) -> Refused:
    return Refused(ErrorCode.BAD_CANDIDATE, message)


def _forbidden(address: str, kind: str, why: str = "the server does not send there") -> Refused:
    return Refused(
        ErrorCode.FORBIDDEN_CANDIDATE_ADDRESS,
        f"ICE candidate address {address} ({kind}): {why}",
        meta={"address_kind": kind},
    )


def _parse_candidate(candidate: object) -> Candidate:
    if not isinstance(candidate, str):
        raise _bad_candidate("an ICE candidate is a string")
    if len(candidate) > MAX_CANDIDATE_CHARS:
        raise _bad_candidate(f"an ICE candidate has at most {MAX_CANDIDATE_CHARS} characters")
    text = candidate.strip()
    if text.startswith(CANDIDATE_PREFIX):
        text = text[len(CANDIDATE_PREFIX) :]
    bits = text.split()
    # aioice's parser reads fields by position and checks neither "typ" nor the ranges
    if len(bits) < CANDIDATE_FIELDS or bits[6] != "typ":
        raise _bad_candidate("expected 'foundation component transport priority address port typ type'")
    try:
        cand = Candidate.from_sdp(text)
    except (ValueError, IndexError) as exc:
        raise _bad_candidate(f"cannot parse ICE candidate: {exc}") from None
    if cand.transport.lower() not in CANDIDATE_TRANSPORTS:
        raise _bad_candidate(f"ICE candidate transport {cand.transport[:16]!r} is not udp or tcp")
    if cand.type not in CANDIDATE_TYPES:
        raise _bad_candidate(f"ICE candidate type {cand.type[:16]!r} is not one of {sorted(CANDIDATE_TYPES)}")
    if not 1 <= cand.component <= MAX_CANDIDATE_COMPONENT:
        raise _bad_candidate(f"ICE candidate component {cand.component} is not 1-{MAX_CANDIDATE_COMPONENT}")
    if not 1 <= cand.priority <= MAX_CANDIDATE_PRIORITY:
        raise _bad_candidate(f"ICE candidate priority is not 1-{MAX_CANDIDATE_PRIORITY} (RFC 8445)")
    if not 0 <= cand.port <= C.MAX_PORT:
        raise _bad_candidate(f"ICE candidate port {cand.port} is not 0-{C.MAX_PORT}")
    return cand


def address_kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_loopback: bool) -> str | None:
    """Why the gateway may not send ICE checks to ``ip`` (None: it may)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # the kernel sends ::ffff:169.254.169.254 to 169.254.169.254
    if ip.is_loopback:
        return None if allow_loopback else "loopback"
    if ip.is_unspecified or ip in THIS_NETWORK_V4:
        return "unspecified"
    if ip.is_link_local:
        return "link-local"
    if any(ip in net for net in CLOUD_METADATA_NETWORKS):
        return "metadata"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local"  # fec0::/10, deprecated (RFC 3879) and not routed
    if ip.is_multicast:
        return "multicast"
    # IPv4 240/4 with the broadcast address; IPv6 ::/8 (which holds the IPv4-compatible and
    # NAT64 forms of any IPv4 address) and the other unassigned blocks
    if ip.is_reserved:
        return "reserved"
    return None


def check_candidate_address(candidate: str, *, allow_loopback: bool) -> None:
    """Refuse an ICE candidate (the SDP ``candidate:...`` attribute, with or without its
    prefix) whose connection address the gateway should not send to: Refused (400)
    ``forbidden_candidate_address`` (meta ``address_kind``), or ``bad_candidate`` when it
    does not parse. mDNS ``.local`` names are accepted (browsers hide host addresses behind
    them, and aioice resolves them on the LAN only); other names are refused, as their DNS
    answer is the client's to choose. An empty candidate (end of candidates) is the
    caller's to handle before this: here it is ``bad_candidate``."""
    cand = _parse_candidate(candidate)
    try:
        ip = ipaddress.ip_address(cand.host)
    except ValueError:
        if MDNS_HOSTNAME_RE.match(cand.host):
            return
        raise _forbidden(cand.host[:MAX_ADDRESS_KEY_CHARS], "hostname", "only mDNS .local names are accepted") from None
    kind = address_kind(ip, allow_loopback=allow_loopback)
    if kind is not None:
        raise _forbidden(cand.host, kind)
