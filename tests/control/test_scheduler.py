"""runtime/control/scheduler.py against a real local Ray: leases, limits, pools, expiry.

The tests share one scheduler actor of this module's own (not the deployment's named one,
which other test modules use), each with its own event ids; the ones that need other timings
or the scheduler-wide numbers get a private one. Worker actors are real processes (~1-2 s to
start on a 2-core box), so each test starts as few as it needs; waits are generous and end as
soon as their condition holds.
"""

from __future__ import annotations

import asyncio
import base64
import os
import pickle
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime import constants as C
from runtime.cli import collect_status, format_status
from runtime.control.messages import EventStatus, HeartbeatAnswer, RegisterAnswer
from runtime.control.pools import EventSpec, PoolSpec
from runtime.control.scheduler import SHORT_LEASE_ID, SchedulerActor, get_scheduler
from runtime.guard.limits import SESSIONS_RETRY_AFTER_S
from tests.conftest import wait_until
from tests.workers.link.blocking import connect_worker
from workers.link.shm import Geometry
from workers.link.wire import SLOT_HEADER_BYTES, Hello
from workers.process.loader import HandlerSpec, make_spec, source_hash

pytestmark = pytest.mark.timeout(120)

CALL_S = 30.0  # a control-plane call, including any worker start it waits for
WARM_S = 60.0  # a pool reaching its pre-warm count
GONE_S = 30.0  # a killed worker's process disappearing
SPEC_PROCESS_S = 60.0  # a Python that imports an app file and pickles a handler spec
FAST_ANSWER_S = 10.0  # an offer no node can serve is answered this fast, not in LEASE_TIMEOUT_S
REPO = Path(__file__).resolve().parents[2]
LINK_GEOMETRY = Geometry(
    video_slots=2, video_slot_bytes=SLOT_HEADER_BYTES + 64, audio_slots=2, audio_slot_bytes=SLOT_HEADER_BYTES + 64
)


def passthrough(frame: np.ndarray) -> np.ndarray:
    return frame


def invert(frame: np.ndarray) -> np.ndarray:
    return 255 - frame


def spec(name: str, limit: int | None = 2, prewarm: int = 1, time_limit: float | None = None, handler: Any = passthrough) -> EventSpec:
    return EventSpec(
        event_id=f"t-sched-{name}-{uuid.uuid4().hex[:8]}",
        handler=make_spec(handler, 0),
        concurrency_limit=limit,
        time_limit=time_limit,
        pool=PoolSpec(prewarm=prewarm),
    )


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


class Sched:
    """A scheduler actor with blocking helpers."""

    def __init__(self, ray: Any, **options: Any) -> None:
        self.ray = ray
        self.actor = SchedulerActor.options(max_concurrency=1000).remote(**options)
        self.gateway = f"gw-{uuid.uuid4().hex[:6]}"

    def call(self, method: str, *args: Any, timeout: float = CALL_S, **kw: Any) -> Any:
        return self.ray.get(getattr(self.actor, method).remote(*args, **kw), timeout=timeout)

    def register(self, s: EventSpec, warm: bool = True, gateway: str | None = None) -> RegisterAnswer:
        answer = self.call("register", s, gateway)
        assert answer == RegisterAnswer(s.event_id, s.concurrency_limit, s.time_limit, pending=False, warning="")
        if warm:
            want = min(s.pool.prewarm, s.concurrency_limit or s.pool.max_workers)
            assert self.call("wait_warm", s.event_id, WARM_S, timeout=WARM_S + 10) == want
        return answer

    def beat(self, gateway: str, lease_ids: list[str], events: list[str] | None = None) -> list[str]:
        """A heartbeat; the leases the scheduler no longer knows."""
        answer = self.call("heartbeat", gateway, lease_ids, events)
        return list(answer.gone)

    def acquire(self, event_id: str, gateway: str | None = None, session: str | None = None) -> Any:  # LeaseGrant | LeaseDenied
        return self.call("acquire", event_id, gateway or self.gateway, session or uuid.uuid4().hex)

    def event(self, event_id: str) -> EventStatus:
        return self.call("status").events[event_id]

    def pids(self, event_id: str) -> set[int]:
        return {w.pid for w in self.event(event_id).workers}


