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
to start does not hold up other calls. The actor is thin: it composes the state managers
and keeps the gateways' heartbeats and the leases between them:

* runtime/control/pools.py       the worker pools (prewarm, start, replace) and the alive nodes;
* runtime/control/lines.py       the waiting lines' tickets across the deployment;
* runtime/control/directory.py   the media processes and the session directory;
* runtime/control/autoscale.py   the request to Ray's autoscaler;
* runtime/control/messages.py    every answer that crosses Ray (runtime/control/leases.py the
                                 lease answers): frozen dataclasses, ``to_json()`` at the edge.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
import uuid
from typing import Any

import ray

from runtime import constants as C
from runtime.control import waiting_room as wr
from runtime.control.autoscale import Autoscale
from runtime.control.directory import Directory
from runtime.control.leases import LeaseDenied, LeaseGrant, LeaseQueued
from runtime.control.lines import Lines
from runtime.control.messages import (
    EngineLoad,
    EventStatus,
    HeartbeatAnswer,
    RegisterAnswer,
    SchedulerStatus,
    SessionLocation,
    SessionRow,
    WorkerStatus,
)
from runtime.control.pools import (
    EventSpec,
    LeaseRecord,
    Leases,
    Pool,
    Pools,
    Unplaceable,
    WorkerRef,
    off_node,
    reason,
)
from runtime.control.waiting_room import QueueView, Ticket
from runtime.errors import ErrorCode
from runtime.guard.limits import SESSIONS_RETRY_AFTER_S

log = logging.getLogger("rtcpool.scheduler")

