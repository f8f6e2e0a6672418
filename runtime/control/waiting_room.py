"""The waiting room: who waits for a full stream event, in what order, and until when.

One :class:`WaitingRoom` per stream event, inside the scheduler (runtime/control/scheduler.py), so
the line is one FIFO across every gateway and media process of the deployment, and
``concurrency_limit`` stays global: nobody jumps it by posting to another gateway.

A waiting user holds nothing but a :class:`Ticket` here (no worker, no peer connection, no
media): the offer is answered 202 with the ticket, the client follows its position on the
updates route, and when a slot frees the head of the line is *admitted*: the slot is held
for it (counted as taken) for ``admit_hold_s``, in which the client posts its offer again
with the ticket and gets the lease. A ticket leaves on the client's leave, on its updates
stream closing (a closed tab), when nobody has followed it for ``ticket_ttl_s`` (a client
that vanished without a word), after ``timeout_s`` of waiting, or when its hold lapses.

The ETA is Gradio's idea (its queue estimates from measured process times) applied to
sessions: a session is expected to hold its slot for the mean of the last
``SESSION_SAMPLES`` that ended (the stream's ``time_limit`` before any ended); the slots
free as the running sessions reach that length, and each waiting user takes the earliest
free slot in turn.

Pure bookkeeping: no Ray, no asyncio, a clock passed in, so it is unit-tested as is.
"""

from __future__ import annotations

import enum
import heapq
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from runtime import constants as C
from runtime.errors import ErrorCode

SESSION_SAMPLES = 20  # ended sessions' lengths the ETA averages
TICKET_BYTES = 24  # a ticket's secret: 192 random bits (base64url: 32 characters)
TOMBSTONE_S = 60.0  # a ticket that left is remembered this long, so a late look learns why
# A turn goes only to a ticket someone follows: one in a front's long poll now, or seen this
# recently (between two polls, or just issued). A client that queues and never follows (a
# flood of offers) keeps its place until its TTL but is passed over, and delays no one.
FOLLOW_GRACE_S = 3.0


class TicketState(enum.StrEnum):
    WAITING = "waiting"
    ADMITTED = "admitted"  # a slot is held for it: its offer may come back now
    GONE = "gone"


# why a ticket left (its ``reason``), as the client is told
LEFT = "left"  # the client left (Stop, a closed tab)
VANISHED = "vanished"  # nobody followed it for ticket_ttl_s
QUEUE_TIMEOUT = "queue_timeout"  # it waited longer than timeout_s
HOLD_EXPIRED = "expired"  # admitted, and its offer did not come back within admit_hold_s
STREAM_CHANGED = "stream_changed"  # the stream event was replaced or removed
CLAIMED = "claimed"  # it became a session


@dataclass
class Ticket:
    secret: str
    event_id: str
    session_id: str  # the client's webrtc_id: a name, the secret is what proves it
    client: str  # the client's address key, counted per address ("" when exempt)
    joined_at: float
    seen_at: float  # last time a front followed it (or the client posted with it)
    state: TicketState = TicketState.WAITING
    admitted_at: float | None = None
    reason: str = ""
    message: str = ""
    following: int = 0  # fronts' long polls that name it right now
    turn: int = 0  # admitted: the line's count of admissions when it was (1 is the first)

    def followed(self, now: float) -> bool:
        return self.following > 0 or now - self.seen_at <= FOLLOW_GRACE_S


@dataclass(frozen=True)
class QueueView:
    """What a waiting client is told about its ticket (the updates route's ``data``)."""

    state: str
    position: int = 0  # 1-based: 1 is next
    size: int = 0  # users waiting in this line
    eta_s: float | None = None  # expected wait; None before anything is known
    hold_s: float | None = None  # admitted: how long the slot is held for its offer
    turn: int = 0  # admitted: its place in the order of admissions (first come, first served)
    reason: str = ""
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        if self.state == TicketState.WAITING:
            return {"state": self.state, "position": self.position, "size": self.size, "eta_s": self.eta_s}
        if self.state == TicketState.ADMITTED:
            return {"state": self.state, "hold_s": self.hold_s, "turn": self.turn}
        return {"state": self.state, "reason": self.reason, "message": self.message}