def _close(s: Sched) -> None:
    try:
        s.call("shutdown")
    finally:
        s.ray.kill(s.actor, no_restart=True)


@pytest.fixture
def make_sched(ray_session: Any) -> Iterator[Callable[..., Sched]]:
    made: list[Sched] = []

    def factory(**options: Any) -> Sched:
        s = Sched(ray_session, **options)
        made.append(s)
        return s

    yield factory
    for s in made:
        _close(s)


@pytest.fixture(scope="module")
def shared(ray_session: Any) -> Iterator[Sched]:
    # a TTL far beyond any test: only the expiry test lets a gateway go silent
    s = Sched(ray_session, gateway_ttl_s=3600.0)
    yield s
    _close(s)


@pytest.fixture
def sched(shared: Sched) -> Iterator[Sched]:
    yield shared
    # whatever a test left leased is its bug, not the next test's: report it, then clear it
    status = shared.call("status")
    for gateway in status.gateways:
        shared.call("forget_gateway", gateway)
    assert status.leases == 0, "a test left a lease behind"


# --- limits and leases ------------------------------------------------------------------------


def test_concurrency_limit_enforced_and_release_frees_the_slot(sched):
    s = spec("limit", limit=2, prewarm=1)
    sched.register(s)
    first = sched.acquire(s.event_id)
    second = sched.acquire(s.event_id)
    for lease in (first, second):
        assert lease.ok is True
        assert lease.endpoint.startswith("\0rtcpool-")
        assert isinstance(lease.pid, int) and lease.pid != os.getpid()
        assert lease.time_limit is None
        assert lease.node_id
    assert first.pid != second.pid, "one session per worker"
    assert first.lease_id != second.lease_id
    # the lease names a live worker actor
    info = sched.ray.get(first.worker.ready.remote(), timeout=CALL_S)
    assert (info.pid, info.endpoint) == (first.pid, first.endpoint)

    third = sched.acquire(s.event_id)
    assert (third.ok, third.error, third.limit, third.retry_after) == (False, "concurrency_limit_reached", 2, C.RETRY_AFTER_S)

    assert sched.call("release", first.lease_id) is True
    assert sched.call("release", first.lease_id) is False, "a lease is released once"
    again = sched.acquire(s.event_id)
    assert again.ok is True
    assert again.pid in {first.pid, second.pid}, "a healthy worker is reused"
    ev = sched.event(s.event_id)
    assert (ev.leases, ev.active, ev.started_total, ev.replaced_total) == (2, 2, 2, 0)
    for lease in (second, again):
        assert sched.call("release", lease.lease_id) is True
    ev = sched.event(s.event_id)
    assert (ev.leases, ev.active, ev.idle) == (0, 0, 2)


def test_release_of_a_bad_worker_kills_it_and_the_pool_refills(sched):
    s = spec("replace", limit=1, prewarm=1)
    sched.register(s)
    lease = sched.acquire(s.event_id)
    assert lease.ok
    assert sched.event(s.event_id).idle == 0
    assert sched.call("release", lease.lease_id, worker_ok=False) is True
    with pytest.raises(sched.ray.exceptions.RayActorError):
        sched.ray.get(lease.worker.ready.remote(), timeout=CALL_S)
    assert wait_until(lambda: not alive(lease.pid), GONE_S)
    assert sched.call("wait_warm", s.event_id, WARM_S, timeout=WARM_S + 10) == 1
    ev = sched.event(s.event_id)
    assert ev.replaced_total == 1
    assert ev.started_total == 2
    assert (ev.idle, ev.active, ev.leases) == (1, 0, 0)
    assert lease.pid not in {w.pid for w in ev.workers}


