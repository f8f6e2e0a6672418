"""A table-driven fuzz of every signalling route and the data channel (issue 11's proof).

One gateway (a video stream that inverts frames, concurrency_limit 2) and one live "victim"
session, streaming the whole time. Over a thousand malformed, oversized, hostile and
truncated inputs (tests/front/fuzz_cases.py) go at the routes, most of them about the
victim: its id with wrong or missing keys, hostile candidates and inputs with its right key,
garbage on its data channel. Each has its exact expected status and reason (or warning);
every mismatch is collected and shown in one table at the end. Afterwards the victim still
streams inverted pixels, a fresh session is served, and nothing is leaked: leases, sessions,
workers, /dev/shm segments, this process's file descriptors.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import numpy as np
import pytest

from runtime.clients.webrtc import Client
from tests.conftest import async_wait_until, offer_sdp, open_fds, shm_segments
from tests.front import fuzz_cases as F

pytestmark = pytest.mark.asyncio(loop_scope="session")

STREAM = "fuzz"
SIZE = (320, 240)
FPS = 15
START_S = 60.0
RELEASE_S = 15.0
REQUEST_S = 30.0  # one request's answer
OFFER_S = 90.0  # an accepted offer (lease, worker link, ICE gathering)
BATCH = 16  # HTTP cases in flight at once
MIN_CASES = 1000
MIN_DATA_CHANNEL_CASES = 100
DC_REPLY_S = 15.0  # a data-channel message's warning (or pong) comes back within this (a busy box: 5 s was seen short)
DC_PACE_S = 0.03  # between data-channel messages: under the 50/s rate, the burst untouched
BURST = 160  # messages at once, at the end: over the burst of 100, so some are dropped
BURST_ANSWERED = (100, 130)  # the burst of 100, plus what 50/s refills while they arrive
MAX_INVERT_ERROR = 30.0  # mean |received - (255 - sent)| of the picture below the counter (VP8)
FD_SLACK = 8  # aiortc and httpx may keep a few descriptors (the loop's, a cached socket)
MAX_SHOWN = 120  # mismatches printed in full


def invert(frame: np.ndarray, *_inputs: Any) -> np.ndarray:
    return 255 - frame


@pytest.fixture(scope="module")
def app(make_gateway):
    with make_gateway(lambda gw: gw.add_stream(invert, event_id=STREAM, concurrency_limit=2)) as served:
        yield served


async def _offer_sdp() -> str:
    return F.normalise_offer(await offer_sdp())


def invert_error(client: Client) -> float:
    """How far the newest received frame is from the inverse of what was sent (the part
    below the frame counter's marks)."""
    assert client.source is not None and client.frames
    got = client.frames[-1].astype(np.float32)
    want = 255.0 - client.source.base.astype(np.float32)
    if got.shape != want.shape:
        return float("inf")
    top = got.shape[0] // 4
    return float(np.abs(got[top:] - want[top:]).mean())


async def streaming_inverted(client: Client, within: float = 10.0) -> tuple[bool, str]:
    """The client keeps receiving frames, and they are its own picture inverted."""
    before = client.report.received
    moved = await async_wait_until(lambda: client.report.received > before + 3, within, 0.05)
    error = invert_error(client)
    return bool(moved) and error < MAX_INVERT_ERROR, f"frames {before} -> {client.report.received}, invert error {error:.1f}"


def workers(app) -> int:
    pool = app.status()["events"][STREAM]
    return len(pool["workers"]) + pool["starting"]


class Run:
    """The fuzz in progress: the victim, the HTTP client, and every mismatch found."""

    def __init__(self, app, http: httpx.AsyncClient, ctx: F.Ctx) -> None:
        self.app = app
        self.http = http
        self.ctx = ctx
        self.mismatches: list[tuple[str, str, str]] = []  # case, expected, got
        self.done = 0

    def miss(self, case: str, expected: str, got: str) -> None:
        self.mismatches.append((case, expected, got))

    async def send(self, case: F.Case) -> tuple[int, Any, str]:
        body, headers, params = case.build(self.ctx)
        timeout = OFFER_S if case.group == F.ACCEPTED else REQUEST_S
        url = f"{self.app.url}{case.route}"

        async def go() -> tuple[int, Any, str]:
            async with self.http.stream(case.method, url, content=body, headers=headers, params=params) as r:
                if r.headers.get("content-type", "").startswith("text/event-stream"):
                    return r.status_code, None, "<an event stream>"
                raw = await r.aread()
            text = raw.decode("utf-8", "replace")
            try:
                return r.status_code, json.loads(raw), text
            except ValueError:
                return r.status_code, None, text

        return await asyncio.wait_for(go(), timeout)

    async def case(self, case: F.Case) -> None:
        try:
            status, body, text = await self.send(case)
        except Exception as exc:  # a hang, a reset connection: both are findings
            self.miss(case.name, f"{case.status} {case.error}", f"{type(exc).__name__}: {exc}"[:200])
            return
        finally:
            self.done += 1
        expected = f"{case.status} {case.error}"
        got = f"{status} {_reason(body, text)}"
        if isinstance(body, dict) and isinstance(body.get("session_key"), str):
            await self.close_accepted(case, body["session_key"])
        if status != case.status:
            self.miss(case.name, expected, got)
        elif not isinstance(body, dict):
            self.miss(case.name, expected, f"{status}, not a JSON object: {text[:120]!r}")
        elif case.plain:
            pass
        elif case.error == F.OK:
            if body.get("type") != "answer" or not isinstance(body.get("sdp"), str) or not body.get("session_key"):
                self.miss(case.name, "an answer with a session key", text[:200])
        elif case.error == F.SUCCESS:
            if body != {"status": "success"}:
                self.miss(case.name, '{"status": "success"}', text[:200])
        else:
            meta = body.get("meta") if isinstance(body.get("meta"), dict) else {}
            if body.get("status") != "failed" or meta.get("error") != case.error or not isinstance(meta.get("message"), str):
                self.miss(case.name, expected, f"{status} {text[:200]}")

    async def close_accepted(self, case: F.Case, key: str) -> None:
        """An answered offer becomes a real session: hang it up with its key at once, and
        wait for its slot to come back before the next one."""
        webrtc_id = case.webrtc_id
        if webrtc_id is None:  # an offer answered that should not have been: find its id
            body, _, _ = case.build(self.ctx)
            webrtc_id = json.loads(body or b"{}").get("webrtc_id")
        try:
            r = await self.http.post(f"{self.app.url}/webrtc/close", json={"webrtc_id": webrtc_id, "session_key": key}, timeout=REQUEST_S)
            if r.status_code != 200:
                self.miss(f"{case.name}: close", "200", f"{r.status_code} {r.text[:200]}")
        except Exception as exc:
            self.miss(f"{case.name}: close", "200", f"{type(exc).__name__}: {exc}")
        released = await async_wait_until(lambda: webrtc_id not in self.app.gateway.sessions, RELEASE_S, 0.02)
        leases = await async_wait_until(lambda: self.app.leases() <= 1, RELEASE_S, 0.02)
        if not released or not leases:
            self.miss(f"{case.name}: release", "session gone, one lease (the victim's)", f"sessions {list(self.app.gateway.sessions)}, leases {self.app.leases()}")

    async def concurrently(self, cases: list[F.Case]) -> None:
        gate = asyncio.Semaphore(BATCH)

        async def one(case: F.Case) -> None:
            async with gate:
                await self.case(case)

        await asyncio.gather(*(one(c) for c in cases))

    async def in_order(self, cases: list[F.Case]) -> None:
        for case in cases:
            await self.case(case)


def _reason(body: Any, text: str) -> str:
    if isinstance(body, dict):
        meta = body.get("meta")
        if isinstance(meta, dict):
            return str(meta.get("error"))
        if body.get("status"):
            return str(body["status"])
        return "answer" if "sdp" in body else text[:80]
    return repr(text[:80])


async def data_channel_fuzz(victim: Client, run: Run) -> int:
    """Each hostile message on the victim's channel, one at a time, paced under the rate:
    exactly one warning (or pong) comes back for each. Then a burst over the limit: the
    one 'too many data channel messages' warning, and the channel still answers."""
    rows = F.data_channel_cases()
    # a hostile client ignores the answer's a=max-message-size (aiortc's channel would refuse
    # to send the oversized rows): the gateway drops them while reassembling, one warning each
    victim.pc.sctp._remote_max_message_size = None
    hostile = sum(1 for _, _, reply in rows if reply == F.WARN)
    assert hostile >= MIN_DATA_CHANNEL_CASES, hostile
    for label, message, reply in rows:
        if label == F.DC_OVERFLOW_LABEL:
            # every hostile input so far, here and on the routes, changed nothing
            session = run.app.gateway.sessions.get(victim.webrtc_id)
            if session is None or session.args != [] or session.args_set:
                run.miss("victim's inputs after the hostile ones", "[] and never set", repr(session and (session.args, session.args_set))[:200])
        seen = len(victim.messages)
        if victim.channel.readyState != "open":
            run.miss(f"data channel: {label}", reply, f"the victim's channel is {victim.channel.readyState}")
            return len(rows)
        victim.channel.send(message)
        got = await async_wait_until(lambda seen=seen: len(victim.messages) > seen, DC_REPLY_S, 0.01)
        if not got:
            run.miss(f"data channel: {label}", reply, "nothing back")
        else:
            await asyncio.sleep(DC_PACE_S)  # a second reply to one message would show here
            new = victim.messages[seen:]
            kinds = [m.get("type") for m in new]
            if kinds != [reply]:
                run.miss(f"data channel: {label}", reply, json.dumps(new)[:200])
            elif reply == F.WARN and not isinstance(new[0].get("message"), str):
                run.miss(f"data channel: {label}", "a warning with a message", json.dumps(new)[:200])
        run.done += 1
    # over the rate: at most the burst is answered, and exactly one rate warning
    await asyncio.sleep(2.5)  # the bucket fills again (50/s)
    seen = len(victim.messages)
    for _ in range(BURST):
        victim.channel.send("{}")
    await async_wait_until(lambda: sum(m.get("message", "").startswith("too many") for m in victim.messages[seen:]) >= 1, DC_REPLY_S, 0.05)
    await asyncio.sleep(1.0)
    burst = victim.messages[seen:]
    rate = [m for m in burst if "too many data channel messages" in str(m.get("message"))]
    others = [m for m in burst if m not in rate]
    if len(rate) != 1 or not BURST_ANSWERED[0] <= len(others) <= BURST_ANSWERED[1] or any(m.get("type") != "warning" for m in burst):
        run.miss(f"data channel: {BURST} messages at once", f"one rate warning, {BURST_ANSWERED[0]}-{BURST_ANSWERED[1]} others", f"{len(rate)} rate warnings, {len(others)} others")
    await asyncio.sleep(2.5)
    seen = len(victim.messages)
    victim.send("ping", "after")
    if not await async_wait_until(lambda: any(m.get("type") == "pong" for m in victim.messages[seen:]), DC_REPLY_S, 0.02):
        run.miss("data channel: a ping after the burst", "pong", json.dumps(victim.messages[seen:])[:200])
    return len(rows) + BURST


async def test_fuzz_every_route_and_the_data_channel(app):
    started = time.monotonic()
    sdp = await _offer_sdp()
    cases = F.http_cases(sdp)
    assert len({c.name for c in cases}) == len(cases), "two cases share a name"
    shm0, fds0, leases0 = shm_segments(), open_fds(), app.leases()
    assert leases0 == 0

    victim = Client(app.url, fps=FPS, size=SIZE)
    await victim.connect()
    await asyncio.wait_for(victim.first_frame.wait(), START_S)
    assert await async_wait_until(lambda: victim.channel.readyState == "open", 10)
    ok, why = await streaming_inverted(victim)
    assert ok, why
    # the pool tops up its idle worker behind the victim's: that is its size from now on
    await async_wait_until(lambda: app.status()["events"][STREAM]["starting"] == 0, START_S, 0.2)
    workers0 = workers(app)
    ctx = F.Ctx(victim.webrtc_id, victim.session_key or "", sdp)

    async with httpx.AsyncClient(timeout=REQUEST_S) as http:
        run = Run(app, http, ctx)
        by_group = {g: [c for c in cases if c.group == g] for g in (F.CONCURRENT, F.CANDIDATES, F.INPUTS, F.ACCEPTED)}
        assert sum(len(v) for v in by_group.values()) == len(cases)

        async def http_fuzz() -> None:
            await run.concurrently(by_group[F.CONCURRENT])
            mid, why = await streaming_inverted(victim)
            if not mid:
                run.miss("victim after the concurrent cases", "streaming, inverted", why)
            await run.in_order(by_group[F.CANDIDATES])
            await run.in_order(by_group[F.ACCEPTED])

        dc_task = asyncio.ensure_future(data_channel_fuzz(victim, run))
        await http_fuzz()
        dc_count = await dc_task
        await run.in_order(by_group[F.INPUTS])
        fuzz_s = time.monotonic() - started

        # the victim was never touched: still streaming inverted pixels, its slot held
        ok, why = await streaming_inverted(victim)
        if not ok:
            run.miss("victim after the fuzz", "streaming, inverted", why)
        session = app.gateway.sessions.get(victim.webrtc_id)
        if session is None or session.closed or session.subscribers:
            run.miss("victim's session after the fuzz", "live, no output readers", repr(session))
        if app.leases() != 1:
            run.miss("leases after the fuzz", "1 (the victim's)", str(app.leases()))
        r = await victim.post("close")
        if r.status_code != 200:
            run.miss("victim's own close", "200", f"{r.status_code} {r.text[:200]}")
        await victim.close()
        if not await async_wait_until(lambda: app.leases() == 0, RELEASE_S, 0.1):
            run.miss("victim's release", "0 leases", str(app.leases()))

        # a fresh session is served processed frames
        fresh = Client(app.url, fps=FPS, size=SIZE)
        try:
            await fresh.connect()
            await asyncio.wait_for(fresh.first_frame.wait(), START_S)
            ok, why = await streaming_inverted(fresh)
            if not ok:
                run.miss("a fresh session after the fuzz", "streaming, inverted", why)
        finally:
            await fresh.hang_up()

    # nothing leaked
    if not await async_wait_until(lambda: app.leases() == leases0 and not app.gateway.sessions, RELEASE_S, 0.1):
        run.miss("leak: leases/sessions", f"{leases0} leases, no session", f"{app.leases()} leases, sessions {list(app.gateway.sessions)}")
    if not await async_wait_until(lambda: len(shm_segments()) <= len(shm0), RELEASE_S, 0.1):
        run.miss("leak: /dev/shm segments", f"<= {len(shm0)}", str(sorted(shm_segments() - shm0)))
    if not await async_wait_until(lambda: open_fds() <= fds0 + FD_SLACK, RELEASE_S, 0.2):
        run.miss("leak: file descriptors", f"<= {fds0} + {FD_SLACK}", str(open_fds()))
    if not await async_wait_until(lambda: workers(app) <= workers0, RELEASE_S, 0.2):
        run.miss("leak: workers", f"<= {workers0}", str(workers(app)))

    total = len(cases) + dc_count
    print(f"\nfuzz: {len(cases)} HTTP cases + {dc_count} data-channel messages = {total} inputs, {run.done} sent; fuzz {fuzz_s:.1f} s, all {time.monotonic() - started:.1f} s")
    for name, expected, got in run.mismatches[:MAX_SHOWN]:
        print(f"MISMATCH | {name[:90]:<90} | want {expected[:40]:<40} | got {got}")
    if len(run.mismatches) > MAX_SHOWN:
        print(f"... and {len(run.mismatches) - MAX_SHOWN} more")
    assert len(cases) >= MIN_CASES
    assert not run.mismatches, f"{len(run.mismatches)} of {total} inputs were not answered as expected (table above)"