class QueueRefused(Exception):
    """The line does not take this client: ``reason`` is queue_full or too_many_queued."""

    def __init__(self, reason: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class WaitingRoom:
    """The line of one stream event."""

    max_size: int | None = C.QUEUE_MAX
    timeout_s: float | None = C.QUEUE_TIMEOUT_S
    admit_hold_s: float = C.QUEUE_ADMIT_HOLD_S
    ticket_ttl_s: float = C.QUEUE_TICKET_TTL_S
    max_per_client: int = C.QUEUE_MAX_PER_ADDRESS
    # insertion-ordered: the FIFO, with O(1) leave by secret
    waiting: dict[str, Ticket] = field(default_factory=dict)
    admitted: dict[str, Ticket] = field(default_factory=dict)
    lengths: deque[float] = field(default_factory=lambda: deque(maxlen=SESSION_SAMPLES))
    turns: int = 0  # admissions so far

    def __len__(self) -> int:
        return len(self.waiting)

    def join(self, event_id: str, session_id: str, client: str, now: float) -> Ticket:
        """A new ticket at the end of the line, or QueueRefused."""
        if self.max_size is not None and len(self.waiting) >= self.max_size:
            raise QueueRefused(ErrorCode.QUEUE_FULL, f"the queue is full ({len(self.waiting)} waiting, at most {self.max_size})")
        if client and sum(1 for t in self.waiting.values() if t.client == client) >= self.max_per_client:
            raise QueueRefused(ErrorCode.TOO_MANY_QUEUED, f"this address already waits {self.max_per_client} time(s) for this stream")
        ticket = Ticket(secrets.token_urlsafe(TICKET_BYTES), event_id, session_id, client, now, now)
        self.waiting[ticket.secret] = ticket
        return ticket

    def position(self, ticket: Ticket) -> int:
        for i, secret in enumerate(self.waiting, 1):
            if secret == ticket.secret:
                return i
        return 0

    def admit(self, free_slots: int, now: float) -> list[Ticket]:
        """Move up to ``free_slots`` followed tickets, first come first, to admitted (an
        unfollowed one keeps its place: its client may be between two looks)."""
        out: list[Ticket] = []
        for ticket in list(self.waiting.values()):
            if free_slots <= 0:
                break
            if not ticket.followed(now):
                continue
            del self.waiting[ticket.secret]
            self.turns += 1
            ticket.state, ticket.admitted_at, ticket.turn = TicketState.ADMITTED, now, self.turns
            self.admitted[ticket.secret] = ticket
            out.append(ticket)
            free_slots -= 1
        return out

    def claim(self, ticket: Ticket) -> None:
        """An admitted ticket's offer came back: its held slot becomes a lease."""
        self.admitted.pop(ticket.secret, None)
        ticket.state, ticket.reason = TicketState.GONE, CLAIMED

    def leave(self, ticket: Ticket, reason: str, message: str = "") -> bool:
        """Take a ticket out (waiting or admitted). False if it was already out."""
        found = self.waiting.pop(ticket.secret, None) or self.admitted.pop(ticket.secret, None)
        if found is None:
            return False
        ticket.state, ticket.reason, ticket.message = TicketState.GONE, reason, message
        return True

    def expire(self, now: float) -> list[Ticket]:
        """Tickets whose time is up: waited past timeout_s, unfollowed past ticket_ttl_s,
        admitted past admit_hold_s. They are out of the line when this returns."""
        gone: list[Ticket] = []
        for ticket in list(self.waiting.values()):
            if self.timeout_s is not None and now - ticket.joined_at > self.timeout_s:
                self.leave(ticket, QUEUE_TIMEOUT, f"waited longer than the queue's {self.timeout_s:.0f} s")
            elif now - ticket.seen_at > self.ticket_ttl_s:
                self.leave(ticket, VANISHED, f"nobody followed this ticket for {self.ticket_ttl_s:.0f} s")
            else:
                continue
            gone.append(ticket)
        for ticket in list(self.admitted.values()):
            assert ticket.admitted_at is not None
            if now - ticket.admitted_at > self.admit_hold_s:
                self.leave(ticket, HOLD_EXPIRED, f"the offer did not come back within {self.admit_hold_s:.0f} s of the turn")
                gone.append(ticket)
        return gone

    def drop_all(self, reason: str, message: str) -> list[Ticket]:
        tickets = [*self.waiting.values(), *self.admitted.values()]
        for ticket in tickets:
            self.leave(ticket, reason, message)
        return tickets

    # --- the ETA -------------------------------------------------------------------------------

    def session_ended(self, length_s: float) -> None:
        self.lengths.append(length_s)

    def expected_session_s(self, time_limit: float | None) -> float | None:
        """How long a slot is expected to stay taken: the mean of the sessions that ended
        (media start to slot back, so a time limit's end-of-stream grace counts, which a cap
        at the time limit left out: the ETA ran ~14 % short, scripts/bench_queue.py); the
        time limit before any ended; None if neither is known."""
        if self.lengths:
            return sum(self.lengths) / len(self.lengths)
        return time_limit

    def etas(self, running_s: list[float | None], capacity: int, time_limit: float | None) -> list[float | None]:
        """The expected wait of each waiting ticket, in line order. ``running_s``: how long
        each slot-holding session has streamed (None: not yet, e.g. an admitted ticket or an
        offer being answered); ``capacity``: the stream's slots."""
        expected = self.expected_session_s(time_limit)
        if expected is None:
            return [None] * len(self.waiting)
        # when each slot is next free: the running sessions' remaining time, free slots now
        free_at = [max(0.0, expected - (r or 0.0)) for r in running_s[:capacity]]
        free_at += [0.0] * (capacity - len(free_at))
        heapq.heapify(free_at)
        out: list[float | None] = []
        for _ in self.waiting:
            t = heapq.heappop(free_at)
            out.append(round(t, 1))
            heapq.heappush(free_at, t + expected)
        return out

    def views(self, running_s: list[float | None], capacity: int, time_limit: float | None) -> dict[str, QueueView]:
        """Every ticket's view, by secret."""
        size = len(self.waiting)
        out = {
            secret: QueueView(TicketState.WAITING, i, size, eta)
            for i, (secret, eta) in enumerate(zip(self.waiting, self.etas(running_s, capacity, time_limit), strict=True), 1)
        }
        for secret, ticket in self.admitted.items():
            out[secret] = QueueView(TicketState.ADMITTED, hold_s=self.admit_hold_s, turn=ticket.turn)
        return out


def gone_view(ticket: Ticket) -> QueueView:
    return QueueView(TicketState.GONE, reason=ticket.reason, message=ticket.message)


UNKNOWN_TICKET = QueueView(TicketState.GONE, reason="unknown_ticket", message="no such queue ticket (or it left long ago)")