async def test_concurrent_acquires_never_exceed_the_limit(sched):
    s = spec("gather", limit=2, prewarm=1)
    sched.register(s)
    for round_ in range(2):
        refs = [sched.actor.acquire.remote(s.event_id, sched.gateway, f"r{round_}-{i}") for i in range(12)]
        results = await asyncio.wait_for(asyncio.gather(*refs), CALL_S * 2)
        granted = [r for r in results if r.ok]
        refused = [r for r in results if not r.ok]
        assert len(granted) == 2
        assert all(r.error == "concurrency_limit_reached" and r.limit == 2 for r in refused)
        assert len({r.pid for r in granted}) == 2, "no worker is handed out twice"
        ev = await sched.actor.status.remote()
        ev = ev.events[s.event_id]
        assert ev.leases == ev.active == 2
        assert len(ev.workers) <= 2
        await asyncio.gather(*(sched.actor.release.remote(r.lease_id) for r in granted))
    ev = sched.event(s.event_id)
    assert ev.started_total == 2, "never more workers than the limit"
    assert ev.leases == 0


def test_no_limit_uses_the_pool_maximum(sched):
    s = spec("nolimit", limit=None, prewarm=1)
    s.pool.max_workers = 1
    sched.register(s)
    a = sched.acquire(s.event_id)
    assert a.ok
    ev = sched.event(s.event_id)
    assert ev.limit is None and ev.leases == 1
    assert ev.started_total == 1, "the pool maximum, not the (absent) limit, bounds the pool"
    sched.call("release", a.lease_id)


def test_unknown_event_and_unknown_lease(sched):
    refused = sched.acquire("t-sched-no-such-event")
    assert (refused.ok, refused.error, refused.message) == (False, "unknown_stream", "no stream event 't-sched-no-such-event'")
    assert sched.call("release", "no-such-lease") is False
    assert sched.call("unregister", "t-sched-no-such-event") is False


# --- gateways ------------------------------------------------------------------------------------


def test_a_silent_gateway_loses_its_leases_after_the_ttl(make_sched):
    ttl = 4.0  # the live gateway beats every ~0.2 s: a TTL 20x that survives a busy box
    sched = make_sched(gateway_ttl_s=ttl, monitor_interval_s=0.2)
    # both workers warm first: a lease waiting on a cold start longer than the TTL would
    # expire with its silent-so-far gateway (CI-found on a loaded box)
    s = spec("ttl", limit=2, prewarm=2)
    sched.register(s)
    silent = sched.acquire(s.event_id, gateway="gw-silent")
    live = sched.acquire(s.event_id, gateway="gw-live")
    assert silent.ok and live.ok

    def silent_lease_gone() -> bool:
        # the live gateway keeps beating while we wait; it must never lose its own lease
        assert sched.beat("gw-live", [live.lease_id]) == []
        return sched.event(s.event_id).leases == 1

    assert wait_until(silent_lease_gone, ttl * 10, interval=0.2)
    status = sched.call("status")
    assert "gw-silent" not in status.gateways and "gw-live" in status.gateways
    # the worker of a vanished gateway is in an unknown state: replaced, not reused
    assert status.events[s.event_id].replaced_total == 1
    assert wait_until(lambda: not alive(silent.pid), GONE_S)
    # when the silent gateway comes back, it learns which of its leases are gone
    assert sched.beat("gw-silent", [silent.lease_id]) == [silent.lease_id]
    assert sched.call("release", silent.lease_id) is False
    assert sched.call("release", live.lease_id) is True


def test_forget_gateway_returns_only_that_gateways_leases(sched):
    s = spec("forget", limit=2, prewarm=1)
    sched.register(s)
    x = sched.acquire(s.event_id, gateway="gw-x")
    y = sched.acquire(s.event_id, gateway="gw-y")
    assert x.ok and y.ok
    assert sched.call("forget_gateway", "gw-x") == 1
    assert sched.beat("gw-x", [x.lease_id, "never-granted"]) == [x.lease_id, "never-granted"]
    assert sched.beat("gw-y", [y.lease_id]) == []
    ev = sched.event(s.event_id)
    assert (ev.leases, ev.replaced_total) == (1, 1)
    assert sched.call("forget_gateway", "gw-x") == 0
    assert sched.call("release", y.lease_id) is True


