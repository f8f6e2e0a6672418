"""The waiting room inside the scheduler, against a real local Ray: one FIFO per stream event
across gateways, admission on every way a slot frees, leaving, expiry, bounds, the ETA.

Each test has a scheduler actor of its own (short TTLs where it needs them) and one-worker
pools; a lease is taken and given back with the scheduler's own calls, as an engine does.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from runtime import constants as C
from runtime.control import waiting_room as wr
from runtime.control.leases import LeaseDenied, LeaseGrant, LeaseQueued
from runtime.control.pools import EventSpec, PoolSpec
from tests.conftest import wait_until
from tests.control.test_scheduler import CALL_S, WARM_S, Sched, _close
from workers.process.loader import make_spec

pytestmark = pytest.mark.timeout(120)

EXPIRY_S = 20.0  # a monitor pass (1 s) after a short hold, TTL or timeout, on a busy box
LONG_TTL_S = 3600.0  # tickets that must not vanish while a test looks at them
FOLLOW_S = 0.5  # how often the test's stand-in front names its tickets (a real one: always)


def identity(frame: np.ndarray) -> np.ndarray:
    return frame


def line_spec(limit: int | None = 1, **kw: Any) -> EventSpec:
    pool = kw.pop("pool", PoolSpec(prewarm=1))
    return EventSpec(
        event_id=f"t-queue-{uuid.uuid4().hex[:8]}", handler=make_spec(identity, 0), concurrency_limit=limit, pool=pool, **kw
    )


class Line(Sched):
    """A scheduler with a front's habit: every ticket it was given is followed (named in a
    queue_wait every FOLLOW_S) until it leaves, unless offered with ``follow=False``."""

    def __init__(self, ray: Any, **options: Any) -> None:
        super().__init__(ray, **options)
        self.followed: dict[str, str] = {}  # secret -> session id
        self._stop = threading.Event()
        self._front = threading.Thread(target=self._follow, daemon=True)
        self._front.start()

    def _follow(self) -> None:
        while not self._stop.wait(FOLLOW_S):
            pairs = [[t, sid] for t, sid in list(self.followed.items())]
            if pairs:
                with contextlib.suppress(Exception):
                    self.call("queue_wait", pairs, -1, 0.0)

    def stop_following(self) -> None:
        self._stop.set()
        self._front.join(CALL_S)

    def register_line(self, s: EventSpec, gateway: str = "gw-a") -> None:
        self.call("register", s, gateway)
        want = min(s.pool.prewarm, s.concurrency_limit or s.pool.max_workers)
        assert self.call("wait_warm", s.event_id, WARM_S, timeout=WARM_S + 10) == want

    def offer(
        self, s: EventSpec, gateway: str, session: str, *, ticket: str | None = None, queue: bool = True, client: str = "", follow: bool = True
    ) -> Any:
        answer = self.call("acquire", s.event_id, gateway, session, "", ticket=ticket, queue=queue, client=client)
        if isinstance(answer, LeaseQueued) and follow:
            self.followed[answer.ticket] = session
        return answer

    def views(self, tickets: dict[str, str]) -> dict[str, dict[str, Any]]:
        """Each ticket's view now, by session id (tickets: session id -> secret)."""
        _, views = self.call("queue_wait", [[t, sid] for sid, t in tickets.items()], -1, 0.0)
        return {sid: views[t].to_json() for sid, t in tickets.items()}  # as the updates route sends them

    def queue_len(self, s: EventSpec) -> int:
        return self.event(s.event_id).queue


@pytest.fixture
def make_line(ray_session: Any) -> Iterator[Callable[..., Line]]:
    made: list[Line] = []

    def factory(**options: Any) -> Line:
        options.setdefault("ticket_ttl_s", LONG_TTL_S)
        options.setdefault("gateway_ttl_s", LONG_TTL_S)
        s = Line(ray_session, **options)
        made.append(s)
        return s

    yield factory
    for s in made:
        s.stop_following()
        status = s.call("status")
        _close(s)
        assert status.leases == 0 and status.tickets == 0, f"a test left leases or tickets: {status.leases}, {status.tickets}"