TIME_LIMIT_GRACE_S = 10.0  # lease backstop past a stream's time_limit
MONITOR_INTERVAL_S = 1.0  # how often expired gateways and leases are looked for
NODE_CHECK_INTERVAL_S = 1.0  # how often the list of alive Ray nodes is read (one GCS call)
HEAD_NODE_SHARE = 0.001  # of that marker the scheduler holds (as Ray Serve's controller does)
SHORT_LEASE_ID = 8  # hex characters of a lease id in `rtcpool status`
ORPHAN_POOL_GRACE_S = 60.0  # a pool whose gateways are all gone keeps its idle workers this long
ARM_ATTEMPTS = 2  # workers tried for one lease when handing a worker its token fails
SCHEDULER_MAX_CONCURRENCY = 1000  # calls the actor serves at once (offers wait for workers)


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
        self.pools = Pools(monitor_interval_s, worker_start_timeout_s, ticket_ttl_s)
        self.leases = Leases()
        self.lines = Lines(self.pools, self.leases)
        # the media processes (engines that are Ray actors), by gateway id: the session
        # directory maps a session to its lease's gateway id, and that to a handle there
        self.directory = Directory(self.media_gone)
        self.autoscale = Autoscale()
        self.gateways: dict[str, float] = {}  # gateway id -> last heartbeat (monotonic)
        self._monitor: asyncio.Task[None] | None = None
        self._nodes_read_at = 0.0

    # --- registration ----------------------------------------------------------------------

    async def register(self, spec: EventSpec, gateway_id: str | None = None) -> RegisterAnswer:
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
                    f"{len(self.leases.of_event(spec.event_id))} session(s) hold its slots, so the "
                    f"current one stays in force (concurrency_limit {pool.spec.concurrency_limit}) "
                    "until they end, then the pool is replaced"
                )
                log.warning("%s", warning)
            else:
                # same id, other handler or limits (an app restarted with changes): start afresh
                log.info("stream event %r changed (%s): a new pool", spec.event_id, changes)
                pool = self.pools.replace(pool, spec)
        elif pool is not None:
            pool.pending = None  # the spec in force registered again: the newest word wins
        if pool is None:
            pool = self.pools.create(spec)
        if gateway_id:
            self.gateways[gateway_id] = time.monotonic()  # registering counts as a beat
            pool.attach(gateway_id)
        self.pools.top_up(pool)
        return RegisterAnswer(spec.event_id, pool.spec.concurrency_limit, pool.spec.time_limit, pool.pending is not None, warning)

    def _in_use(self, pool: Pool) -> bool:
        return bool(pool.busy) or bool(self.leases.of_event(pool.spec.event_id))

    def _apply_pending(self, pool: Pool) -> None:
        if pool.pending is not None and not self._in_use(pool) and self.pools.served(pool):
            log.info("stream event %r: its sessions ended, the registered change takes effect", pool.spec.event_id)
            new = self.pools.replace(pool, pool.pending)
            self.pools.top_up(new)
            self.lines.admit(new)

    async def unregister(self, event_id: str) -> bool:
        """Remove a stream event and kill its workers, if no session holds one of its slots."""
        pool = self.pools.get(event_id)
        if pool is None or pool.busy or self.leases.of_event(event_id):
            return False
        self._drop_pool(pool)
        return True

    def _drop_pool(self, pool: Pool) -> None:
        self.lines.drop(pool, wr.STREAM_CHANGED, f"the stream {pool.spec.event_id!r} is no longer served")
        self.pools.drop(pool)

    async def wait_warm(self, event_id: str, timeout: float) -> int:
        """Wait until the event's pre-warm count of workers is idle (tests, benchmarks)."""
        return await self.pools.wait_warm(self.pools[event_id], timeout)

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
        max_per_client: int = 0,
        key_digest: str = "",
        resume_grace_s: float = 0.0,
    ) -> LeaseGrant | LeaseDenied | LeaseQueued:
        """A slot and an idle worker for session ``session_id`` of ``gateway_id``; an idle
        worker on ``node_id`` (the engine's node: shared memory instead of TCP) if any.

        A full stream (or one with a line: nobody jumps it) puts the session in its waiting
        room when the stream queues and the client takes it (``queue``): the answer is its
        place in line. The same offer posted again with the ``ticket`` gets the slot held
        for it once admitted (or its place in line again while it waits). ``client``: the
        client's address key, for the per-address bound on tickets ("" exempt), and on
        sessions: ``max_per_client`` (0: none) leases at once per address, counted here, over
        every gateway, media process and transport of the deployment (an engine alone sees
        only its own)."""
        pool = self.pools.get(event_id)
        if pool is None:
            return LeaseDenied(ErrorCode.UNKNOWN_STREAM, f"no stream event {event_id!r}")
        now = time.monotonic()
        if any(x.session_id == session_id and x.orphaned_at is not None for x in self.leases.values()):
            # held for its client's resume: only the session's key takes it (resume())
            return LeaseDenied(ErrorCode.SESSION_KEY_REQUIRED, f"session {session_id!r} waits for its client to resume it: re-offer with its session_key")
        self.gateways[gateway_id] = now
        pool.attach(gateway_id)
        if client and max_per_client and self.leases.held_by(client) >= max_per_client:
            return LeaseDenied(
                ErrorCode.TOO_MANY_SESSIONS,
                f"at most {max_per_client} sessions per client address",
                limit=max_per_client,
                retry_after=SESSIONS_RETRY_AFTER_S,
            )
        held: Ticket | None = None
        if ticket is not None:
            redeemed = self.lines.redeem(pool, ticket, session_id, now)
            if not isinstance(redeemed, Ticket):
                return redeemed
            held = redeemed
        else:
            refused = self.lines.check(pool, session_id, queue, client, now)
            if refused is not None:
                return refused
        # the slot is taken now, before any wait, so concurrent offers cannot overshoot
        lease = LeaseRecord(
            uuid.uuid4().hex, event_id, gateway_id, session_id, time.monotonic(), client=client,
            key_digest=key_digest, resume_grace_s=resume_grace_s,
        )  # fmt: skip
        self.leases[lease.lease_id] = lease
        if held is not None:
            self.lines.claim(pool, held, now)  # its held slot is the lease now
        answer = await self._arm(pool, lease, node_id)
        if not answer.ok:
            self._unlease(pool, lease)
        return answer

    async def failover(self, lease_id: str, node_id: str = "") -> LeaseGrant | LeaseDenied:
        """The worker of lease ``lease_id`` died under its session: a fresh worker for the
        same lease (docs/failover.md). The lease keeps its slot throughout, so the stream's
        concurrency_limit never overshoots while the replacement starts; the dead worker is
        dropped from the pool, which starts another to keep its pre-warm count. A refusal
        leaves the lease held: the session ends and gives it back."""
        lease = self.leases.get(lease_id)
        pool = self.pools.get(lease.event_id) if lease is not None else None
        if lease is None or pool is None:
            return LeaseDenied(ErrorCode.EXPIRED, "no such lease (it expired or was given back)")
        self.gateways[lease.gateway_id] = time.monotonic()
        dead = pool.busy.pop(lease_id, None)
        lease.worker = None
        if dead is not None:
            self.pools.return_worker(pool, dead, healthy=False)
        return await self._arm(pool, lease, node_id)

    async def resume(self, session_id: str, key_digest: str, gateway_id: str, node_id: str = "") -> LeaseGrant | LeaseDenied:
        """A client re-offers for session ``session_id`` whose media process died: its lease,
        held for its resume grace, moves to ``gateway_id`` with its worker (which held the
        handler, state and all) armed with a new token; a worker that died meanwhile is
        replaced as in :meth:`failover`. ``key_digest`` (of the session key the client
        presents) must match the one the lease was taken with: else bad_session_key, and
        nothing changes."""
        lease = next((x for x in self.leases.values() if x.session_id == session_id), None)
        if lease is None or not lease.key_digest:
            return LeaseDenied(ErrorCode.NOT_RESUMABLE, f"no session {session_id!r} to resume (it ended, or its grace is over)")
        if not isinstance(key_digest, str) or not hmac.compare_digest(lease.key_digest, key_digest):
            return LeaseDenied(ErrorCode.BAD_SESSION_KEY, "the session key does not match the session")
        if lease.orphaned_at is None:
            return LeaseDenied(ErrorCode.DUPLICATE_WEBRTC_ID, f"session {session_id!r} is live on another media process")
        pool = self.pools.get(lease.event_id)
        if pool is None:
            return LeaseDenied(ErrorCode.NOT_RESUMABLE, f"the stream of session {session_id!r} is no longer served")
        orphaned_for = time.monotonic() - lease.orphaned_at
        lease.gateway_id, lease.orphaned_at = gateway_id, None
        self.gateways[gateway_id] = time.monotonic()
        pool.attach(gateway_id)
        worker = pool.busy.get(lease.lease_id)
        if worker is not None:
            token = secrets.token_hex(C.TOKEN_BYTES)
            try:
                await asyncio.wait_for(worker.actor.arm.remote(token), C.RAY_CALL_TIMEOUT_S)
                log.info("session %s resumed on %s after %.1f s, worker pid %s", session_id, gateway_id, orphaned_for, worker.info.pid)
                return self._grant(pool, lease, worker, token, resumed=True)
            except Exception as exc:
                log.warning("session %s: its held worker is gone (%s): a fresh one", session_id, reason(exc))
                pool.busy.pop(lease.lease_id, None)
                lease.worker = None
                self.pools.return_worker(pool, worker, healthy=False)
        return await self._arm(pool, lease, node_id)

    async def abandon(self, session_id: str, key_digest: str) -> bool:
        """The client of a session held for its resume hangs up (POST /webrtc/close): the
        lease is given back now, not at the end of the grace, so a later resume finds
        nothing. False: no held session of that id, or not with that key."""
        lease = next((x for x in self.leases.values() if x.session_id == session_id and x.orphaned_at is not None), None)
        if lease is None or not isinstance(key_digest, str) or not hmac.compare_digest(lease.key_digest, key_digest):
            return False
        log.info("session %s: its client hung up while it waited for a resume", session_id)
        await self.release(lease.lease_id, worker_ok=True)
        return True

    async def media_gone(self, gateway_id: str) -> int:
        """A media process died: its leases with a resume grace are held for their clients
        to re-offer (:meth:`resume`; their workers hold the handlers), the others given back
        at once. Returns how many leases it had."""
        mine = self.leases.of_gateway(gateway_id)
        self.gateways.pop(gateway_id, None)
        self.directory.forget(gateway_id)
        for pool in self.pools.all():
            pool.gateways.discard(gateway_id)
        now = time.monotonic()
        for lid in mine:
            lease = self.leases.get(lid)
            if lease is None:
                continue
            if lease.resume_grace_s > 0 and lease.worker is not None and lease.key_digest:
                lease.orphaned_at = now
            else:
                await self.release(lid, worker_ok=False)
        return len(mine)

    def _grant(self, pool: Pool, lease: LeaseRecord, worker: WorkerRef, token: str, resumed: bool = False) -> LeaseGrant:
        return LeaseGrant(
            lease.lease_id,
            worker.actor,
            worker.info.endpoint,
            worker.info.tcp_endpoint,
            token,
            worker.info.pid,
            worker.info.node_id,
            pool.spec.time_limit,
            pool.spec.pool.failover(),
            resumed,
        )

    async def _arm(self, pool: Pool, lease: LeaseRecord, node_id: str) -> LeaseGrant | LeaseDenied:
        """An idle worker for ``lease`` (on ``node_id`` where there is one), armed with a
        new token. A refusal leaves the lease to the caller."""
        event_id = pool.spec.event_id
        token = secrets.token_hex(C.TOKEN_BYTES)
        for attempt in range(ARM_ATTEMPTS):
            try:
                if self.pools.nodes is None:  # the first offer, before the monitor read the nodes
                    await self._read_nodes()
                worker = await self.pools.take_worker(pool, node_id)
            except Unplaceable as exc:
                return LeaseDenied(ErrorCode.NO_NODE_FITS, str(exc))
            except Exception as exc:
                return LeaseDenied(ErrorCode.NO_WORKER, str(exc))
            # the worker learns the lease's token over Ray before anyone else does; it takes
            # exactly one session with it. Busy meanwhile: a worker counted nowhere would let
            # a concurrent offer start one too many.
            pool.busy[lease.lease_id] = worker
            try:
                await asyncio.wait_for(worker.actor.arm.remote(token), C.RAY_CALL_TIMEOUT_S)
                break
            except Exception as exc:
                # gone or hung since it went idle: replace it and try another
                log.warning("worker %s of %s did not take its token: %s", worker.info.pid, event_id, reason(exc))
                pool.busy.pop(lease.lease_id, None)
                self.pools.return_worker(pool, worker, healthy=False)
                if attempt == ARM_ATTEMPTS - 1:
                    return LeaseDenied(ErrorCode.NO_WORKER, f"no worker took a session token: {reason(exc)}")
        if lease.lease_id not in self.leases:  # reclaimed while waiting (gateway expired)
            if pool.busy.pop(lease.lease_id, None) is not None:  # not already given back
                self.pools.return_worker(pool, worker, healthy=True)
            return LeaseDenied(ErrorCode.EXPIRED, "lease expired while waiting")
        lease.worker = worker
        self.pools.top_up(pool)
        return self._grant(pool, lease, worker, token)

    def _unlease(self, pool: Pool, lease: LeaseRecord) -> None:
        """A lease that never became a session (no worker): its slot goes to the line."""
        self.leases.pop(lease.lease_id, None)
        self.lines.admit(pool)

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
            self.pools.return_worker(pool, worker, healthy=worker_ok)
        if pool is not None:
            if lease.streaming_since is not None:
                pool.room.session_ended(time.monotonic() - lease.streaming_since)  # for the ETA
            self._apply_pending(pool)
            self.lines.admit(self.pools.get(lease.event_id) or pool)  # the slot goes to the head of the line
        return True

    # --- gateways ------------------------------------------------------------------------------

    async def heartbeat(
        self,
        gateway_id: str,
        lease_ids: list[str],
        event_ids: list[str] | None = None,
        transports: dict[str, str] | None = None,
        load: EngineLoad | None = None,
    ) -> HeartbeatAnswer:
        """Renew a gateway's leases and its hold on its events' pools. Returns ``gone``: the
        leases the scheduler no longer knows (the gateway must end those sessions), and
        ``unknown_events``: the events it no longer knows (dropped while the gateway was
        silent past the TTL: it must register them again). ``transports``: lease id ->
        "shm"/"tcp", for `rtcpool status`; ``load``: the engine's EngineLoad, likewise."""
        self.gateways[gateway_id] = time.monotonic()
        if load is not None:
            self.directory.loads[gateway_id] = load
        unknown = []
        for eid in event_ids or []:
            pool = self.pools.get(eid)
            if pool is None:
                unknown.append(eid)
            else:
                pool.attach(gateway_id)
        for lid, transport in (transports or {}).items():
            lease = self.leases.get(lid)
            if lease is not None and lease.gateway_id == gateway_id:
                lease.transport = str(transport)
        return HeartbeatAnswer(tuple(lid for lid in lease_ids if lid not in self.leases), tuple(unknown))

    async def forget_gateway(self, gateway_id: str) -> int:
        """A gateway shutting down (or silent past the TTL) gives back all its leases, and
        its hold on its pools."""
        self.gateways.pop(gateway_id, None)
        self.directory.forget(gateway_id)
        for pool in self.pools.all():
            pool.gateways.discard(gateway_id)
        mine = self.leases.of_gateway(gateway_id)
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
        self.directory.add(gateway_id, actor, front_id, node_id, pid, in_app)

    async def locate(self, session_id: str) -> SessionLocation | None:
        """The session directory: which engine holds ``session_id``, and the actor to
        forward to (None: an engine inside some app's process, which no other process
        reaches). None: no such session anywhere."""
        # a lease held for a resume is nowhere until its client re-offers
        return self.directory.locate(session_id, [x for x in self.leases.values() if x.orphaned_at is None])

    # --- the waiting room ------------------------------------------------------------------------

    async def queue_wait(self, tickets: list[list[str]], since: int, timeout: float) -> tuple[int, dict[str, QueueView]]:
        """A front's long poll for the tickets its clients follow, as [secret, webrtc_id]
        pairs: renews them (a ticket nobody follows is dropped after its TTL), waits until
        any line changed after version ``since`` (or ``timeout``), and returns the version
        and each ticket's view (by secret; a pair whose webrtc_id is not the ticket's is
        told of no such ticket)."""
        return await self.lines.wait(tickets, since, timeout)

    async def leave(self, secret: str, session_id: str, reason: str = wr.LEFT) -> bool:
        """A client leaves the line (Stop, a closed tab): the next one moves up; a held slot
        goes to the head of the line. False: no such ticket for ``session_id``."""
        return self.lines.leave(secret, session_id, reason)

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
                await self._read_nodes()  # the loop also expires gateways: it must go on
            for gid, seen in list(self.gateways.items()):
                if now - seen > self.gateway_ttl_s:
                    log.warning("gateway %s silent for %.0f s: reclaiming its leases", gid, now - seen)
                    await self.forget_gateway(gid)
            for lid, lease in list(self.leases.items()):
                if lease.orphaned_at is not None and now - lease.orphaned_at > lease.resume_grace_s:
                    log.info("session %s was not resumed within %.0f s: its lease is given back", lease.session_id, lease.resume_grace_s)
                    # its worker shut the handler down at its own deadline: healthy, it goes back
                    await self.release(lid, worker_ok=True)
                    continue
                pool = self.pools.get(lease.event_id)
                limit = pool.spec.time_limit if pool is not None else None
                if limit is not None and lease.streaming_since is not None and now - lease.streaming_since > limit + self.time_limit_grace_s:
                    log.warning("lease %s outlived its time limit: reclaiming", lid)
                    await self.release(lid, worker_ok=False)
            for pool in self.pools.all():
                self._apply_pending(pool)
                self._drop_if_orphaned(pool, now)
            self.lines.expire(now)
            await self.autoscale.want(self.lines.wanted())

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

    async def _read_nodes(self) -> None:
        try:
            await self._check_nodes()
        except Exception as exc:
            log.warning("reading the Ray node list failed: %s", exc)

    async def _check_nodes(self) -> None:
        listing = await asyncio.to_thread(ray.nodes)  # a blocking GCS call: off the loop
        alive = {n["NodeID"]: dict(n.get("Resources", {})) for n in listing if n.get("Alive")}
        if not self.pools.nodes_changed(alive):
            return
        for lid, lease in list(self.leases.items()):
            if lease.worker is not None and off_node(lease.worker, alive):
                log.warning("lease %s: its worker's node is gone: reclaiming", lid)
                await self.release(lid, worker_ok=False)
        for pool in self.pools.all():  # replacements, or workers a new node can take
            self.pools.top_up(pool)

    # --- status ----------------------------------------------------------------------------------

    async def status(self) -> SchedulerStatus:
        return SchedulerStatus(
            events={eid: self._event_status(p) for eid, p in self.pools.by_event.items()},
            leases=len(self.leases),
            tickets=len(self.lines.tickets),
            autoscale_request=tuple(self.autoscale.request),
            autoscale_calls=self.autoscale.calls,
            sessions=tuple(self._lease_row(lease) for lease in self.leases.values()),
            gateways=tuple(self.gateways),
            media=self.directory.rows(self.leases.values()),
        )

    def _event_status(self, p: Pool) -> EventStatus:
        return EventStatus(
            limit=p.spec.concurrency_limit,
            active=len(p.busy),
            leases=len(self.leases.of_event(p.spec.event_id)),
            idle=len(p.idle),
            starting=p.starting,
            workers=tuple(WorkerStatus.of(w.info, False) for w in p.idle) + tuple(WorkerStatus.of(w.info, True) for w in p.busy.values()),
            started_total=p.started_total,
            replaced_total=p.replaced_total,
            last_error=p.last_error,
            unplaceable=self.pools.placement_error(p),
            gateways=tuple(sorted(p.gateways)),
            # the line: how many wait, how many slots are held for admitted ones
            queue=len(p.room),
            admitted=len(p.room.admitted),
            max_queue=p.spec.max_queue if p.spec.queue else 0,
            expected_session_s=p.room.expected_session_s(p.spec.time_limit),
        )

    @staticmethod
    def _lease_row(lease: LeaseRecord) -> SessionRow:
        now = time.monotonic()
        info = lease.worker.info if lease.worker is not None else None
        return SessionRow(
            lease=lease.lease_id[:SHORT_LEASE_ID],
            event_id=lease.event_id,
            gateway_id=lease.gateway_id,
            node_id=info.node_id if info is not None else "",
            pid=info.pid if info is not None else None,
            age_s=round(now - lease.granted_at, 1),
            streaming_s=None if lease.streaming_since is None else round(now - lease.streaming_since, 1),
            transport=lease.transport,
        )

    async def shutdown(self) -> None:
        """Kill every worker (used when the deployment stops); the lines go, and with them
        any request to the autoscaler."""
        for pool in self.pools.all():
            self.lines.drop(pool, wr.STREAM_CHANGED, "the deployment is stopping")
        self.pools.clear()
        self.leases.clear()
        self.lines.tickets.clear()
        await self.autoscale.want(self.lines.wanted())


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
        "max_concurrency": SCHEDULER_MAX_CONCURRENCY,
        "resources": {C.HEAD_NODE_RESOURCE: HEAD_NODE_SHARE},
    }
    if detached:
        options["lifetime"] = "detached"
    return SchedulerActor.options(**options).remote()