def test_lease_outliving_its_time_limit_is_reclaimed(make_sched):
    sched = make_sched(gateway_ttl_s=3600.0, monitor_interval_s=0.2, time_limit_grace_s=0.3)
    s = spec("timelimit", limit=2, prewarm=1, time_limit=0.5)
    sched.register(s)
    streaming = sched.acquire(s.event_id)
    idle = sched.acquire(s.event_id)
    assert streaming.time_limit == 0.5
    sched.call("mark_streaming", streaming.lease_id)

    def reclaimed() -> bool:
        return sched.beat(sched.gateway, [streaming.lease_id]) == [streaming.lease_id]

    assert wait_until(reclaimed, 30, interval=0.2)
    # the clock starts when media flows: a lease never marked streaming stays
    assert sched.beat(sched.gateway, [idle.lease_id]) == []
    assert sched.event(s.event_id).replaced_total == 1
    assert sched.call("release", idle.lease_id) is True


# --- registration and pools ---------------------------------------------------------------------


def test_unregister_kills_idle_workers_but_not_while_leased(sched):
    s = spec("unregister", limit=1, prewarm=1)
    sched.register(s)
    pids = sched.pids(s.event_id)
    assert len(pids) == 1
    lease = sched.acquire(s.event_id)
    assert sched.call("unregister", s.event_id) is False, "a session holds a slot"
    assert sched.pids(s.event_id) == pids
    sched.call("release", lease.lease_id)
    assert sched.call("unregister", s.event_id) is True
    assert s.event_id not in sched.call("status").events
    for pid in pids:
        assert wait_until(lambda pid=pid: not alive(pid), GONE_S), f"worker {pid} still runs"
    assert sched.acquire(s.event_id).error == "unknown_stream"


def test_a_handler_that_fails_to_load_answers_no_worker(sched):
    app = f"/nonexistent/rtcpool-app-{uuid.uuid4().hex[:6]}.py"
    s = EventSpec(
        event_id=f"t-sched-broken-{uuid.uuid4().hex[:8]}",
        handler=HandlerSpec(blob=None, app_path=app, name="ghost"),
        concurrency_limit=2,
        pool=PoolSpec(prewarm=1),
    )
    sched.register(s, warm=False)
    # well inside LEASE_TIMEOUT_S: the failure is reported, not waited out
    timeout = C.LEASE_TIMEOUT_S * 0.75
    for _ in range(2):
        result = sched.call("acquire", s.event_id, sched.gateway, "sess", timeout=timeout)
        assert result.ok is False
        assert result.error == "no_worker"
        assert app in result.message and "not on this host" in result.message, result.message
    ev = sched.event(s.event_id)
    assert ev.leases == 0, "a refused offer holds no slot"
    assert app in ev.last_error
    assert ev.workers == () and ev.idle == 0
    assert sched.call("wait_warm", s.event_id, 1.0) == 0, "wait_warm gives up at its timeout"


def test_a_handler_that_cannot_unpickle_answers_no_worker(sched):
    s = EventSpec(
        event_id=f"t-sched-unpickle-{uuid.uuid4().hex[:8]}",
        handler=HandlerSpec(blob=b"not a pickle", app_path=None, name="garbled"),
        concurrency_limit=1,
        pool=PoolSpec(prewarm=1),
    )
    sched.register(s, warm=False)
    result = sched.call("acquire", s.event_id, sched.gateway, "sess", timeout=C.LEASE_TIMEOUT_S * 0.75)
    assert result.error == "no_worker"
    assert "cannot unpickle handler garbled" in result.message, result.message


