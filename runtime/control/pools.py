"""The worker pools: one per stream event, each pre-warmed, grown to its limit, topped up.

A :class:`Pool` holds a stream event's idle and busy workers and its waiting room; the
:class:`Pools` manager starts, hands out, takes back and replaces workers, and knows which
alive Ray node could take one (a pool whose workers fit no node answers at once, and keeps
one worker requested: the pending demand an autoscaler adds a node for).

Part of the scheduler actor (runtime/control/scheduler.py): one event loop, no locks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from runtime import constants as C
from runtime.control.leases import FailoverPolicy
from runtime.control.waiting_room import WaitingRoom
from workers.link.messages import WorkerInfo
from workers.process.loader import HandlerSpec

log = logging.getLogger("rtcpool.scheduler")

SHORT_NODE_ID = 12  # hex characters of a node id in a log line
WORKER_MAX_CONCURRENCY = 4  # Ray calls a worker actor serves at once (arm, stats, ready...)


@dataclass
class PoolSpec:
    prewarm: int = C.POOL_PREWARM
    max_workers: int = C.POOL_MAX
    num_cpus: float | None = None
    num_gpus: float | None = None
    memory: int | None = None
    resources: dict[str, float] = field(default_factory=dict)
    spare_workers: int = C.POOL_SPARE_WORKERS
    snapshot_interval_s: float = C.SNAPSHOT_INTERVAL_S
    max_restarts: int = C.MAX_RESTARTS
    restart_window_s: float = C.RESTART_WINDOW_S
    worker_memory_limit_mb: int = C.WORKER_MEMORY_LIMIT_MB
    max_snapshot_bytes: int = C.MAX_SNAPSHOT_BYTES

    def failover(self) -> FailoverPolicy:
        return FailoverPolicy(
            self.snapshot_interval_s, self.max_restarts, self.restart_window_s, self.max_snapshot_bytes, self.worker_memory_limit_mb
        )


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
        pool = (p.prewarm, p.max_workers, p.spare_workers, p.num_cpus, p.num_gpus, p.memory, tuple(sorted(p.resources.items())))
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
    info: WorkerInfo  # the worker's ready() answer, less its token


@dataclass
class LeaseRecord:
    """A slot held for one session (its worker once one is armed for it)."""

    lease_id: str
    event_id: str
    gateway_id: str
    session_id: str
    granted_at: float
    worker: WorkerRef | None = None
    streaming_since: float | None = None
    transport: str = ""  # "shm" or "tcp", as the gateway's heartbeat reports it
    client: str = ""  # the client's address key (runtime/guard/limits.py client_key); "" exempt
    # a resume (docs/failover.md): the session key's digest, which a resume offer must match;
    # how long the lease outlives its media process; since when it has (monotonic), if it has
    key_digest: str = ""
    resume_grace_s: float = 0.0
    orphaned_at: float | None = None


class Leases(dict[str, LeaseRecord]):
    """The leases in force, by lease id."""

    def of_event(self, event_id: str) -> list[LeaseRecord]:
        return [lease for lease in self.values() if lease.event_id == event_id]

    def held_by(self, client: str) -> int:
        """Leases (sessions, pending offers included) of one client address, deployment-wide."""
        return sum(1 for lease in self.values() if lease.client == client)

    def of_gateway(self, gateway_id: str) -> list[str]:
        return [lid for lid, lease in self.items() if lease.gateway_id == gateway_id]


class Unplaceable(Exception):
    """No alive node has the resources a worker of this pool asks for."""


class _Dropped(Exception):
    """A worker's pool was dropped while the worker started."""


class Pool:
    def __init__(self, spec: EventSpec, ticket_ttl_s: float = C.QUEUE_TICKET_TTL_S) -> None:
        self.spec = spec
        self.idle: list[WorkerRef] = []
        self.busy: dict[str, WorkerRef] = {}  # lease id -> its worker
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
        """Worker processes the pool holds at most: one per slot, and with a
        concurrency_limit ``pool.spare_workers`` more, kept idle while every slot is taken so
        that a session whose worker dies takes over a warm one (docs/failover.md)."""
        if self.max_workers_override is not None:
            return self.max_workers_override
        limit = self.spec.concurrency_limit
        return self.spec.pool.max_workers if limit is None else max(limit, 1) + self.spec.pool.spare_workers

    @property
    def total(self) -> int:
        return len(self.idle) + len(self.busy) + self.starting

    @property
    def capacity(self) -> int:
        """Sessions the stream serves at once: its concurrency_limit, or with None the
        pool's max_workers (the pool grows to that before anyone waits)."""
        if self.max_workers_override is not None:
            return self.max_workers_override
        limit = self.spec.concurrency_limit
        return self.spec.pool.max_workers if limit is None else max(limit, 1)

    def attach(self, gateway_id: str) -> None:
        self.gateways.add(gateway_id)
        self.ownerless = False
        self.orphan_since = None


