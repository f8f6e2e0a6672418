"""Bounds on the audio sockets, the phone webhook and the waiting room's update streams:
counts of things a client holds open, per client address or per queue ticket. Pure
bookkeeping, no I/O.

* :class:`SocketsConfig` -- ``sockets``: the WebSocket audio and phone routes'
  (``/websocket/offer``, ``/telephone/handler``) sockets before their ``start`` message.
* the defaults of ``telephone``'s webhook rate and call tokens per address
  (runtime/front/twilio.py) and of ``queue``'s update streams per ticket and per address
  (runtime/front/queue_follower.py); their config keys live with those sections.
* :class:`HoldCounter` -- open things per key (a client address's, a ticket's) with a
  ceiling; each :meth:`HoldCounter.take` gives a :class:`Hold` released once, however
  often it is released.

A socket that has said ``start`` is a session or a place in line, and is bounded there
(runtime/guard/limits.py, the waiting room); before that it costs the front a socket and a
task, and nothing else bounds how many one address keeps open.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from runtime import constants as C
from runtime.errors import ErrorCode, Refused
from runtime.guard.limits import client_key

# a browser or a bridge opens one socket per call and says "start" at once; Twilio's media
# streams all come from Twilio's few addresses, each saying "start" within a round trip
MAX_UNSTARTED_SOCKETS_PER_ADDRESS = 8
START_TIMEOUT_S = 10.0  # a socket that has not said "start" by then is closed (1008 start_timeout)
UNSTARTED_RETRY_AFTER_S = C.RETRY_AFTER_S  # an unstarted socket starts or times out soon

# /telephone/incoming: Twilio's webhooks come from Twilio's own few addresses, so these are
# calls a minute and calls ringing at once for a number; a busier number raises them
WEBHOOKS_PER_ADDRESS_PER_MIN = 60  # webhook posts per client address per minute (a burst of this many)
MAX_CALL_TOKENS_PER_ADDRESS = 20  # call tokens minted and not yet spent or expired, per client address

# GET /webrtc/queue: a waiting client follows its ticket on one stream (a reload makes two
# for a moment); a household behind one address may have a few tabs waiting
MAX_QUEUE_STREAMS_PER_TICKET = 4  # as MAX_SSE_READERS_PER_SESSION for a session's outputs
MAX_QUEUE_STREAMS_PER_ADDRESS = 16
QUEUE_STREAMS_RETRY_AFTER_S = C.RETRY_AFTER_S  # a stream that went away is noticed at its next keep-alive


class SocketsConfig(BaseModel):
    """``sockets``: the WebSocket audio and phone sockets before their ``start`` message.
    Over the bound: the socket is closed with 4429 ``too_many_unstarted_sockets``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_unstarted_per_address: int = Field(
        MAX_UNSTARTED_SOCKETS_PER_ADDRESS,
        ge=1,
        description="sockets on /websocket/offer and /telephone/handler that have not sent 'start', per client address "
        "(IPv6: per /64); gateway.limits.exempt_loopback applies",
    )
    start_timeout_s: float = Field(
        START_TIMEOUT_S, gt=0, description="a socket that has not sent 'start' by then is closed (1008 start_timeout)"
    )


class Hold:
    """One thing held open under a :class:`HoldCounter`; :meth:`release` is safe to call twice."""

    __slots__ = ("_counter", "_key")

    def __init__(self, counter: HoldCounter | None, key: str) -> None:
        self._counter = counter  # None: not counted (an exempt client), or released
        self._key = key

    def release(self) -> None:
        counter, self._counter = self._counter, None
        if counter is not None:
            counter._release(self._key)


class HoldCounter:
    """Things held open per key, at most ``limit`` each; past it, ``code`` (429) with a
    Retry-After. Only keys holding something are kept, so its memory is bounded by what
    is held. Not thread-safe: one event loop owns it (the front's)."""

    def __init__(self, limit: int, *, code: ErrorCode, what: str, per: str, retry_after_s: int = C.RETRY_AFTER_S) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self.limit = limit
        self.code = code
        self.what = what  # "sockets that have not sent 'start'"
        self.per = per  # "client address"
        self.retry_after_s = retry_after_s
        self._held: dict[str, int] = {}

    def take(self, key: str) -> Hold:
        held = self._held.get(key, 0)
        if held >= self.limit:
            raise Refused(
                self.code,
                f"at most {self.limit} {self.what} per {self.per}",
                retry_after_s=self.retry_after_s,
                meta={"limit": self.limit},
            )
        self._held[key] = held + 1
        return Hold(self, key)

    def take_for_address(self, address: str | None, *, exempt_loopback: bool) -> Hold:
        """:meth:`take` for a client address, counted as runtime/guard/limits.py counts
        them (IPv4 address, IPv6 /64); an exempt loopback client holds nothing."""
        ck = client_key(address)
        if ck.loopback and exempt_loopback:
            return Hold(None, ck.key)
        return self.take(ck.key)

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    @property
    def total(self) -> int:
        return sum(self._held.values())

    def _release(self, key: str) -> None:
        left = self._held.get(key, 0) - 1
        if left > 0:
            self._held[key] = left
        else:
            self._held.pop(key, None)


__all__ = [
    "Hold",
    "HoldCounter",
    "SocketsConfig",
    "MAX_CALL_TOKENS_PER_ADDRESS",
    "MAX_QUEUE_STREAMS_PER_ADDRESS",
    "MAX_QUEUE_STREAMS_PER_TICKET",
    "MAX_UNSTARTED_SOCKETS_PER_ADDRESS",
    "START_TIMEOUT_S",
    "WEBHOOKS_PER_ADDRESS_PER_MIN",
]
