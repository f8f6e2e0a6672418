"""The scheduler: one named Ray actor per deployment that owns every slot and worker.

It enforces ``concurrency_limit`` per stream event across all gateways, keeps a pre-warmed
pool of worker actors per event, hands a gateway a lease (a slot plus an idle worker) for a
session, and takes both back on every exit path:

* the gateway releases the lease when its session ends (worker healthy or not);
* a gateway that stops heartbeating loses all its leases after ``GATEWAY_TTL_S``;
* a lease that outlives its stream's ``time_limit`` by ``TIME_LIMIT_GRACE_S`` is reclaimed
  (the gateway enforces the limit itself; this is the backstop for a gateway that hangs);
* when a Ray node dies, its idle workers leave the pools and leases of its busy ones are
  reclaimed (the gateway usually ends those sessions first, when their link breaks; this is
  the backstop for a link that hangs), and every pool is topped up on the nodes left.

Each registration names its gateway. A pool whose gateways are all gone (forgotten, or
silent past ``gateway_ttl_s``) and that holds no lease is dropped after
``ORPHAN_POOL_GRACE_S``: a detached scheduler outlives its gateways, and would otherwise keep
every pool's pre-warmed workers (and their CPUs and GPUs) forever.

Every lease carries a token of its own, minted here and handed to its worker over Ray
(``Worker.arm``) before the lease is returned: the worker takes exactly one session with it,
so a token seen on the wire (the gateway <-> worker link is not encrypted) opens nothing later.

A pool whose workers need resources no alive node has (``far_node: 1`` after that node is
gone, a GPU before the autoscaler adds one) answers an offer at once with the reason instead
of holding it for ``LEASE_TIMEOUT_S``; it keeps one worker requested even with ``prewarm: 0``
(a GPU pool scaled to zero), and that request does not time out while no node fits: Ray holds
it as pending demand, which is what an autoscaler adds a node for, and starts it there.

Two gateways serving one app register the same event: the specs are compared by a stable
identity (``EventSpec.identity``), not by their bytes. A registration that changes an event
in use (another app version, other limits) cannot take effect while sessions hold its slots:
the answer says so, and the pool is replaced once they end.

The scheduler is pinned to the head node: a worker node going away must not take it along.

Each stream event has a waiting room (runtime/control/waiting_room.py): a full stream that queues
answers an offer with a place in its line, and the slot that frees on any of the exits
above goes to the head of the line. While any line has someone in it, the scheduler asks
Ray's autoscaler (``ray.autoscaler.sdk.request_resources``) for the workers the waiting
sessions need (each pool at its capacity), so a cluster that autoscales adds the nodes for
them; when every line is empty the request is withdrawn. Without an autoscaler the request
is a record in Ray's GCS that nothing acts on.

It is an async actor: one event loop, so its state needs no locks, and a wait for a worker
to start does not hold up other calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import ray

from runtime import constants as C
from runtime.control import waiting_room as wr
from runtime.control.leases import LeaseDenied, LeaseGrant, LeaseQueued
from runtime.control.waiting_room import QueueRefused, QueueView, Ticket, TicketState, WaitingRoom
from workers.process.loader import HandlerSpec

log = logging.getLogger("rtcpool.scheduler")

TIME_LIMIT_GRACE_S = 10.0  # lease backstop past a stream's time_limit
MONITOR_INTERVAL_S = 1.0  # how often expired gateways and leases are looked for
NODE_CHECK_INTERVAL_S = 1.0  # how often the list of alive Ray nodes is read (one GCS call)
HEAD_NODE_SHARE = 0.001  # of that marker the scheduler holds (as Ray Serve's controller does)
SHORT_NODE_ID = 12  # hex characters of a node id in a log line
SHORT_LEASE_ID = 8  # hex characters of a lease id in `rtcpool status`
ORPHAN_POOL_GRACE_S = 60.0  # a pool whose gateways are all gone keeps its idle workers this long
ARM_ATTEMPTS = 2  # workers tried for one lease when handing a worker its token fails


@dataclass
class PoolSpec:
    prewarm: int = C.POOL_PREWARM
    max_workers: int = C.POOL_MAX
    num_cpus: float | None = None
    num_gpus: float | None = None
    memory: int | None = None
    resources: dict[str, float] = field(default_factory=dict)


@dataclass
class EventSpec:
    event_id: str
    handler: HandlerSpec
    concurrency_limit: int | None = 1
    time_limit: float | None = None
    pool: PoolSpec = field(default_factory=PoolSpec)
    # the address a worker's TCP listener binds: "" = its node's address (a gateway on another
    # node connects there); "127.0.0.1" for the embedded local Ray, where no other host may
    worker_tcp_host: str = ""
    # a full stream's waiting room (runtime/control/waiting_room.py); queue False: 429 + Retry-After
    queue: bool = True
    max_queue: int | None = C.QUEUE_MAX
    queue_timeout_s: float | None = C.QUEUE_TIMEOUT_S
    admit_hold_s: float = C.QUEUE_ADMIT_HOLD_S

    def identity(self) -> tuple[Any, ...]:
        """Equal for the same stream event served by any gateway (see HandlerSpec.identity)."""
        p = self.pool
        pool = (p.prewarm, p.max_workers, p.num_cpus, p.num_gpus, p.memory, tuple(sorted(p.resources.items())))
        line = (self.queue, self.max_queue, self.queue_timeout_s, self.admit_hold_s)
        return (self.event_id, self.handler.identity(), self.concurrency_limit, self.time_limit, pool, self.worker_tcp_host, line)

    def differences(self, other: EventSpec) -> list[str]:
        """What ``other`` changes, for a log line."""
        out = []
        if self.handler.identity() != other.handler.identity():
            out.append(f"handler {self.handler.name} (app file or options changed)")
        for key in ("concurrency_limit", "time_limit", "pool", "worker_tcp_host", "queue", "max_queue", "queue_timeout_s", "admit_hold_s"):
            if getattr(self, key) != getattr(other, key):
                out.append(f"{key} {getattr(self, key)} -> {getattr(other, key)}")
        return out


@dataclass
class WorkerRef:
    actor: Any
    info: dict[str, Any]


@dataclass
class Lease:
    lease_id: str
    event_id: str
    gateway_id: str
    session_id: str
    granted_at: float
    worker: WorkerRef | None = None
    streaming_since: float | None = None
    transport: str = ""  # "shm" or "tcp", as the gateway's heartbeat reports it


@dataclass
class MediaRecord:
    """A media process: its actor (any gateway forwards a session's requests to it) and
    the front that started it."""

    actor: Any
    front_id: str
    node_id: str
    pid: int
    in_app: bool = False  # an app process's inbox (runtime/media/inbox.py), not a media process
    watch: asyncio.Task[None] | None = None


class Full(Exception):
    pass


class Unplaceable(Exception):
    """No alive node has the resources a worker of this pool asks for."""


class _Dropped(Exception):
    """A worker's pool was dropped while the worker started."""


class Pool:
    def __init__(self, spec: EventSpec, ticket_ttl_s: float = C.QUEUE_TICKET_TTL_S) -> None:
        self.spec = spec
        self.idle: list[WorkerRef] = []
        self.busy: dict[str, WorkerRef] = {}
        self.starting = 0
        self.available = asyncio.Condition()
        self.last_error = ""
        self.start_failures = 0  # worker starts that failed, ever: a waiter compares counts
        self.started_total = 0
        self.replaced_total = 0
        self.max_workers_override: int | None = None
        self.gateways: set[str] = set()  # gateways that registered this event or lease from it
        self.ownerless = True  # registered without a gateway id (tools, tests): never orphaned
        self.orphan_since: float | None = None  # when its last gateway went (monotonic)
        self.pending: EventSpec | None = None  # a changed spec, waiting for the leases to end
        self.room = WaitingRoom(spec.max_queue, spec.queue_timeout_s, spec.admit_hold_s, ticket_ttl_s)

    @property
    def max_workers(self) -> int:
        if self.max_workers_override is not None:
            return self.max_workers_override
        limit = self.spec.concurrency_limit
        return self.spec.pool.max_workers if limit is None else max(limit, 1)

    @property
    def total(self) -> int:
        return len(self.idle) + len(self.busy) + self.starting

    @property
    def capacity(self) -> int:
        """Sessions the stream serves at once: its concurrency_limit, or with None the
        pool's max_workers (the pool grows to that before anyone waits)."""
        return self.max_workers


class Scheduler:
    def __init__(
        self,
        gateway_ttl_s: float = C.GATEWAY_TTL_S,
        monitor_interval_s: float = MONITOR_INTERVAL_S,
        time_limit_grace_s: float = TIME_LIMIT_GRACE_S,
        orphan_pool_grace_s: float = ORPHAN_POOL_GRACE_S,
        worker_start_timeout_s: float = C.WORKER_START_TIMEOUT_S,
        ticket_ttl_s: float = C.QUEUE_TICKET_TTL_S,
    ) -> None:
        # constructor arguments, not only module constants: inside a Ray actor a patched
        # constant is not seen, and tests need an expiry of seconds, not of GATEWAY_TTL_S
        self.gateway_ttl_s = gateway_ttl_s
        self.monitor_interval_s = monitor_interval_s
        self.time_limit_grace_s = time_limit_grace_s
        self.orphan_pool_grace_s = orphan_pool_grace_s
        self.worker_start_timeout_s = worker_start_timeout_s
        self.ticket_ttl_s = ticket_ttl_s
        self.pools: dict[str, Pool] = {}
        self.leases: dict[str, Lease] = {}
        self.gateways: dict[str, float] = {}  # gateway id -> last heartbeat (monotonic)
        # the media processes (engines that are Ray actors), by gateway id: the session
        # directory maps a session to its lease's gateway id, and that to a handle here
        self.media: dict[str, MediaRecord] = {}
        self.loads: dict[str, dict[str, Any]] = {}  # gateway id -> its engine's last EngineLoad
        self._tasks: set[asyncio.Task[Any]] = set()
        self._monitor: asyncio.Task[None] | None = None
        # alive node id -> its total resources; None until first read (placement unknown)
        self.nodes: dict[str, dict[str, float]] | None = None
        self._nodes_read_at = 0.0
        # the waiting rooms' tickets (each pool has its line), by secret; those that left,
        # until when they are remembered (a late look learns why)
        self.tickets: dict[str, Ticket] = {}
        self.tombstones: dict[str, tuple[Ticket, float]] = {}
        # bumped on every change of any line: a front's long poll (queue_wait) wakes on it
        self.queue_version = 0
        self._queue_changed = asyncio.Event()
        # what the scheduler last asked Ray's autoscaler for (worker bundles; [] = nothing)
        self.autoscale_request: list[dict[str, float]] = []
        self.autoscale_calls = 0

    # --- registration ----------------------------------------------------------------------

    async def register(self, spec: EventSpec, gateway_id: str | None = None) -> dict[str, Any]:
        """Add a stream event for ``gateway_id`` and pre-warm its pool. Another gateway
        registering the same event (equal ``identity()``) shares the pool, and so its
        concurrency limit. A changed spec replaces the pool at once when no session holds a
        slot; otherwise it waits until they end, and the answer says so (``pending`` and a
        ``warning``). The answer's ``limit`` and ``time_limit`` are the ones in force."""
        self._ensure_monitor()
        pool = self.pools.get(spec.event_id)
        warning = ""
        if pool is not None and pool.spec.identity() != spec.identity():
            changes = "; ".join(pool.spec.differences(spec))
            if self._in_use(pool):
                pool.pending = spec
                warning = (
                    f"stream event {spec.event_id!r} is served with another spec ({changes}); "
                    f"{len(self._leases_of(spec.event_id))} session(s) hold its slots, so the "
                    f"current one stays in force (concurrency_limit {pool.spec.concurrency_limit}) "
                    "until they end, then the pool is replaced"
                )
                log.warning("%s", warning)
            else:
                # same id, other handler or limits (an app restarted with changes): start afresh
                log.info("stream event %r changed (%s): a new pool", spec.event_id, changes)
                pool = self._replace_pool(pool, spec)
        elif pool is not None:
            pool.pending = None  # the spec in force registered again: the newest word wins
        if pool is None:
            pool = self.pools[spec.event_id] = Pool(spec, self.ticket_ttl_s)
        if gateway_id:
            self.gateways[gateway_id] = time.monotonic()  # registering counts as a beat
            self._attach(pool, gateway_id)
        self._top_up(pool)
        return {
            "event_id": spec.event_id,
            "limit": pool.spec.concurrency_limit,
            "time_limit": pool.spec.time_limit,
            "pending": pool.pending is not None,
            "warning": warning,
        }

    def _attach(self, pool: Pool, gateway_id: str) -> None:
        pool.gateways.add(gateway_id)
        pool.ownerless = False
        pool.orphan_since = None

    def _in_use(self, pool: Pool) -> bool:
        return bool(pool.busy) or bool(self._leases_of(pool.spec.event_id))

    def _replace_pool(self, pool: Pool, spec: EventSpec) -> Pool:
        """A new pool for ``spec`` in place of ``pool`` (which holds no lease); its idle
        workers are killed, its gateways carried over."""
        line = pool.room
        pool.room = WaitingRoom()  # the line moves to the new pool, not out with the old one
        self._drop_pool(pool)
        new = self.pools[spec.event_id] = Pool(spec, self.ticket_ttl_s)
        new.gateways, new.ownerless = set(pool.gateways), pool.ownerless
        new.room.waiting, new.room.admitted, new.room.lengths, new.room.turns = line.waiting, line.admitted, line.lengths, line.turns
        return new

    def _apply_pending(self, pool: Pool) -> None:
        if pool.pending is not None and not self._in_use(pool) and self.pools.get(pool.spec.event_id) is pool:
            log.info("stream event %r: its sessions ended, the registered change takes effect", pool.spec.event_id)
            new = self._replace_pool(pool, pool.pending)
            self._top_up(new)
            self._admit(new)

    async def unregister(self, event_id: str) -> bool:
        """Remove a stream event and kill its workers, if no session holds one of its slots."""
        pool = self.pools.get(event_id)
        if pool is None or pool.busy or self._leases_of(event_id):
            return False
        self._drop_pool(pool)
        return True

    def _leases_of(self, event_id: str) -> list[Lease]:
        return [lease for lease in self.leases.values() if lease.event_id == event_id]

    def _drop_pool(self, pool: Pool) -> None:
        self._drop_line(pool, wr.STREAM_CHANGED, f"the stream {pool.spec.event_id!r} is no longer served")
        self.pools.pop(pool.spec.event_id, None)
        for w in pool.idle:
            _kill(w.actor)
        pool.idle.clear()
        pool.max_workers_override = 0  # workers still starting are killed when they are ready

    async def wait_warm(self, event_id: str, timeout: float) -> int:
        """Wait until the event's pre-warm count of workers is idle (tests, benchmarks)."""
        pool = self.pools[event_id]
        deadline = time.monotonic() + timeout
        async with pool.available:
            while len(pool.idle) < min(pool.spec.pool.prewarm, pool.max_workers):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(pool.available.wait(), left)
                except TimeoutError:
                    break
        return len(pool.idle)

    # --- leases ------------------------------------------------------------------------------

    async def acquire(
        self,
        event_id: str,
        gateway_id: str,
        session_id: str,
        node_id: str = "",
        *,
        ticket: str | None = None,
        queue: bool = False,
        client: str = "",
    ) -> LeaseGrant | LeaseDenied | LeaseQueued:
        """A slot and an idle worker for session ``session_id`` of ``gateway_id``; an idle
        worker on ``node_id`` (the engine's node: shared memory instead of TCP) if any.

        A full stream (or one with a line: nobody jumps it) puts the session in its waiting
        room when the stream queues and the client takes it (``queue``): the answer is its
        place in line. The same offer posted again with the ``ticket`` gets the slot held
        for it once admitted (or its place in line again while it waits). ``client``: the
        client's address key, for the per-address bound on tickets ("" exempt)."""
        pool = self.pools.get(event_id)
        if pool is None:
            return LeaseDenied("unknown_stream", f"no stream event {event_id!r}")
        now = time.monotonic()
        self.gateways[gateway_id] = now
        self._attach(pool, gateway_id)
        held: Ticket | None = None
        if ticket is not None:
            redeemed = self._redeem(pool, ticket, session_id, now)
            if not isinstance(redeemed, Ticket):
                return redeemed
            held = redeemed
        else:
            refused = self._check_line(pool, session_id, queue, client, now)
            if refused is not None:
                return refused
        # the slot is taken now, before any wait, so concurrent offers cannot overshoot
        lease = Lease(uuid.uuid4().hex, event_id, gateway_id, session_id, time.monotonic())
        self.leases[lease.lease_id] = lease
        if held is not None:
            pool.room.claim(held)  # its held slot is the lease now
            self._forget_ticket(held, now)
        token = secrets.token_hex(C.TOKEN_BYTES)
        for attempt in range(ARM_ATTEMPTS):
            try:
                worker = await self._take_worker(pool, node_id)
            except Unplaceable as exc:
                self._unlease(pool, lease)
                return LeaseDenied("no_node_fits", str(exc))
            except Exception as exc:
                self._unlease(pool, lease)
                return LeaseDenied("no_worker", str(exc))
            # the worker learns the lease's token over Ray before anyone else does; it takes
            # exactly one session with it. Busy meanwhile: a worker counted nowhere would let
            # a concurrent offer start one too many.
            pool.busy[lease.lease_id] = worker
            try:
                await asyncio.wait_for(worker.actor.arm.remote(token), C.RAY_CALL_TIMEOUT_S)
                break
            except Exception as exc:
                # gone or hung since it went idle: replace it and try another
                log.warning("worker %s of %s did not take its token: %s", worker.info.get("pid"), event_id, _reason(exc))
                pool.busy.pop(lease.lease_id, None)
                self._return_worker(pool, worker, healthy=False)
                if attempt == ARM_ATTEMPTS - 1:
                    self._unlease(pool, lease)
                    return LeaseDenied("no_worker", f"no worker took a session token: {_reason(exc)}")
        if lease.lease_id not in self.leases:  # reclaimed while waiting (gateway expired)
            if pool.busy.pop(lease.lease_id, None) is not None:  # not already given back
                self._return_worker(pool, worker, healthy=True)
            return LeaseDenied("expired", "lease expired while waiting")
        lease.worker = worker
        self._top_up(pool)
        return LeaseGrant(
            lease.lease_id,
            worker.actor,
            worker.info["endpoint"],
            worker.info.get("tcp_endpoint", ""),
            token,
            worker.info["pid"],
            worker.info["node_id"],
            pool.spec.time_limit,
        )

    def _unlease(self, pool: Pool, lease: Lease) -> None:
        """A lease that never became a session (no worker): its slot goes to the line."""
        self.leases.pop(lease.lease_id, None)
        self._admit(pool)

    # --- the waiting room ------------------------------------------------------------------------

    def _check_line(self, pool: Pool, session_id: str, queue: bool, client: str, now: float) -> LeaseDenied | LeaseQueued | None:
        """None: a slot is free and nobody waits for it. Else the refusal, or a new ticket."""
        if any(lease.session_id == session_id for lease in self.leases.values()) or any(
            t.session_id == session_id and t.event_id == pool.spec.event_id for t in self.tickets.values()
        ):
            # one directory for the deployment: a webrtc_id names one session everywhere
            return LeaseDenied("duplicate_webrtc_id", f"a session {session_id!r} is already active")
        room = pool.room
        full = self._taken(pool) >= pool.capacity
        if not full and not room.waiting:
            return None
        limit = pool.spec.concurrency_limit
        if not (pool.spec.queue and queue):
            if limit is None and not room.waiting:
                return None  # unlimited, no line: the offer waits for a worker, as before queues
            why = f"at most {pool.capacity} session(s) at once" + (f", {len(room)} waiting" if room.waiting else "")
            return LeaseDenied("concurrency_limit_reached", why, pool.capacity, C.RETRY_AFTER_S, len(room))
        try:
            ticket = room.join(pool.spec.event_id, session_id, client, now)
        except QueueRefused as exc:
            return LeaseDenied(exc.reason, exc.message, pool.capacity, C.RETRY_AFTER_S, len(room))
        self.tickets[ticket.secret] = ticket
        self._queue_bumped()
        view = self._views(pool)[ticket.secret]
        return LeaseQueued(ticket.secret, view.position, view.size, view.eta_s)

    def _redeem(self, pool: Pool, secret: str, session_id: str, now: float) -> Ticket | LeaseDenied | LeaseQueued:
        """An offer posted again with its ticket: the admitted ticket (its slot is held),
        its place in line while it still waits, or why it has none."""
        ticket = self.tickets.get(secret)
        if ticket is None or ticket.event_id != pool.spec.event_id or ticket.session_id != session_id:
            left = self.tombstones.get(secret)
            if left is not None and left[0].event_id == pool.spec.event_id and left[0].session_id == session_id:
                return LeaseDenied("queue_ticket_gone", left[0].message or f"the ticket left the queue ({left[0].reason})")
            return LeaseDenied("queue_ticket_gone", "no such queue ticket for this session")
        ticket.seen_at = now
        if ticket.state == TicketState.WAITING:
            view = self._views(pool)[secret]
            return LeaseQueued(secret, view.position, view.size, view.eta_s)
        return ticket

    def _taken(self, pool: Pool) -> int:
        """Slots in use: leases, and slots held for admitted tickets."""
        return len(self._leases_of(pool.spec.event_id)) + len(pool.room.admitted)

    def _admit(self, pool: Pool) -> None:
        """Give the free slots to the head of the line (on every way a slot frees)."""
        if not pool.room.waiting or self.pools.get(pool.spec.event_id) is not pool:
            return
        admitted = pool.room.admit(pool.capacity - self._taken(pool), time.monotonic())
        if admitted:
            self._queue_bumped()
            self._top_up(pool)  # the next ones' workers: warm when their offers come back

    def _forget_ticket(self, ticket: Ticket, now: float) -> None:
        self.tickets.pop(ticket.secret, None)
        self.tombstones[ticket.secret] = (ticket, now + wr.TOMBSTONE_S)
        self._queue_bumped()

    def _queue_bumped(self) -> None:
        self.queue_version += 1
        changed, self._queue_changed = self._queue_changed, asyncio.Event()
        changed.set()

    def _views(self, pool: Pool) -> dict[str, QueueView]:
        now = time.monotonic()
        running: list[float | None] = [
            None if lease.streaming_since is None else now - lease.streaming_since
            for lease in self._leases_of(pool.spec.event_id)
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

    async def queue_wait(self, tickets: list[list[str]], since: int, timeout: float) -> tuple[int, dict[str, dict[str, Any]]]:
        """A front's long poll for the tickets its clients follow, as [secret, webrtc_id]
        pairs: renews them (a ticket nobody follows is dropped after its TTL), waits until
        any line changed after version ``since`` (or ``timeout``), and returns the version
        and each ticket's view (QueueView.to_json, by secret; a pair whose webrtc_id is not
        the ticket's is told of no such ticket)."""
        now = time.monotonic()
        followed = [t for secret, sid in tickets if (t := self.tickets.get(secret)) is not None and t.session_id == sid]
        for ticket in followed:
            ticket.seen_at = now
            ticket.following += 1
        try:
            if self.queue_version == since and timeout > 0:
                changed = self._queue_changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(timeout, C.QUEUE_POLL_S))
        finally:
            now = time.monotonic()
            for ticket in followed:
                ticket.following -= 1
                ticket.seen_at = now
        views: dict[str, dict[str, QueueView]] = {}
        return self.queue_version, {secret: self._view(secret, sid, views).to_json() for secret, sid in tickets}

    async def leave(self, secret: str, session_id: str, reason: str = wr.LEFT) -> bool:
        """A client leaves the line (Stop, a closed tab): the next one moves up; a held slot
        goes to the head of the line. False: no such ticket for ``session_id``."""
        ticket = self.tickets.get(secret)
        if ticket is None or ticket.session_id != session_id:
            return False
        pool = self.pools.get(ticket.event_id)
        if pool is not None:
            pool.room.leave(ticket, reason, "left the queue")
        self._forget_ticket(ticket, time.monotonic())
        if pool is not None:
            self._admit(pool)
        return True

    def _expire_tickets(self, now: float) -> None:
        for pool in list(self.pools.values()):
            for ticket in pool.room.expire(now):
                log.info("queue of %s: a ticket left (%s)", pool.spec.event_id, ticket.reason)
                self._forget_ticket(ticket, now)
            self._admit(pool)
        for secret, (_, until) in list(self.tombstones.items()):
            if now >= until:
                del self.tombstones[secret]

    def _wanted_bundles(self) -> list[dict[str, float]]:
        """The worker bundles the queued streams need: each pool with someone waiting, at
        its capacity (what its slots in use and its line would fill, no more)."""
        bundles: list[dict[str, float]] = []
        for pool in self.pools.values():
            if not pool.room.waiting:
                continue
            want = min(pool.capacity, self._taken(pool) + len(pool.room))
            bundles += [worker_bundle(pool.spec.pool)] * want
        return bundles

    async def _request_resources(self) -> None:
        """Tell Ray's autoscaler what the lines need, when that changed (a GCS write)."""
        wanted = self._wanted_bundles()
        if wanted == self.autoscale_request:
            return
        from ray.autoscaler.sdk import request_resources

        try:
            await asyncio.to_thread(request_resources, bundles=wanted)
        except Exception as exc:  # no autoscaler reachable: the lines work regardless
            log.warning("asking Ray's autoscaler for %d worker(s) failed: %s", len(wanted), exc)
            return
        if wanted:
            log.info("asked Ray's autoscaler for %d worker(s) for the queued streams", len(wanted))
        else:
            log.info("the queues are empty: the autoscaler request is withdrawn")
        self.autoscale_request = wanted
        self.autoscale_calls += 1

    def _drop_line(self, pool: Pool, reason: str, message: str) -> None:
        now = time.monotonic()
        for ticket in pool.room.drop_all(reason, message):
            self._forget_ticket(ticket, now)

    async def _take_worker(self, pool: Pool, node_id: str = "") -> WorkerRef:
        deadline = time.monotonic() + C.LEASE_TIMEOUT_S
        failures_before = pool.start_failures
        if self.nodes is None:  # the first offer, before the monitor read the nodes: read them now
            try:
                await self._check_nodes()
            except Exception as exc:
                log.warning("reading the Ray node list failed: %s", exc)
        async with pool.available:
            while not pool.idle:
                unplaceable = self._placement_error(pool)
                if unplaceable:
                    pool.last_error = unplaceable
                    # Keep one worker requested: Ray holds it as pending demand, which an
                    # autoscaler answers with a node (a GPU pool scaled to zero, prewarm 0).
                    # The offer is answered now all the same, not held for LEASE_TIMEOUT_S.
                    if pool.starting == 0 and pool.total < pool.max_workers:
                        self._start_worker(pool)
                    raise Unplaceable(unplaceable)
                if pool.total < pool.max_workers:
                    self._start_worker(pool)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no worker ready within {C.LEASE_TIMEOUT_S:.0f} s: {pool.last_error}")
                try:
                    await asyncio.wait_for(pool.available.wait(), left)
                except TimeoutError:
                    continue
                # Test-found: this waited for ``starting == 0``, but each failure made the loop
                # start another worker, so with limit > 1 one was always starting: a handler
                # that cannot load restarted workers for LEASE_TIMEOUT_S. A start that failed
                # while this offer waited answers it now.
                if pool.start_failures != failures_before and not pool.idle:
                    raise RuntimeError(pool.last_error)
            # the newest idle worker (warm caches), on the engine's node where there is one
            for i in range(len(pool.idle) - 1, -1, -1):
                if pool.idle[i].info.get("node_id") == node_id:
                    return pool.idle.pop(i)
            return pool.idle.pop()

    async def mark_streaming(self, lease_id: str) -> None:
        lease = self.leases.get(lease_id)
        if lease is not None and lease.streaming_since is None:
            lease.streaming_since = time.monotonic()

    async def release(self, lease_id: str, worker_ok: bool = True) -> bool:
        """Give a lease back. ``worker_ok=False``: the worker died or misbehaved; replace it."""
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return False
        pool = self.pools.get(lease.event_id)
        worker = pool.busy.pop(lease_id, None) if pool is not None else None
        if pool is not None and worker is not None:
            self._return_worker(pool, worker, healthy=worker_ok)
        if pool is not None:
            if lease.streaming_since is not None:
                pool.room.session_ended(time.monotonic() - lease.streaming_since)  # for the ETA
            self._apply_pending(pool)
            self._admit(self.pools.get(lease.event_id, pool))  # the slot goes to the head of the line
        return True

    async def heartbeat(
        self,
        gateway_id: str,
        lease_ids: list[str],
        event_ids: list[str] | None = None,
        transports: dict[str, str] | None = None,
        load: dict[str, Any] | None = None,
    ) -> dict[str, list[str]]:
        """Renew a gateway's leases and its hold on its events' pools. Returns ``gone``: the
        leases the scheduler no longer knows (the gateway must end those sessions), and
        ``unknown_events``: the events it no longer knows (dropped while the gateway was
        silent past the TTL: it must register them again). ``transports``: lease id ->
        "shm"/"tcp", for `rtcpool status`; ``load``: the engine's EngineLoad, likewise."""
        self.gateways[gateway_id] = time.monotonic()
        if load is not None:
            self.loads[gateway_id] = load
        unknown = []
        for eid in event_ids or []:
            pool = self.pools.get(eid)
            if pool is None:
                unknown.append(eid)
            else:
                self._attach(pool, gateway_id)
        for lid, transport in (transports or {}).items():
            lease = self.leases.get(lid)
            if lease is not None and lease.gateway_id == gateway_id:
                lease.transport = str(transport)
        return {"gone": [lid for lid in lease_ids if lid not in self.leases], "unknown_events": unknown}

    async def forget_gateway(self, gateway_id: str) -> int:
        """A gateway shutting down (or silent past the TTL) gives back all its leases, and
        its hold on its pools."""
        self.gateways.pop(gateway_id, None)
        self.loads.pop(gateway_id, None)
        record = self.media.pop(gateway_id, None)
        if record is not None and record.watch is not None and record.watch is not asyncio.current_task():
            record.watch.cancel()
        for pool in self.pools.values():
            pool.gateways.discard(gateway_id)
        mine = [lid for lid, lease in self.leases.items() if lease.gateway_id == gateway_id]
        for lid in mine:
            await self.release(lid, worker_ok=False)
        return len(mine)

    # --- media processes and the session directory ---------------------------------------------

    async def register_media(self, gateway_id: str, actor: Any, front_id: str, node_id: str, pid: int, in_app: bool = False) -> None:
        """A front started a media process. The scheduler waits on its ``run()``, which
        returns only when the process dies: then its leases come back at once (not after
        GATEWAY_TTL_S), so a killed media process frees its slots and workers in about the
        time Ray takes to see the process gone."""
        self._ensure_monitor()
        self.gateways[gateway_id] = time.monotonic()
        record = self.media[gateway_id] = MediaRecord(actor, front_id, node_id, pid, in_app)
        record.watch = asyncio.get_running_loop().create_task(self._watch_media(gateway_id, record))

    async def _watch_media(self, gateway_id: str, record: MediaRecord) -> None:
        try:
            await record.actor.run.remote()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.media.get(gateway_id) is record:
                n = await self.forget_gateway(gateway_id)
                log.warning("media process %s (pid %s) is gone (%s): %d lease(s) given back", gateway_id, record.pid, _reason(exc), n)

    async def locate(self, session_id: str) -> dict[str, Any] | None:
        """The session directory: which engine holds ``session_id``, and the actor to
        forward to (None: an engine inside some app's process, which no other process
        reaches). None: no such session anywhere."""
        for lease in self.leases.values():
            if lease.session_id == session_id:
                record = self.media.get(lease.gateway_id)
                return {"gateway_id": lease.gateway_id, "media": record.actor if record is not None else None}
        return None

    # --- pool ----------------------------------------------------------------------------------

    def _return_worker(self, pool: Pool, worker: WorkerRef, healthy: bool) -> None:
        if healthy:
            pool.idle.append(worker)
            self._notify(pool)
        else:
            pool.replaced_total += 1
            _kill(worker.actor)
            self._top_up(pool)

    def _top_up(self, pool: Pool) -> None:
        want = min(pool.spec.pool.prewarm, pool.max_workers)
        while len(pool.idle) + pool.starting < want and pool.total < pool.max_workers:
            self._start_worker(pool)

    def _start_worker(self, pool: Pool) -> None:
        pool.starting += 1
        pool.started_total += 1
        task = asyncio.get_running_loop().create_task(self._run_start(pool))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_start(self, pool: Pool) -> None:
        from workers.process.actor import Worker

        spec = pool.spec.pool
        options: dict[str, Any] = {"max_restarts": 0, "max_concurrency": 4}
        if spec.num_cpus is not None:
            options["num_cpus"] = spec.num_cpus
        if spec.num_gpus is not None:
            options["num_gpus"] = spec.num_gpus
        if spec.memory is not None:
            options["memory"] = spec.memory
        if spec.resources:
            options["resources"] = dict(spec.resources)
        actor = None
        tcp_host = pool.spec.worker_tcp_host or None
        try:
            actor = ray.remote(Worker).options(**options).remote(pool.spec.handler, pool.spec.event_id, tcp_host)
            info = await self._wait_ready(pool, actor)
        except _Dropped:
            _kill(actor)
            pool.starting -= 1
            return
        except Exception as exc:
            pool.last_error = f"worker for {pool.spec.event_id} failed to start: {_reason(exc)}"
            pool.start_failures += 1
            log.error("%s", pool.last_error)
            if actor is not None:
                _kill(actor)
            pool.starting -= 1
            self._notify(pool)
            return
        pool.starting -= 1
        if self.pools.get(pool.spec.event_id) is not pool:  # dropped while it started
            _kill(actor)
            return
        info.pop("token", None)  # the worker's own; every lease arms a token of its own
        pool.last_error = ""
        pool.idle.append(WorkerRef(actor, info))
        self._notify(pool)

    async def _wait_ready(self, pool: Pool, actor: Any) -> dict[str, Any]:
        """The worker's ready() answer. The start timeout counts only while some alive node
        can take the worker: while none can, the request is kept (it is the pending demand
        an autoscaler adds a node for) and the clock starts again when one can."""
        ready = asyncio.ensure_future(actor.ready.remote())
        since = time.monotonic()
        while True:
            done, _ = await asyncio.wait({ready}, timeout=self.monitor_interval_s)
            if done:
                return ready.result()
            if self.pools.get(pool.spec.event_id) is not pool:
                ready.cancel()
                raise _Dropped()
            if self._placement_error(pool):
                since = time.monotonic()
            elif time.monotonic() - since > self.worker_start_timeout_s:
                ready.cancel()
                raise TimeoutError(f"not ready within {self.worker_start_timeout_s:.0f} s")

    def _notify(self, pool: Pool) -> None:
        async def notify() -> None:
            async with pool.available:
                pool.available.notify_all()

        task = asyncio.get_running_loop().create_task(notify())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- monitoring ------------------------------------------------------------------------------

    def _ensure_monitor(self) -> None:
        if self._monitor is None:
            self._monitor = asyncio.get_running_loop().create_task(self._monitor_loop())

    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.monitor_interval_s)
            now = time.monotonic()
            if now - self._nodes_read_at >= NODE_CHECK_INTERVAL_S:
                self._nodes_read_at = now
                try:
                    await self._check_nodes()
                except Exception as exc:  # the loop also expires gateways: it must go on
                    log.warning("reading the Ray node list failed: %s", exc)
            for gid, seen in list(self.gateways.items()):
                if now - seen > self.gateway_ttl_s:
                    log.warning("gateway %s silent for %.0f s: reclaiming its leases", gid, now - seen)
                    await self.forget_gateway(gid)
            for lid, lease in list(self.leases.items()):
                pool = self.pools.get(lease.event_id)
                limit = pool.spec.time_limit if pool is not None else None
                if limit is not None and lease.streaming_since is not None and now - lease.streaming_since > limit + self.time_limit_grace_s:
                    log.warning("lease %s outlived its time limit: reclaiming", lid)
                    await self.release(lid, worker_ok=False)
            for pool in list(self.pools.values()):
                self._apply_pending(pool)
                self._drop_if_orphaned(pool, now)
            self._expire_tickets(now)
            await self._request_resources()

    def _drop_if_orphaned(self, pool: Pool, now: float) -> None:
        """Drop a pool once every gateway that used it has been gone for the grace period
        (a gateway restarting within it finds its workers warm)."""
        if pool.ownerless or self._in_use(pool) or pool.gateways & self.gateways.keys():
            pool.orphan_since = None
            return
        if pool.orphan_since is None:
            pool.orphan_since = now
        elif now - pool.orphan_since >= self.orphan_pool_grace_s:
            log.info(
                "stream event %r: no gateway for %.0f s, dropping its pool (%d idle worker(s))",
                pool.spec.event_id, now - pool.orphan_since, len(pool.idle),
            )  # fmt: skip
            self._drop_pool(pool)

    # --- nodes ---------------------------------------------------------------------------------

    async def _check_nodes(self) -> None:
        listing = await asyncio.to_thread(ray.nodes)  # a blocking GCS call: off the loop
        alive = {n["NodeID"]: dict(n.get("Resources", {})) for n in listing if n.get("Alive")}
        before, self.nodes = self.nodes, alive
        if before is None or set(before) == set(alive):
            return
        gone = set(before) - set(alive)
        if gone:
            names = ", ".join(sorted(n[:SHORT_NODE_ID] for n in gone))
            log.warning("Ray node(s) %s gone: their workers leave the pools", names)
        for pool in list(self.pools.values()):
            lost = [w for w in pool.idle if _off(w, alive)]
            for w in lost:
                pool.idle.remove(w)
                pool.replaced_total += 1
                _kill(w.actor)
        for lid, lease in list(self.leases.items()):
            if lease.worker is not None and _off(lease.worker, alive):
                log.warning("lease %s: its worker's node is gone: reclaiming", lid)
                await self.release(lid, worker_ok=False)
        for pool in list(self.pools.values()):  # replacements, or workers a new node can take
            self._top_up(pool)

    def _placement_error(self, pool: Pool) -> str:
        """Why no alive node can take a worker of ``pool`` ("" if one can, or if unknown)."""
        if not self.nodes:
            return ""
        spec = pool.spec.pool
        demand = {k: v for k, v in spec.resources.items() if v > 0}
        for key, value in (("CPU", spec.num_cpus), ("GPU", spec.num_gpus), ("memory", spec.memory)):
            if value:
                demand[key] = float(value)
        fits = (all(res.get(k, 0.0) >= v for k, v in demand.items()) for res in self.nodes.values())
        if not demand or any(fits):
            return ""
        return (
            f"no alive Ray node offers {demand} for a worker of {pool.spec.event_id!r} "
            f"({len(self.nodes)} node(s) alive); one starts when such a node joins"
        )

    async def status(self) -> dict[str, Any]:
        return {
            "events": {
                eid: {
                    "limit": p.spec.concurrency_limit,
                    "active": len(p.busy),
                    "leases": sum(1 for lease in self.leases.values() if lease.event_id == eid),
                    "idle": len(p.idle),
                    "starting": p.starting,
                    "workers": [{**w.info, "busy": False} for w in p.idle]
                    + [{**w.info, "busy": True} for w in p.busy.values()],
                    "started_total": p.started_total,
                    "replaced_total": p.replaced_total,
                    "last_error": p.last_error,
                    "unplaceable": self._placement_error(p),
                    "gateways": sorted(p.gateways),
                    # the line: how many wait, how many slots are held for admitted ones
                    "queue": len(p.room),
                    "admitted": len(p.room.admitted),
                    "max_queue": p.spec.max_queue if p.spec.queue else 0,
                    "expected_session_s": p.room.expected_session_s(p.spec.time_limit),
                }
                for eid, p in self.pools.items()
            },
            "leases": len(self.leases),
            "tickets": len(self.tickets),
            "autoscale_request": list(self.autoscale_request),
            "autoscale_calls": self.autoscale_calls,
            "sessions": [self._lease_view(lease) for lease in self.leases.values()],
            "gateways": list(self.gateways),
            "media": [
                {
                    "gateway_id": gid,
                    "front_id": r.front_id if r is not None else "",
                    "node_id": (r.node_id if r is not None else "") or load.get("node_id", ""),
                    "pid": r.pid if r is not None else load.get("pid"),
                    "in_app": r is None or r.in_app,
                    "sessions": sum(1 for lease in self.leases.values() if lease.gateway_id == gid),
                    "cpu_percent": load.get("cpu_percent"),
                    "loop_lag_ms": load.get("loop_lag_ms"),
                }
                for gid in sorted(set(self.media) | set(self.loads))
                for r, load in [(self.media.get(gid), self.loads.get(gid, {}))]
            ],
        }

    @staticmethod
    def _lease_view(lease: Lease) -> dict[str, Any]:
        now = time.monotonic()
        info = lease.worker.info if lease.worker is not None else {}
        return {
            "lease": lease.lease_id[:SHORT_LEASE_ID],
            "event_id": lease.event_id,
            "gateway_id": lease.gateway_id,
            "node_id": info.get("node_id", ""),
            "pid": info.get("pid"),
            "age_s": round(now - lease.granted_at, 1),
            "streaming_s": None if lease.streaming_since is None else round(now - lease.streaming_since, 1),
            "transport": lease.transport,
        }

    async def shutdown(self) -> None:
        """Kill every worker (used when the deployment stops); the lines go, and with them
        any request to the autoscaler."""
        for pool in list(self.pools.values()):
            self._drop_line(pool, wr.STREAM_CHANGED, "the deployment is stopping")
        for pool in self.pools.values():
            for w in (*pool.idle, *pool.busy.values()):
                _kill(w.actor)
            pool.idle.clear()
            pool.busy.clear()
        self.leases.clear()
        self.pools.clear()
        self.tickets.clear()
        await self._request_resources()