def test_one_fifo_across_two_gateways_and_nobody_jumps_it(make_line):
    q = make_line()
    s = line_spec(limit=1, time_limit=30.0)
    q.register_line(s)
    first = q.offer(s, "gw-a", "alice")
    assert isinstance(first, LeaseGrant)
    bob = q.offer(s, "gw-b", "bob")  # through another gateway
    carol = q.offer(s, "gw-a", "carol")
    assert isinstance(bob, LeaseQueued) and isinstance(carol, LeaseQueued)
    assert (bob.position, bob.size, carol.position, carol.size) == (1, 1, 2, 2)
    assert bob.ticket != carol.ticket
    # the ETA: alice's 30 s time limit (she has not started streaming), then bob's
    assert (bob.eta_s, carol.eta_s) == (30.0, 60.0)
    # a client that takes no place in line is refused with the line's length, not let in
    dave = q.offer(s, "gw-b", "dave", queue=False)
    assert isinstance(dave, LeaseDenied)
    assert (dave.error, dave.limit, dave.queue_size, dave.retry_after) == ("concurrency_limit_reached", 1, 2, C.RETRY_AFTER_S)
    # the same offer again while waiting: the same place, no second ticket
    again = q.offer(s, "gw-a", "bob", ticket=bob.ticket)
    assert isinstance(again, LeaseQueued) and (again.position, again.size) == (1, 2)
    assert q.queue_len(s) == 2

    assert q.call("release", first.lease_id) is True
    tickets = {"bob": bob.ticket, "carol": carol.ticket}
    views = q.views(tickets)
    assert views["bob"] == {"state": "admitted", "hold_s": C.QUEUE_ADMIT_HOLD_S, "turn": 1}
    assert views["carol"]["state"] == "waiting" and views["carol"]["position"] == 1 and views["carol"]["size"] == 1
    # a newcomer while bob's slot is held: behind carol, not in bob's slot
    erin = q.offer(s, "gw-b", "erin")
    assert isinstance(erin, LeaseQueued) and erin.position == 2
    # bob's offer comes back (through the other gateway) with his ticket: his held slot
    bobs = q.offer(s, "gw-a", "bob", ticket=bob.ticket)
    assert isinstance(bobs, LeaseGrant)
    # the ticket was used up
    reused = q.offer(s, "gw-a", "bob2", ticket=bob.ticket)
    assert isinstance(reused, LeaseDenied) and reused.error == "queue_ticket_gone"
    assert q.call("release", bobs.lease_id) is True
    carols = q.offer(s, "gw-b", "carol", ticket=carol.ticket)
    assert isinstance(carols, LeaseGrant), carols
    assert q.views({"erin": erin.ticket})["erin"]["position"] == 1
    assert q.call("leave", erin.ticket, "erin") is True
    assert q.call("release", carols.lease_id) is True


def test_a_ticket_is_bound_to_its_session(make_line):
    q = make_line()
    s = line_spec(limit=1)
    q.register_line(s)
    first = q.offer(s, "gw-a", "alice")
    bob = q.offer(s, "gw-a", "bob")
    assert isinstance(bob, LeaseQueued)
    # someone who saw the ticket but posts it for another id gets nothing, and learns nothing
    stolen = q.offer(s, "gw-a", "mallory", ticket=bob.ticket)
    assert isinstance(stolen, LeaseDenied) and stolen.error == "queue_ticket_gone"
    assert q.views({"mallory": bob.ticket})["mallory"] == {"state": "gone", "reason": "unknown_ticket", "message": "no such queue ticket (or it left long ago)"}
    assert q.call("leave", bob.ticket, "mallory") is False
    assert q.views({"bob": bob.ticket})["bob"]["state"] == "waiting", "the wrong id changed nothing"
    # a webrtc_id is one session: waiting under it twice is a duplicate
    dup = q.offer(s, "gw-b", "bob")
    assert isinstance(dup, LeaseDenied) and dup.error == "duplicate_webrtc_id"
    assert q.call("leave", bob.ticket, "bob") is True
    assert q.call("release", first.lease_id) is True


def test_leaving_moves_the_line_up_and_a_held_slot_goes_to_the_next(make_line):
    q = make_line()
    s = line_spec(limit=1)
    q.register_line(s)
    first = q.offer(s, "gw-a", "a")
    b, c, d = (q.offer(s, "gw-a", name) for name in "bcd")
    assert q.call("leave", c.ticket, "c") is True
    assert q.call("leave", c.ticket, "c") is False, "a ticket leaves once"
    views = q.views({"b": b.ticket, "c": c.ticket, "d": d.ticket})
    assert (views["b"]["position"], views["d"]["position"], views["d"]["size"]) == (1, 2, 2)
    assert (views["c"]["state"], views["c"]["reason"]) == ("gone", "left")
    assert q.call("release", first.lease_id)
    assert q.views({"b": b.ticket})["b"]["state"] == "admitted"
    # b gives up its turn: the held slot goes to d at once
    assert q.call("leave", b.ticket, "b") is True
    assert q.views({"d": d.ticket})["d"]["state"] == "admitted"
    lease = q.offer(s, "gw-a", "d", ticket=d.ticket)
    assert isinstance(lease, LeaseGrant)
    assert q.call("release", lease.lease_id)


