"""runtime/control/waiting_room.py on its own: order, leaving, expiry, bounds and the ETA (no Ray)."""

from __future__ import annotations

import pytest

from runtime.control import waiting_room as wr
from runtime.control.waiting_room import QueueRefused, TicketState, WaitingRoom

T0 = 1000.0  # a monotonic clock reading to start from


def room(**kw) -> WaitingRoom:
    return WaitingRoom(**{"max_size": 10, "timeout_s": 60.0, "admit_hold_s": 5.0, "ticket_ttl_s": 15.0, **kw})


def join(r: WaitingRoom, n: int, client: str = "", now: float = T0) -> list[wr.Ticket]:
    return [r.join("ev", f"s{i}", client, now) for i in range(n)]


def test_tickets_are_admitted_first_in_first_out_and_positions_follow():
    r = room()
    a, b, c = join(r, 3)
    assert [r.position(t) for t in (a, b, c)] == [1, 2, 3]
    assert len({a.secret, b.secret, c.secret}) == 3 and all(len(t.secret) >= 32 for t in (a, b, c))
    assert r.admit(1, T0 + 1) == [a]
    assert a.state == TicketState.ADMITTED and a.admitted_at == T0 + 1
    assert [r.position(t) for t in (b, c)] == [1, 2]
    assert r.position(a) == 0, "an admitted ticket is out of the line"
    assert r.admit(5, T0 + 2) == [b, c]
    assert not r.waiting and set(r.admitted) == {a.secret, b.secret, c.secret}


def test_leaving_moves_the_rest_up_and_happens_once():
    r = room()
    a, b, c = join(r, 3)
    assert r.leave(b, wr.LEFT) is True
    assert (b.state, b.reason) == (TicketState.GONE, wr.LEFT)
    assert [r.position(t) for t in (a, c)] == [1, 2]
    assert r.leave(b, wr.LEFT) is False
    r.admit(1, T0)
    assert r.leave(a, wr.LEFT) is True and a.secret not in r.admitted, "an admitted ticket can leave too"


def test_a_turn_goes_only_to_a_followed_ticket_and_the_passed_over_one_keeps_its_place():
    r = room()
    ghost, alive, late = join(r, 3)
    now = T0 + wr.FOLLOW_GRACE_S + 1  # nobody looked since they joined
    alive.following = 1  # a front's long poll names it now
    assert r.admit(1, now) == [alive]
    assert r.position(ghost) == 1 and r.position(late) == 2, "passed over, not dropped"
    late.seen_at = now - 1  # looked at a moment ago (between two polls)
    assert r.admit(1, now) == [late]
    ghost.seen_at = now
    assert r.admit(1, now) == [ghost], "followed again: its turn"


def test_a_claimed_ticket_leaves_the_held_slots():
    r = room()
    (a,) = join(r, 1)
    r.admit(1, T0)
    r.claim(a)
    assert not r.admitted and (a.state, a.reason) == (TicketState.GONE, wr.CLAIMED)


def test_the_line_is_bounded_in_size_and_per_client():
    r = room(max_size=3, max_per_client=2)
    join(r, 2, client="203.0.113.7")
    with pytest.raises(QueueRefused) as exc:
        r.join("ev", "x", "203.0.113.7", T0)
    assert exc.value.reason == "too_many_queued"
    r.join("ev", "y", "198.51.100.1", T0)
    with pytest.raises(QueueRefused) as exc:
        r.join("ev", "z", "", T0)
    assert exc.value.reason == "queue_full"
    assert len(r) == 3
    # an exempt client ("") is not counted per address
    free = room(max_per_client=1)
    join(free, 4, client="")
    assert len(free) == 4


def test_expiry_by_queue_timeout_by_ttl_and_by_hold():
    r = room(timeout_s=60.0, ticket_ttl_s=15.0, admit_hold_s=5.0)
    old, followed, unfollowed = join(r, 3)
    old.seen_at = T0 + 18
    assert r.admit(1, T0 + 18) == [old]  # `old` is admitted: only its hold counts now
    followed.seen_at = unfollowed.seen_at = T0 + 10
    assert r.expire(T0 + 20) == []
    followed.seen_at = T0 + 20
    gone = r.expire(T0 + 26)  # old's hold (5 s from T0+18) and unfollowed's TTL (15 s from T0+10) are up
    assert {t.secret for t in gone} == {old.secret, unfollowed.secret}
    assert (old.reason, unfollowed.reason) == (wr.HOLD_EXPIRED, wr.VANISHED)
    followed.seen_at = T0 + 70
    (timed_out,) = r.expire(T0 + 61)
    assert timed_out is followed and followed.reason == wr.QUEUE_TIMEOUT
    assert "60 s" in followed.message
    assert not r.waiting and not r.admitted


def test_eta_from_the_time_limit_before_any_session_ended():
    r = room()
    join(r, 3)
    # one slot, its session streaming for 10 s of a 30 s time limit
    assert r.etas([10.0], capacity=1, time_limit=30.0) == [20.0, 50.0, 80.0]
    # two slots: 5 s and 25 s left, then every 30 s per slot
    assert r.etas([25.0, 5.0], capacity=2, time_limit=30.0) == [5.0, 25.0, 35.0]
    # a slot held for an admitted user (not streaming yet) counts as a whole session
    assert r.etas([None], capacity=1, time_limit=30.0) == [30.0, 60.0, 90.0]
    # nothing known: no ETA
    assert r.etas([10.0], capacity=1, time_limit=None) == [None, None, None]


def test_eta_learns_from_ended_sessions():
    r = room()
    join(r, 2)
    for length in (8.0, 12.0):
        r.session_ended(length)
    assert r.expected_session_s(None) == 10.0
    # measured, not capped: a 9 s limit's sessions hold their slot a little longer (the end
    # of stream's grace, the handover)
    assert r.expected_session_s(9.0) == 10.0
    assert r.etas([4.0], capacity=1, time_limit=None) == [6.0, 16.0]
    for _ in range(wr.SESSION_SAMPLES):
        r.session_ended(2.0)
    assert r.expected_session_s(None) == 2.0, "only the latest sessions count"


def test_views_say_position_size_eta_and_the_admitted_hold():
    r = room(admit_hold_s=7.0)
    a, b, c = join(r, 3)
    r.admit(1, T0)
    views = r.views([None], capacity=1, time_limit=30.0)
    assert views[a.secret].to_json() == {"state": "admitted", "hold_s": 7.0, "turn": 1}
    assert views[b.secret].to_json() == {"state": "waiting", "position": 1, "size": 2, "eta_s": 30.0}
    assert views[c.secret].to_json() == {"state": "waiting", "position": 2, "size": 2, "eta_s": 60.0}
    r.leave(c, wr.QUEUE_TIMEOUT, "waited too long")
    assert wr.gone_view(c).to_json() == {"state": "gone", "reason": "queue_timeout", "message": "waited too long"}
    assert c.secret not in r.views([None], 1, 30.0)