def worker_bundle(spec: PoolSpec) -> dict[str, float]:
    """The resources one worker of a pool holds, as an autoscaler bundle (an actor with no
    num_cpus holds 1 CPU while Ray places it)."""
    bundle: dict[str, float] = {"CPU": float(spec.num_cpus if spec.num_cpus is not None else 1)}
    if spec.num_gpus:
        bundle["GPU"] = float(spec.num_gpus)
    if spec.memory:
        bundle["memory"] = float(spec.memory)
    bundle.update({k: float(v) for k, v in spec.resources.items() if v > 0})
    return bundle


def _off(worker: WorkerRef, alive: dict[str, Any]) -> bool:
    """Whether ``worker`` is on a node that is not alive (a worker that did not say: no)."""
    node = worker.info.get("node_id")
    return bool(node) and node not in alive


def _kill(actor: Any) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:
        pass


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


SchedulerActor = ray.remote(num_cpus=0)(Scheduler)


# Handles this process keeps, per Ray job: a scheduler that is not detached lives only while
# some handle to it does. Test-found: a gateway closed and collected took the last handle
# with it, Ray killed the actor, and the next gateway's get_if_exists got that dying actor.
_held: dict[tuple[str, str, bool], Any] = {}


def get_scheduler(detached: bool = False, namespace: str = C.RAY_NAMESPACE, *, replace: bool = False) -> Any:
    """The deployment's scheduler actor in ``namespace`` (``ray.namespace``: two apps on one
    cluster in two namespaces have a scheduler each), created on first use and kept for the
    life of this process's Ray job. ``replace``: the one held has died; find or make anew."""
    key = (ray.get_runtime_context().get_job_id(), namespace, detached)
    if replace:
        _held.pop(key, None)
    if key not in _held:
        for old in [k for k in _held if k[0] != key[0]]:
            del _held[old]  # handles of an earlier ray.init
        _held[key] = _create_scheduler(detached, namespace)
    return _held[key]


def _create_scheduler(detached: bool, namespace: str) -> Any:
    options: dict[str, Any] = {
        "name": C.SCHEDULER_NAME,
        "namespace": namespace,
        "get_if_exists": True,
        "max_concurrency": 1000,
        "resources": {C.HEAD_NODE_RESOURCE: HEAD_NODE_SHARE},
    }
    if detached:
        options["lifetime"] = "detached"
    return SchedulerActor.options(**options).remote()