def test_reregistering_an_event(sched):
    a = spec("rereg", limit=1, prewarm=1)
    sched.register(a)
    (pid_a,) = sched.pids(a.event_id)
    # the same spec again (a second gateway): the pool is shared, nothing restarts
    sched.register(a)
    ev = sched.event(a.event_id)
    assert ev.started_total == 1 and sched.pids(a.event_id) == {pid_a}
    # another spec under the same id, no sessions: the pool starts afresh
    b = EventSpec(a.event_id, make_spec(invert, 0), concurrency_limit=1, time_limit=30.0, pool=PoolSpec(prewarm=1))
    sched.register(b)
    ev = sched.event(a.event_id)
    assert ev.started_total == 1 and ev.idle == 1, "a new pool, counting from zero"
    assert pid_a not in sched.pids(a.event_id)
    assert wait_until(lambda: not alive(pid_a), GONE_S)
    # while a session holds a slot, a changed spec does not pull the pool away: the answer
    # gives the limit in force and says the change waits
    lease = sched.acquire(a.event_id)
    assert lease.time_limit == 30.0, "the new spec is the one in force"
    (pid_b,) = sched.pids(a.event_id)
    c = EventSpec(a.event_id, make_spec(passthrough, 0), concurrency_limit=5, pool=PoolSpec(prewarm=1))
    answer = sched.call("register", c)
    assert (answer.limit, answer.time_limit, answer.pending) == (1, 30.0, True)
    assert "concurrency_limit 1 -> 5" in answer.warning and "1 session(s)" in answer.warning
    ev = sched.event(a.event_id)
    assert ev.limit == 1 and ev.leases == 1
    # ... and takes effect when that session ends: a new pool, with the new limit
    sched.call("release", lease.lease_id)
    assert wait_until(lambda: sched.event(a.event_id).limit == 5, CALL_S)
    assert sched.call("wait_warm", a.event_id, WARM_S, timeout=WARM_S + 10) == 1
    assert pid_b not in sched.pids(a.event_id), "no worker of the old spec is reused"
    assert sched.call("register", c).pending is False


def test_status_numbers(make_sched):
    sched = make_sched(gateway_ttl_s=3600.0)
    s = spec("status", limit=2, prewarm=1)
    sched.register(s)
    status = sched.call("status")
    assert status.leases == 0 and status.gateways == ()
    ev = status.events[s.event_id]
    assert {k: getattr(ev, k) for k in ("limit", "active", "leases", "idle", "starting", "started_total", "replaced_total", "last_error")} == {
        "limit": 2,
        "active": 0,
        "leases": 0,
        "idle": 1,
        "starting": 0,
        "started_total": 1,
        "replaced_total": 0,
        "last_error": "",
    }
    assert len(ev.workers) == 1
    for w in ev.workers:
        assert w.endpoint and w.node_id and w.host and not w.busy
        assert alive(w.pid)
    lease = sched.acquire(s.event_id, gateway="gw-status")
    # taking one idle worker tops the pool back up to its pre-warm count
    assert sched.call("wait_warm", s.event_id, WARM_S, timeout=WARM_S + 10) == 1
    status = sched.call("status")
    ev = status.events[s.event_id]
    assert (ev.active, ev.leases, ev.idle, ev.started_total, len(ev.workers)) == (1, 1, 1, 2, 2)
    assert status.leases == 1 and status.gateways == ("gw-status",)
    sched.call("release", lease.lease_id)
    ev = sched.event(s.event_id)
    assert (ev.active, ev.leases, ev.idle) == (0, 0, 2)


def test_shutdown_kills_every_worker(make_sched):
    sched = make_sched(gateway_ttl_s=3600.0)
    s = spec("shutdown", limit=2, prewarm=1)
    sched.register(s)
    lease = sched.acquire(s.event_id)  # busy; the pool tops up another, idle
    assert sched.call("wait_warm", s.event_id, WARM_S, timeout=WARM_S + 10) == 1
    pids = sched.pids(s.event_id)
    assert lease.pid in pids and len(pids) == 2
    sched.call("shutdown")
    assert sched.call("status").to_json() == {
        "events": {}, "leases": 0, "tickets": 0, "autoscale_request": [], "autoscale_calls": 0,
        "sessions": [], "gateways": [sched.gateway], "media": [],
    }  # fmt: skip
    for pid in pids:
        assert wait_until(lambda pid=pid: not alive(pid), GONE_S)


def test_wait_warm_is_bounded_by_the_limit(sched):
    s = spec("warm", limit=1, prewarm=3)
    sched.register(s)  # waits for min(prewarm, limit) == 1
    time.sleep(0.5)
    ev = sched.event(s.event_id)
    assert ev.started_total == 1 and ev.idle == 1


# --- one identity per handler, whoever pickled it ----------------------------------------------

CLASS_APP = """
import numpy as np


class Inverter:
    def __call__(self, frame):
        return 255 - frame
"""

