"""The waiting lines of every stream event, across the deployment: tickets, turns, views.

Each pool has its :class:`~runtime.control.waiting_room.WaitingRoom` (the order and the
ETA, pure bookkeeping); :class:`Lines` keeps the deployment's tickets by secret, remembers
for a while the ones that left (a late look learns why), gives the slots that free to the
head of a line, and wakes the fronts' long polls (``queue_wait``) on every change.

Part of the scheduler actor (runtime/control/scheduler.py): one event loop, no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

from runtime import constants as C
from runtime.control import waiting_room as wr
from runtime.control.leases import LeaseDenied, LeaseQueued
from runtime.control.pools import Leases, Pool, Pools, PoolSpec
from runtime.control.waiting_room import QueueRefused, QueueView, Ticket, TicketState
from runtime.errors import ErrorCode

log = logging.getLogger("rtcpool.scheduler")


class Lines:
    def __init__(self, pools: Pools, leases: Leases) -> None:
        self.pools = pools
        self.leases = leases
        # the waiting rooms' tickets (each pool has its line), by secret; those that left,
        # until when they are remembered (a late look learns why)
        self.tickets: dict[str, Ticket] = {}
        self.tombstones: dict[str, tuple[Ticket, float]] = {}
        # bumped on every change of any line: a front's long poll (queue_wait) wakes on it
        self.version = 0
        self._changed = asyncio.Event()

    def check(self, pool: Pool, session_id: str, queue: bool, client: str, now: float) -> LeaseDenied | LeaseQueued | None:
        """None: a slot is free and nobody waits for it. Else the refusal, or a new ticket."""
        if any(lease.session_id == session_id for lease in self.leases.values()) or any(
            t.session_id == session_id and t.event_id == pool.spec.event_id for t in self.tickets.values()
        ):
            # one directory for the deployment: a webrtc_id names one session everywhere
            return LeaseDenied(ErrorCode.DUPLICATE_WEBRTC_ID, f"a session {session_id!r} is already active")
        room = pool.room
        full = self.taken(pool) >= pool.capacity
        if not full and not room.waiting:
            return None
        limit = pool.spec.concurrency_limit
        if not (pool.spec.queue and queue):
            if limit is None and not room.waiting:
                return None  # unlimited, no line: the offer waits for a worker, as before queues
            why = f"at most {pool.capacity} session(s) at once" + (f", {len(room)} waiting" if room.waiting else "")
            return LeaseDenied(ErrorCode.CONCURRENCY_LIMIT_REACHED, why, pool.capacity, C.RETRY_AFTER_S, len(room))
        try:
            ticket = room.join(pool.spec.event_id, session_id, client, now)
        except QueueRefused as exc:
            return LeaseDenied(exc.reason, exc.message, pool.capacity, C.RETRY_AFTER_S, len(room))
        self.tickets[ticket.secret] = ticket
        self._bumped()
        view = self._views(pool)[ticket.secret]
        return LeaseQueued(ticket.secret, view.position, view.size, view.eta_s)

    def redeem(self, pool: Pool, secret: str, session_id: str, now: float) -> Ticket | LeaseDenied | LeaseQueued:
        """An offer posted again with its ticket: the admitted ticket (its slot is held),
        its place in line while it still waits, or why it has none."""
        ticket = self.tickets.get(secret)
        if ticket is None or ticket.event_id != pool.spec.event_id or ticket.session_id != session_id:
            left = self.tombstones.get(secret)
            if left is not None and left[0].event_id == pool.spec.event_id and left[0].session_id == session_id:
                return LeaseDenied(ErrorCode.QUEUE_TICKET_GONE, left[0].message or f"the ticket left the queue ({left[0].reason})")
            return LeaseDenied(ErrorCode.QUEUE_TICKET_GONE, "no such queue ticket for this session")
        ticket.seen_at = now
        if ticket.state == TicketState.WAITING:
            view = self._views(pool)[secret]
            return LeaseQueued(secret, view.position, view.size, view.eta_s)
        return ticket

    def claim(self, pool: Pool, ticket: Ticket, now: float) -> None:
        """An admitted ticket's held slot became a lease."""
        pool.room.claim(ticket)
        self._forget(ticket, now)

    def taken(self, pool: Pool) -> int:
        """Slots in use: leases, and slots held for admitted tickets."""
        return len(self.leases.of_event(pool.spec.event_id)) + len(pool.room.admitted)

    def admit(self, pool: Pool) -> None:
        """Give the free slots to the head of the line (on every way a slot frees)."""
        if not pool.room.waiting or not self.pools.served(pool):
            return
        admitted = pool.room.admit(pool.capacity - self.taken(pool), time.monotonic())
        if admitted:
            self._bumped()
            self.pools.top_up(pool)  # the next ones' workers: warm when their offers come back

    def _forget(self, ticket: Ticket, now: float) -> None:
        self.tickets.pop(ticket.secret, None)
        self.tombstones[ticket.secret] = (ticket, now + wr.TOMBSTONE_S)
        self._bumped()

    def _bumped(self) -> None:
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _views(self, pool: Pool) -> dict[str, QueueView]:
        now = time.monotonic()
        running: list[float | None] = [
            None if lease.streaming_since is None else now - lease.streaming_since
            for lease in self.leases.of_event(pool.spec.event_id)
        ]
        running += [None] * len(pool.room.admitted)
        return pool.room.views(running, pool.capacity, pool.spec.time_limit)

    def _view(self, secret: str, session_id: str, views: dict[str, dict[str, QueueView]]) -> QueueView:
        ticket = self.tickets.get(secret)
        if ticket is not None and ticket.session_id == session_id:
            pool = self.pools.get(ticket.event_id)
            if pool is not None:
                if ticket.event_id not in views:
                    views[ticket.event_id] = self._views(pool)
                found = views[ticket.event_id].get(secret)
                if found is not None:
                    return found
        left = self.tombstones.get(secret)
        if left is not None and left[0].session_id == session_id:
            return wr.gone_view(left[0])
        return wr.UNKNOWN_TICKET

    async def wait(self, tickets: list[list[str]], since: int, timeout: float) -> tuple[int, dict[str, QueueView]]:
        """Renew the followed tickets, wait for a change after version ``since`` (or
        ``timeout``), and return the version and each ticket's view, by secret."""
        now = time.monotonic()
        followed = [t for secret, sid in tickets if (t := self.tickets.get(secret)) is not None and t.session_id == sid]
        for ticket in followed:
            ticket.seen_at = now
            ticket.following += 1
        try:
            if self.version == since and timeout > 0:
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(timeout, C.QUEUE_POLL_S))
        finally:
            now = time.monotonic()
            for ticket in followed:
                ticket.following -= 1
                ticket.seen_at = now
        views: dict[str, dict[str, QueueView]] = {}
        return self.version, {secret: self._view(secret, sid, views) for secret, sid in tickets}

    def leave(self, secret: str, session_id: str, reason: str) -> bool:
        ticket = self.tickets.get(secret)
        if ticket is None or ticket.session_id != session_id:
            return False
        pool = self.pools.get(ticket.event_id)
        if pool is not None:
            pool.room.leave(ticket, reason, "left the queue")
        self._forget(ticket, time.monotonic())
        if pool is not None:
            self.admit(pool)
        return True

    def expire(self, now: float) -> None:
        for pool in self.pools.all():
            for ticket in pool.room.expire(now):
                log.info("queue of %s: a ticket left (%s)", pool.spec.event_id, ticket.reason)
                self._forget(ticket, now)
            self.admit(pool)
        for secret, (_, until) in list(self.tombstones.items()):
            if now >= until:
                del self.tombstones[secret]

    def drop(self, pool: Pool, reason: str, message: str) -> None:
        """Everyone in ``pool``'s line leaves it, told ``reason``."""
        now = time.monotonic()
        for ticket in pool.room.drop_all(reason, message):
            self._forget(ticket, now)

    def wanted(self) -> Iterator[tuple[PoolSpec, int]]:
        """The workers the queued streams need: each pool with someone waiting, at its
        capacity (what its slots in use and its line would fill, no more)."""
        for pool in self.pools.all():
            if pool.room.waiting:
                yield pool.spec.pool, min(pool.capacity, self.taken(pool) + len(pool.room))