class Pools:
    """Every stream event's pool, by event id, and the alive Ray nodes they place workers on."""

    def __init__(self, monitor_interval_s: float, worker_start_timeout_s: float, ticket_ttl_s: float) -> None:
        self.monitor_interval_s = monitor_interval_s
        self.worker_start_timeout_s = worker_start_timeout_s
        self.ticket_ttl_s = ticket_ttl_s
        self.by_event: dict[str, Pool] = {}
        # alive node id -> its total resources; None until first read (placement unknown)
        self.nodes: dict[str, dict[str, float]] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def get(self, event_id: str) -> Pool | None:
        return self.by_event.get(event_id)

    def __getitem__(self, event_id: str) -> Pool:
        return self.by_event[event_id]

    def all(self) -> list[Pool]:
        return list(self.by_event.values())

    def served(self, pool: Pool) -> bool:
        """Whether ``pool`` is still its event's pool (not dropped or replaced)."""
        return self.by_event.get(pool.spec.event_id) is pool

    def create(self, spec: EventSpec) -> Pool:
        pool = self.by_event[spec.event_id] = Pool(spec, self.ticket_ttl_s)
        return pool

    def replace(self, pool: Pool, spec: EventSpec) -> Pool:
        """A new pool for ``spec`` in place of ``pool`` (which holds no lease; its line was
        not dropped); its idle workers are killed, its gateways and its line carried over."""
        line = pool.room
        pool.room = WaitingRoom()  # the line moves to the new pool, not out with the old one
        self.drop(pool)
        new = self.create(spec)
        new.gateways, new.ownerless = set(pool.gateways), pool.ownerless
        new.room.waiting, new.room.admitted, new.room.lengths, new.room.turns = line.waiting, line.admitted, line.lengths, line.turns
        return new

    def drop(self, pool: Pool) -> None:
        """Forget ``pool`` and kill its idle workers (its line is the caller's to drop first)."""
        self.by_event.pop(pool.spec.event_id, None)
        for w in pool.idle:
            kill(w.actor)
        pool.idle.clear()
        pool.max_workers_override = 0  # workers still starting are killed when they are ready

    def clear(self) -> None:
        """Kill every worker, idle or busy (the deployment stops)."""
        for pool in self.by_event.values():
            for w in (*pool.idle, *pool.busy.values()):
                kill(w.actor)
            pool.idle.clear()
            pool.busy.clear()
        self.by_event.clear()

    # --- workers -------------------------------------------------------------------------------

    def return_worker(self, pool: Pool, worker: WorkerRef, healthy: bool) -> None:
        if healthy:
            pool.idle.append(worker)
            self.notify(pool)
        else:
            pool.replaced_total += 1
            kill(worker.actor)
            self.top_up(pool)

    def top_up(self, pool: Pool) -> None:
        # idle ones: the pre-warm count, or as many spares as the pool has room for beyond
        # its busy workers (all slots taken: the spares)
        want = min(max(pool.spec.pool.prewarm, pool.spec.pool.spare_workers), pool.max_workers)
        while len(pool.idle) + pool.starting < want and pool.total < pool.max_workers:
            self.start_worker(pool)

    def start_worker(self, pool: Pool) -> None:
        pool.starting += 1
        pool.started_total += 1
        self._spawn(self._run_start(pool))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_start(self, pool: Pool) -> None:
        from workers.process.actor import Worker

        spec = pool.spec.pool
        options: dict[str, Any] = {"max_restarts": 0, "max_concurrency": WORKER_MAX_CONCURRENCY}
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
            kill(actor)
            pool.starting -= 1
            return
        except Exception as exc:
            pool.last_error = f"worker for {pool.spec.event_id} failed to start: {reason(exc)}"
            pool.start_failures += 1
            log.error("%s", pool.last_error)
            if actor is not None:
                kill(actor)
            pool.starting -= 1
            self.notify(pool)
            return
        pool.starting -= 1
        if not self.served(pool):  # dropped while it started
            kill(actor)
            return
        pool.last_error = ""
        # the worker's own token goes: every lease arms a token of its own
        pool.idle.append(WorkerRef(actor, info.without_token()))
        self.notify(pool)

    async def _wait_ready(self, pool: Pool, actor: Any) -> WorkerInfo:
        """The worker's ready() answer. The start timeout counts only while some alive node
        can take the worker: while none can, the request is kept (it is the pending demand
        an autoscaler adds a node for) and the clock starts again when one can."""
        ready = asyncio.ensure_future(actor.ready.remote())
        since = time.monotonic()
        while True:
            done, _ = await asyncio.wait({ready}, timeout=self.monitor_interval_s)
            if done:
                info: WorkerInfo = ready.result()
                return info
            if not self.served(pool):
                ready.cancel()
                raise _Dropped()
            if self.placement_error(pool):
                since = time.monotonic()
            elif time.monotonic() - since > self.worker_start_timeout_s:
                ready.cancel()
                raise TimeoutError(f"not ready within {self.worker_start_timeout_s:.0f} s")

    def notify(self, pool: Pool) -> None:
        async def notify() -> None:
            async with pool.available:
                pool.available.notify_all()

        self._spawn(notify())

    async def wait_warm(self, pool: Pool, timeout: float) -> int:
        """Wait until the pool's pre-warm count of workers is idle; how many are."""
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

    async def take_worker(self, pool: Pool, node_id: str = "") -> WorkerRef:
        """An idle worker, started if the pool may grow; on ``node_id`` where there is one."""
        deadline = time.monotonic() + C.LEASE_TIMEOUT_S
        failures_before = pool.start_failures
        async with pool.available:
            while not pool.idle:
                unplaceable = self.placement_error(pool)
                if unplaceable:
                    pool.last_error = unplaceable
                    # Keep one worker requested: Ray holds it as pending demand, which an
                    # autoscaler answers with a node (a GPU pool scaled to zero, prewarm 0).
                    # The offer is answered now all the same, not held for LEASE_TIMEOUT_S.
                    if pool.starting == 0 and pool.total < pool.max_workers:
                        self.start_worker(pool)
                    raise Unplaceable(unplaceable)
                if pool.total < pool.max_workers:
                    self.start_worker(pool)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no worker ready within {C.LEASE_TIMEOUT_S:.0f} s: {pool.last_error}")
                try:
                    # a slice at a time: a node that died meanwhile makes the pool unplaceable,
                    # which the loop's top sees (CI-found: a failover after its node was lost
                    # waited out LEASE_TIMEOUT_S for a worker no node could hold)
                    await asyncio.wait_for(pool.available.wait(), min(left, self.monitor_interval_s))
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
                if pool.idle[i].info.node_id == node_id:
                    return pool.idle.pop(i)
            return pool.idle.pop()

    # --- nodes ---------------------------------------------------------------------------------

    def nodes_changed(self, alive: dict[str, dict[str, float]]) -> bool:
        """Take the alive nodes' list; whether the set of nodes changed (not on the first
        read). Idle workers on a node that went leave their pools."""
        before, self.nodes = self.nodes, alive
        if before is None or set(before) == set(alive):
            return False
        gone = set(before) - set(alive)
        if gone:
            names = ", ".join(sorted(n[:SHORT_NODE_ID] for n in gone))
            log.warning("Ray node(s) %s gone: their workers leave the pools", names)
        for pool in self.all():
            lost = [w for w in pool.idle if off_node(w, alive)]
            for w in lost:
                pool.idle.remove(w)
                pool.replaced_total += 1
                kill(w.actor)
        return True

    def placement_error(self, pool: Pool) -> str:
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


def off_node(worker: WorkerRef, alive: dict[str, Any]) -> bool:
    """Whether ``worker`` is on a node that is not alive (a worker that did not say: no)."""
    node = worker.info.node_id
    return bool(node) and node not in alive


def kill(actor: Any) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:
        pass


def reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