# imports the app file as a module of its own (so cloudpickle ships the class by value, with
# the per-process id it gives every such class) and prints the pickled spec
PICKLE_SPEC = """
import base64, importlib.util, pickle, sys
from workers.process.loader import make_spec
spec = importlib.util.spec_from_file_location("rtcpool_class_app", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["rtcpool_class_app"] = module
spec.loader.exec_module(module)
print("SPEC " + base64.b64encode(pickle.dumps(make_spec(module.Inverter(), 0))).decode())
"""


def spec_from_another_process(app: Path) -> HandlerSpec:
    result = subprocess.run(
        [sys.executable, "-c", PICKLE_SPEC, str(app)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SPEC_PROCESS_S,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    [line] = [ln for ln in result.stdout.splitlines() if ln.startswith("SPEC ")]
    return pickle.loads(base64.b64decode(line.removeprefix("SPEC ")))


def test_one_class_handler_pickled_by_two_gateways_is_one_pool(sched, tmp_path):
    app = tmp_path / f"class_app_{uuid.uuid4().hex[:6]}.py"
    app.write_text(CLASS_APP)
    first, second = spec_from_another_process(app), spec_from_another_process(app)
    assert first.blob != second.blob, "the premise: two processes pickle one class differently"
    event_id = f"t-sched-class-{uuid.uuid4().hex[:8]}"
    a = EventSpec(event_id, first, concurrency_limit=2, pool=PoolSpec(prewarm=1))
    b = EventSpec(event_id, second, concurrency_limit=2, pool=PoolSpec(prewarm=1))
    sched.register(a, gateway="gw-class-1")
    pids = sched.pids(event_id)
    # the second gateway's registration shares the pool: nothing torn down, nothing started
    sched.register(b, gateway="gw-class-2")
    ev = sched.event(event_id)
    assert (ev.started_total, ev.replaced_total) == (1, 0)
    assert sched.pids(event_id) == pids
    lease = sched.acquire(event_id, gateway="gw-class-2")
    assert lease.ok and lease.pid in pids, "the pool's worker loaded the class handler"
    sched.call("release", lease.lease_id)
    assert sched.call("unregister", event_id) is True


REIMPORT_APP = """
from workers.process import loader

VERSION = {version}


def handler(frame):
    return frame


if loader.in_worker_import():
    loader.register(handler)
"""


def test_an_app_file_that_changed_is_a_new_pool_even_when_reimported(sched, tmp_path):
    """A spec without a blob (the worker re-imports the file) must not keep workers of the
    file's old version."""
    app = tmp_path / f"reimport_app_{uuid.uuid4().hex[:6]}.py"
    event_id = f"t-sched-reimport-{uuid.uuid4().hex[:8]}"

    def reimport_spec(version: int) -> EventSpec:
        app.write_text(REIMPORT_APP.format(version=version))
        handler = HandlerSpec(blob=None, app_path=str(app), name="handler", source_sha256=source_hash(str(app)))
        return EventSpec(event_id, handler, concurrency_limit=1, pool=PoolSpec(prewarm=1))

    sched.register(reimport_spec(1), gateway="gw-v1")
    (old,) = sched.pids(event_id)
    sched.register(reimport_spec(1), gateway="gw-v1-again")
    assert sched.pids(event_id) == {old}, "the same file again shares the pool"
    sched.register(reimport_spec(2), gateway="gw-v2")
    assert old not in sched.pids(event_id)
    assert wait_until(lambda: not alive(old), GONE_S), "the old version's worker still runs"
    assert sched.call("unregister", event_id) is True


# --- pools without gateways --------------------------------------------------------------------


def test_a_pool_whose_gateways_are_gone_is_dropped_after_the_grace(make_sched):
    # the grace is long enough to see the pool outlive its last gateway (the monitor looks
    # every 0.2 s; a silent gateway is seen gone within ttl + 0.2 s)
    ttl, grace = 1.5, 4.0
    sched = make_sched(gateway_ttl_s=ttl, monitor_interval_s=0.2, orphan_pool_grace_s=grace)
    s = spec("orphan", limit=2, prewarm=1)
    sched.register(s, gateway="gw-a")
    sched.register(s, gateway="gw-b", warm=False)
    (pid,) = sched.pids(s.event_id)
    kept = spec("ownerless", limit=1, prewarm=0)  # registered by no gateway (a tool): kept
    sched.register(kept, warm=False)

    # gw-a leaves; gw-b keeps beating, well past TTL and grace: the pool stays
    assert sched.call("forget_gateway", "gw-a") == 0
    deadline = time.monotonic() + ttl + grace + 1.0
    while time.monotonic() < deadline:
        assert sched.beat("gw-b", [], [s.event_id]) == []
        assert sched.pids(s.event_id) == {pid}
        time.sleep(0.2)

    # gw-b goes silent: it expires, and the pool outlives it by the grace, then goes
    assert wait_until(lambda: "gw-b" not in sched.call("status").gateways, ttl * 10, interval=0.2)
    assert s.event_id in sched.call("status").events, "dropped before its grace period"
    assert wait_until(lambda: s.event_id not in sched.call("status").events, grace * 10, interval=0.2)
    assert wait_until(lambda: not alive(pid), GONE_S), "the orphaned pool's worker still runs"
    assert kept.event_id in sched.call("status").events
    # a gateway that comes back learns its event is gone (and registers it again)
    answer = sched.call("heartbeat", "gw-b", [], [s.event_id])
    assert answer == HeartbeatAnswer(gone=(), unknown_events=(s.event_id,))


# --- scale from zero ------------------------------------------------------------------------------


def pending_workers(ray: Any) -> set[str]:
    """Worker actors Ray has not placed yet (its pending demand, which an autoscaler reads)."""
    from ray._private import state

    return {
        aid
        for aid, a in state.actors().items()
        if a.get("ActorClassName") == "Worker" and a.get("State") == "PENDING_CREATION"
    }


def test_an_unplaceable_pool_keeps_one_worker_requested_and_answers_at_once(make_sched, ray_session):
    start_timeout = 1.0  # a placeable worker this late is killed; an unplaceable one is kept
    sched = make_sched(gateway_ttl_s=3600.0, monitor_interval_s=0.2, worker_start_timeout_s=start_timeout)
    s = spec("zero", limit=2, prewarm=0)  # a GPU pool scaled to zero: nothing pre-warmed
    s.pool.resources = {"rtcpool_test_absent_node": 1}
    before = pending_workers(ray_session)
    sched.register(s, warm=False)
    assert sched.event(s.event_id).started_total == 0

    for _ in range(2):
        started = time.monotonic()
        refused = sched.acquire(s.event_id)
        assert time.monotonic() - started < FAST_ANSWER_S
        assert refused.ok is False and refused.error == "no_node_fits"
        assert "rtcpool_test_absent_node" in refused.message
    # one worker is requested, not one per offer, and Ray holds it as pending demand
    ev = sched.event(s.event_id)
    assert (ev.starting, ev.started_total, ev.leases) == (1, 1, 0)
    assert wait_until(lambda: len(pending_workers(ray_session) - before) == 1, CALL_S)
    # the start timeout does not end a request no node can take yet
    time.sleep(start_timeout * 4)
    ev = sched.event(s.event_id)
    assert (ev.starting, ev.started_total) == (1, 1)
    assert "failed to start" not in ev.last_error and ev.unplaceable
    assert len(pending_workers(ray_session) - before) == 1
    # the pool going away takes its pending request along
    assert sched.call("unregister", s.event_id) is True
    assert wait_until(lambda: not (pending_workers(ray_session) - before), CALL_S)


# --- lease tokens ---------------------------------------------------------------------------------


def open_link(lease: Any, token: str | None = None) -> Any:
    hello = Hello(uuid.uuid4().hex, "", "", "send-receive", "video", token=lease.token if token is None else token)
    ch, _ready = connect_worker(lease.endpoint, hello, C.WORKER_CONNECT_TIMEOUT_S, LINK_GEOMETRY)
    return ch


def test_a_lease_token_opens_exactly_one_session(sched):
    s = spec("token", limit=1, prewarm=1)
    sched.register(s)
    first = sched.acquire(s.event_id)
    assert len(first.token) == 32
    assert all("token" not in w.to_json() for w in sched.event(s.event_id).workers), "status shows no token"
    ch = open_link(first)
    ch.close("done")
    # the same token again, on the same lease: refused, though the worker is idle again
    with pytest.raises((ConnectionError, TimeoutError, OSError)):
        open_link(first)
    sched.call("release", first.lease_id)
    second = sched.acquire(s.event_id)
    assert second.pid == first.pid and second.token != first.token
    with pytest.raises((ConnectionError, TimeoutError, OSError)):
        open_link(second, token=first.token)  # a token of an earlier lease opens nothing
    open_link(second).close("done")
    sched.call("release", second.lease_id)


# --- namespaces and status ------------------------------------------------------------------------


def test_each_namespace_has_a_scheduler_of_its_own(ray_session):
    made = []
    try:
        for ns in ("rtcpool-test-ns-a", "rtcpool-test-ns-b"):
            actor = get_scheduler(namespace=ns)
            made.append(actor)
            ray_session.get(actor.status.remote(), timeout=CALL_S)
        a, b = (ray_session.get_actor(C.SCHEDULER_NAME, namespace=ns) for ns in ("rtcpool-test-ns-a", "rtcpool-test-ns-b"))
        assert a._actor_id != b._actor_id
        assert get_scheduler(namespace="rtcpool-test-ns-a")._actor_id == a._actor_id, "found again, not made twice"
    finally:
        for actor in made:
            ray_session.kill(actor, no_restart=True)


def test_status_lists_every_session(make_sched, ray_session):
    sched = make_sched(gateway_ttl_s=3600.0)
    s = spec("sessions", limit=2, prewarm=1)
    sched.register(s, gateway="gw-list")
    lease = sched.acquire(s.event_id, gateway="gw-list")
    sched.call("heartbeat", "gw-list", [lease.lease_id], [s.event_id], {lease.lease_id: "tcp"})
    sched.call("mark_streaming", lease.lease_id)
    status = sched.call("status")
    [row] = status.sessions
    assert row.lease == lease.lease_id[:SHORT_LEASE_ID]
    assert (row.event_id, row.gateway_id, row.pid, row.node_id, row.transport) == (
        s.event_id, "gw-list", lease.pid, lease.node_id, "tcp",
    )  # fmt: skip
    assert row.age_s >= 0 and row.streaming_s is not None
    view = collect_status(status, ray_session.nodes())
    assert view["sessions"] == status.to_json()["sessions"]
    text = format_status(view)
    assert f"{row.lease} {s.event_id} via gw-list: pid {lease.pid} on node {lease.node_id[:12]}, tcp" in text
    sched.call("release", lease.lease_id)
    assert sched.call("status").sessions == ()


def test_sessions_per_client_address_are_counted_over_every_gateway(sched):
    # the engines of two media processes (or two gateways, or a WebSocket and a WebRTC
    # session) each see one session of the address: the scheduler sees both
    s = spec("per-client", limit=4, prewarm=1)
    sched.register(s)
    first = sched.call("acquire", s.event_id, "engine-a", uuid.uuid4().hex, client="203.0.113.5", max_per_client=2)
    second = sched.call("acquire", s.event_id, "engine-b", uuid.uuid4().hex, client="203.0.113.5", max_per_client=2)
    assert first.ok and second.ok
    third = sched.call("acquire", s.event_id, "engine-c", uuid.uuid4().hex, client="203.0.113.5", max_per_client=2)
    assert (third.ok, third.error, third.limit, third.retry_after) == (False, "too_many_sessions", 2, SESSIONS_RETRY_AFTER_S)
    other = sched.call("acquire", s.event_id, "engine-c", uuid.uuid4().hex, client="203.0.113.6", max_per_client=2)
    assert other.ok, "another address is not affected"
    exempt = sched.call("acquire", s.event_id, "engine-c", uuid.uuid4().hex, client="", max_per_client=2)
    assert exempt.ok, "an exempt client (loopback in the local config) is not counted"
    assert sched.call("release", first.lease_id) is True
    again = sched.call("acquire", s.event_id, "engine-c", uuid.uuid4().hex, client="203.0.113.5", max_per_client=2)
    assert again.ok, "a released session's place comes back"
    for lease in (second, other, exempt, again):
        sched.call("release", lease.lease_id)