def test_the_slot_goes_to_the_head_of_the_line_on_every_way_a_session_ends(make_line):
    q = make_line(monitor_interval_s=0.5, gateway_ttl_s=3.0, time_limit_grace_s=0.5)
    s = line_spec(limit=1, time_limit=2.0)
    q.register_line(s)
    names = ["released", "worker-died", "gateway-forgot", "gateway-silent", "time-limit", "last"]
    lease = q.offer(s, "gw-0", "first")
    tickets = {n: q.offer(s, f"gw-{i + 1}", n).ticket for i, n in enumerate(names)}

    def admitted(name: str) -> bool:
        return q.views({name: tickets[name]})[name]["state"] == "admitted"

    def take(name: str, gateway: str) -> LeaseGrant:
        assert wait_until(lambda: admitted(name), EXPIRY_S), f"{name} was not admitted: {q.views({name: tickets[name]})}"
        got = q.offer(s, gateway, name, ticket=tickets[name])
        assert isinstance(got, LeaseGrant), got
        return got

    # every gateway beats, as a live one does, but the one that goes silent (CI-found: a
    # gateway silent past the 3 s TTL while its offer waited for a worker lost that lease)
    silent: set[str] = set()
    stop = threading.Event()

    def beating() -> None:
        while not stop.wait(0.5):
            for i in range(len(names) + 1):
                if f"gw-{i}" not in silent:
                    with contextlib.suppress(Exception):
                        q.beat(f"gw-{i}", [])

    beater = threading.Thread(target=beating, daemon=True)
    beater.start()

    def beat_all(except_: str = "") -> None:
        silent.add(except_)

    q.call("release", lease.lease_id)  # a normal end
    lease = take("released", "gw-1")
    q.call("release", lease.lease_id, False)  # the worker died
    lease = take("worker-died", "gw-2")
    q.call("forget_gateway", "gw-2")  # its gateway shut down
    lease = take("gateway-forgot", "gw-3")
    deadline = time.monotonic() + EXPIRY_S  # its gateway goes silent past the TTL
    while not admitted("gateway-silent") and time.monotonic() < deadline:
        beat_all(except_="gw-3")
        time.sleep(0.5)
    lease = take("gateway-silent", "gw-4")
    q.call("mark_streaming", lease.lease_id)  # the time limit (2 s + grace) reclaims it
    deadline = time.monotonic() + EXPIRY_S
    while not admitted("time-limit") and time.monotonic() < deadline:
        beat_all(except_="gw-3")
        time.sleep(0.5)
    lease = take("time-limit", "gw-5")
    q.call("release", lease.lease_id)
    lease = take("last", "gw-6")
    q.call("release", lease.lease_id)
    stop.set()
    beater.join(CALL_S)


def test_an_admitted_ticket_whose_offer_does_not_come_back_loses_its_turn(make_line):
    q = make_line(monitor_interval_s=0.5)
    s = line_spec(limit=1, admit_hold_s=1.0)
    q.register_line(s)
    first = q.offer(s, "gw-a", "a")
    late, next_ = q.offer(s, "gw-a", "late"), q.offer(s, "gw-a", "next")
    q.call("release", first.lease_id)
    assert q.views({"late": late.ticket})["late"]["state"] == "admitted"
    assert wait_until(lambda: q.views({"next": next_.ticket})["next"]["state"] == "admitted", EXPIRY_S)
    view = q.views({"late": late.ticket})["late"]
    assert (view["state"], view["reason"]) == ("gone", "expired")
    refused = q.offer(s, "gw-a", "late", ticket=late.ticket)
    assert isinstance(refused, LeaseDenied) and refused.error == "queue_ticket_gone" and "1 s" in refused.message
    lease = q.offer(s, "gw-a", "next", ticket=next_.ticket)
    assert isinstance(lease, LeaseGrant)
    q.call("release", lease.lease_id)


def test_a_ticket_nobody_follows_vanishes_and_one_that_waits_too_long_is_told(make_line):
    q = make_line(monitor_interval_s=0.5, ticket_ttl_s=2.0)
    s = line_spec(limit=1, queue_timeout_s=4.0)
    q.register_line(s)
    first = q.offer(s, "gw-a", "a")
    followed, forgotten = q.offer(s, "gw-a", "followed"), q.offer(s, "gw-a", "forgotten", follow=False)

    def follow_until(size: int) -> bool:
        # a front follows one of the two: its queue_wait names it, which renews it;
        # the scheduler's status counts the line without renewing anything
        deadline = time.monotonic() + EXPIRY_S
        while time.monotonic() < deadline:
            q.views({"followed": followed.ticket})
            if q.queue_len(s) <= size:
                return True
            time.sleep(0.3)
        return False

    assert follow_until(1), "the unfollowed ticket did not vanish"
    views = q.views({"followed": followed.ticket, "forgotten": forgotten.ticket})
    assert views["followed"]["state"] == "waiting"
    assert (views["forgotten"]["state"], views["forgotten"]["reason"]) == ("gone", "vanished")
    assert follow_until(0), "the followed ticket outlived the queue timeout"
    view = q.views({"followed": followed.ticket})["followed"]
    assert view["reason"] == "queue_timeout" and "4 s" in view["message"], view
    q.call("release", first.lease_id)


def test_max_queue_and_the_per_address_bound(make_line):
    q = make_line()
    s = line_spec(limit=1, max_queue=C.QUEUE_MAX_PER_ADDRESS + 1)
    q.register_line(s)
    first = q.offer(s, "gw-a", "a")
    mine = [q.offer(s, "gw-a", f"m{i}", client="203.0.113.9") for i in range(C.QUEUE_MAX_PER_ADDRESS)]
    assert all(isinstance(t, LeaseQueued) for t in mine)
    one_more = q.offer(s, "gw-a", "m-extra", client="203.0.113.9")
    assert isinstance(one_more, LeaseDenied) and one_more.error == "too_many_queued"
    other = q.offer(s, "gw-a", "o1", client="198.51.100.4")
    assert isinstance(other, LeaseQueued)
    full = q.offer(s, "gw-a", "o2", client="198.51.100.5")
    assert isinstance(full, LeaseDenied)
    assert (full.error, full.queue_size, full.limit) == ("queue_full", C.QUEUE_MAX_PER_ADDRESS + 1, 1)
    for i, t in enumerate(mine):
        assert q.call("leave", t.ticket, f"m{i}")
    assert q.call("leave", other.ticket, "o1")
    q.call("release", first.lease_id)


def test_a_stream_that_does_not_queue_answers_429_and_no_limit_grows_the_pool_first(make_line):
    q = make_line()
    closed = line_spec(limit=1, queue=False)
    q.register_line(closed)
    first = q.offer(closed, "gw-a", "a")
    refused = q.offer(closed, "gw-a", "b")  # the client would queue; the stream does not
    assert isinstance(refused, LeaseDenied) and refused.error == "concurrency_limit_reached"
    q.call("release", first.lease_id)
    # concurrency_limit None: the pool grows to max_workers, then the line starts
    open_ = line_spec(limit=None, pool=PoolSpec(prewarm=1, max_workers=2))
    q.register_line(open_)
    leases = [q.offer(open_, "gw-a", f"u{i}") for i in range(2)]
    assert all(isinstance(lease, LeaseGrant) for lease in leases), leases
    waiting = q.offer(open_, "gw-a", "u2")
    assert isinstance(waiting, LeaseQueued) and waiting.position == 1
    q.call("release", leases[0].lease_id)
    lease = q.offer(open_, "gw-a", "u2", ticket=waiting.ticket)
    assert isinstance(lease, LeaseGrant)
    for g in (leases[1], lease):
        q.call("release", g.lease_id)


def test_queue_wait_returns_on_a_change_and_otherwise_after_its_timeout(make_line):
    q = make_line()
    s = line_spec(limit=1)
    q.register_line(s)
    first = q.offer(s, "gw-a", "a")
    b = q.offer(s, "gw-a", "b")
    version, _ = q.call("queue_wait", [[b.ticket, "b"]], -1, 0.0)
    t0 = time.monotonic()
    same, views = q.call("queue_wait", [[b.ticket, "b"]], version, 1.0)
    assert same == version and views[b.ticket].state == "waiting"
    assert time.monotonic() - t0 >= 0.9, "nothing changed: the poll waited its timeout"
    pending = q.actor.queue_wait.remote([[b.ticket, "b"]], version, 30.0)
    time.sleep(0.5)
    q.call("release", first.lease_id)  # a change: the poll returns at once
    t0 = time.monotonic()
    newer, views = q.ray.get(pending, timeout=CALL_S)
    assert newer > version and views[b.ticket].state == "admitted"
    assert time.monotonic() - t0 < 10.0
    lease = q.offer(s, "gw-a", "b", ticket=b.ticket)
    q.call("release", lease.lease_id)


def test_a_turn_passes_over_a_ticket_nobody_follows(make_line):
    # a client that floods offers and never follows its tickets delays no one
    q = make_line()
    s = line_spec(limit=1)
    q.register_line(s)
    first = q.offer(s, "gw-a", "a")
    ghost = q.offer(s, "gw-a", "ghost", follow=False)
    alive = q.offer(s, "gw-a", "alive")
    time.sleep(wr.FOLLOW_GRACE_S + 1.0)
    q.call("release", first.lease_id)
    assert wait_until(lambda: q.views({"alive": alive.ticket})["alive"]["state"] == "admitted", EXPIRY_S)
    assert q.event(s.event_id).queue == 1, "the ghost keeps its place until its TTL"
    lease = q.offer(s, "gw-a", "alive", ticket=alive.ticket)
    assert isinstance(lease, LeaseGrant)
    assert q.call("leave", ghost.ticket, "ghost") is True
    q.call("release", lease.lease_id)


def autoscaler_request(ray: Any) -> list[dict[str, float]]:
    """What Ray's GCS holds as the autoscaler's resource request (a local Ray has the v1
    autoscaler's record: the KV key request_resources writes)."""
    import json

    from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return json.loads(raw) if raw else []


def test_a_non_empty_line_asks_the_autoscaler_for_its_workers_and_an_empty_one_withdraws(make_line, ray_session):
    q = make_line(monitor_interval_s=0.5)
    s = line_spec(limit=2, pool=PoolSpec(prewarm=1, num_cpus=0.25, resources={"far_node": 0}))
    q.register_line(s)
    leases = [q.offer(s, "gw-a", f"u{i}") for i in range(2)]
    assert all(isinstance(lease, LeaseGrant) for lease in leases), leases
    assert q.call("status").autoscale_request == (), "nobody waits: nothing is asked for"
    waiting = q.offer(s, "gw-a", "w")
    assert isinstance(waiting, LeaseQueued)
    bundle = {"CPU": 0.25}  # what one worker of this pool holds (a zero resource is no demand)
    assert wait_until(lambda: q.call("status").autoscale_request == (bundle, bundle), EXPIRY_S)
    assert autoscaler_request(ray_session) == [bundle, bundle], "Ray's GCS holds the request"
    assert q.call("leave", waiting.ticket, "w") is True
    assert wait_until(lambda: q.call("status").autoscale_request == (), EXPIRY_S)
    assert autoscaler_request(ray_session) == [], "the request is withdrawn once the line is empty"
    for lease in leases:
        q.call("release", lease.lease_id)


def test_worker_bundles_carry_the_pools_resources():
    from runtime.control.autoscale import worker_bundle

    assert worker_bundle(PoolSpec()) == {"CPU": 1.0}
    assert worker_bundle(PoolSpec(num_cpus=2, num_gpus=0.5, memory=2**30, resources={"far_node": 1})) == {
        "CPU": 2.0, "GPU": 0.5, "memory": float(2**30), "far_node": 1.0
    }  # fmt: skip


def test_rtcpool_status_shows_who_waits():
    from runtime.cli import collect_status, format_status

    event = {
        "limit": 2, "active": 2, "leases": 2, "idle": 0, "starting": 0, "workers": [], "started_total": 2,
        "replaced_total": 0, "last_error": "", "unplaceable": "", "gateways": ["gw-a"], "queue": 3, "admitted": 1,
        "max_queue": 100, "expected_session_s": 30.0,
    }  # fmt: skip
    text = format_status(collect_status({"events": {"detect": event}, "leases": 2, "sessions": [], "gateways": ["gw-a"]}, []))
    assert "detect: 2/2 slots taken, 0 idle, 0 starting, replaced 0, 3 waiting (1 admitted)" in text
    quiet = format_status(collect_status({"events": {"detect": {**event, "queue": 0, "admitted": 0}}, "leases": 2, "sessions": [], "gateways": []}, []))
    assert "waiting" not in quiet
