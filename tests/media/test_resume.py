"""A media process dies: its clients resume (docs/failover.md).

Real processes throughout: two media processes, real aiortc clients with ``auto_resume``,
SIGKILL of the media process under two of them. Their sessions come back on the other media
process with the same workers and the handlers' state (a frame counter painted into the
frames), their neighbour never notices; a live session resumes in place (a network change); a resume with a wrong key is a 403 and changes
nothing; after the grace, and for a session that ended, a 404.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import httpx
import numpy as np
import pytest

from runtime.clients.webrtc import Client, OfferRejected
from tests.conftest import async_wait_until, offer_sdp

pytestmark = pytest.mark.asyncio(loop_scope="session")

FIRST_FRAME_S = 30.0
RESUME_S = 30.0  # silence detection, the scheduler seeing the death, ICE again: a busy 2-core box
FRAMES_AFTER = 15
RELEASE_S = 15.0
GRACE_S = 4.0  # the module's app: a resume within it (the client's 2 s of silence first), and one after
RETRIES = 30  # a second apart: a resume refused 503 while a media process is replaced is tried again
# the count is painted as three base-16 digits, each a flat grey block (VP8 keeps a flat
# block's level within a few steps: a digit's 16-level band is far wider)
DIGITS = 3
BLOCK = slice(100, 140)
DIGIT_BAND = 16


def digit_columns(i: int) -> slice:
    return slice(40 + 50 * i, 80 + 50 * i)


class CountingInvert:
    """Inverts each frame and paints how many it has seen: state that lives in its worker."""

    def __init__(self) -> None:
        self.frames = 0

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        self.frames += 1
        out = 255 - frame
        n = self.frames
        for i in range(DIGITS):
            digit = (n // DIGIT_BAND ** (DIGITS - 1 - i)) % DIGIT_BAND
            out[BLOCK, digit_columns(i)] = digit * DIGIT_BAND + DIGIT_BAND // 2
        return out


def painted_count(client: Client) -> int:
    frame = client.frames[-1].astype(int)
    n = 0
    for i in range(DIGITS):
        level = float(frame[BLOCK, digit_columns(i)].mean())
        n = n * DIGIT_BAND + int(level) // DIGIT_BAND
    return n


def leases(served: Any) -> set[tuple[str, int]]:
    """The deployment's leases and their workers' pids (the scheduler's view)."""
    return {(row["lease"], row["pid"]) for row in served.status()["sessions"]}


def held(served: Any, webrtc_id: str) -> bool:
    """The session's lease is held for its resume: leased, and nowhere in the directory."""
    import ray

    located = ray.get(served.gateway.scheduler.locate.remote(webrtc_id), timeout=10)
    return served.leases() == 1 and located is None


def reason(body: dict[str, Any]) -> str:
    """An offer refusal's JSON reason (fastrtc's shape: {"status": "failed", "meta": {...}})."""
    return str(body.get("error") or body["meta"]["error"])


async def connected(url: str, **kw: Any) -> Client:
    client = Client(url, auto_resume=True, **kw)
    await client.connect()
    await asyncio.wait_for(client.first_frame.wait(), FIRST_FRAME_S)
    return client


async def streams_on(client: Client, frames: int = FRAMES_AFTER) -> bool:
    received = client.report.received
    return await async_wait_until(lambda: client.report.received >= received + frames, FIRST_FRAME_S)


@pytest.fixture(scope="module")
def served(make_gateway: Any) -> Any:
    """One app for the module: two media processes, a short resume grace."""
    with make_gateway(
        lambda gw: gw.add_stream(CountingInvert(), event_id="resume-count", concurrency_limit=3),
        processes=2,
        resume_grace_s=GRACE_S,
    ) as app:
        yield app


async def test_a_killed_media_processes_sessions_resume_with_their_workers_and_state(served: Any) -> None:
    clients = [await connected(served.url) for _ in range(3)]
    try:
        placed = served.gateway.supervisor.placed
        by_process: dict[int, list[Client]] = {}
        for c in clients:
            by_process.setdefault(id(placed[c.webrtc_id]), []).append(c)
        assert len(by_process) == 2, "the three sessions are not spread over the two media processes"
        # the media process with two sessions dies; the one with one is their neighbour
        hit, [b] = sorted(by_process.values(), key=len, reverse=True)
        assert len(hit) == 2
        before = leases(served)
        assert len(before) == 3
        assert await async_wait_until(lambda: all(painted_count(c) >= 40 for c in hit), 15), "the handler's count does not show"
        victim = placed[hit[0].webrtc_id].load.pid

        os.kill(victim, signal.SIGKILL)
        counts_at_kill = [painted_count(c) for c in hit]
        assert await async_wait_until(lambda: all(c.resumes == 1 for c in hit), RESUME_S), f"no resume: {[c.messages[-3:] for c in hit]}"
        for c in hit:
            assert await streams_on(c), "a resumed session does not stream"
        # the same workers (the same leases with the same pids), their handlers' state
        # and all: each count went on, not from zero
        assert leases(served) == before, "a lease or a worker changed"
        for c, count in zip(hit, counts_at_kill, strict=True):
            assert placed[c.webrtc_id].load.pid != victim
            assert painted_count(c) > count, f"count {painted_count(c)} after the resume, {count} before"
        # their neighbour on the other media process never noticed
        assert b.resumes == 0 and await streams_on(b, 5) and not b.ended.is_set()
        # a client whose network changed resumes a live session: a new peer connection in
        # place of the old, the same media process, worker and lease
        b_place = placed[b.webrtc_id]
        answer = await b.resume()
        assert answer["resumed"] and b.resumes == 1
        assert await streams_on(b), "the session does not stream on its new peer connection"
        assert placed[b.webrtc_id] is b_place and leases(served) == before
        assert not any(c.ended.is_set() for c in clients)
        async with httpx.AsyncClient() as http:
            text = (await http.get(served.url + "/metrics")).text
        assert 'rtcpool_failovers_total{cause="resumed"} 3.0' in text
        assert served.leases() == 3
    finally:
        for c in clients:
            await c.hang_up()
    assert await async_wait_until(lambda: served.leases() == 0, RELEASE_S, 0.2)


async def test_a_resume_needs_the_sessions_key_and_its_grace(served: Any) -> None:
    # both media processes up again after the first test's kill
    assert await async_wait_until(lambda: len([s for s in served.gateway.supervisor.slots if not s.dead]) == 2, 60, 0.5)
    a = await connected(served.url)
    a.auto_resume = False  # this test resumes by hand
    victim = served.gateway.supervisor.placed[a.webrtc_id].load.pid
    os.kill(victim, signal.SIGKILL)
    sdp = await offer_sdp()
    async with httpx.AsyncClient(timeout=30) as http:
        wrong = await http.post(
            f"{served.url}/webrtc/offer", json={"sdp": sdp, "type": "offer", "webrtc_id": a.webrtc_id, "session_key": "x" * 32}
        )
    assert wrong.status_code == 403, wrong.text
    assert reason(wrong.json()) == "bad_session_key"
    # nothing changed: the right key still resumes it
    await a.resume()
    assert await streams_on(a)
    assert a.resumes == 1

    # a session whose media process died and whose client waited past the grace: 404
    victim = served.gateway.supervisor.placed[a.webrtc_id].load.pid
    os.kill(victim, signal.SIGKILL)
    assert await async_wait_until(lambda: served.leases() == 0, GRACE_S + RELEASE_S, 0.2), (
        f"the grace did not end: {served.status()['sessions']}, media {served.status()['media']}, killed {victim}"
    )
    with pytest.raises(OfferRejected) as late:
        # (503 no_media_process while the killed processes' replacements start: retried)
        await a.resume(attempts=RETRIES)
    assert late.value.status == 404 and reason(late.value.body) == "not_resumable", late.value.body
    await a.close()

    # a client that hangs up while its session is held: given up at once, not resumable
    d = await connected(served.url)
    d.auto_resume = False
    os.kill(served.gateway.supervisor.placed[d.webrtc_id].load.pid, signal.SIGKILL)
    assert await async_wait_until(lambda: held(served, d.webrtc_id), RELEASE_S, 0.2), "the scheduler did not hold the session"
    hung_up = await d.post("close")
    assert hung_up.status_code == 200, hung_up.text
    assert served.leases() == 0
    with pytest.raises(OfferRejected) as gone:
        await d.resume(attempts=RETRIES)
    assert gone.value.status == 404, gone.value.body
    await d.close()

    # a session that ended: 404, and its id is free for a new session
    c = await connected(served.url)
    key = c.session_key
    await c.hang_up()
    assert await async_wait_until(lambda: served.leases() == 0, RELEASE_S, 0.2)
    async with httpx.AsyncClient(timeout=30) as http:
        ended = await http.post(
            f"{served.url}/webrtc/offer", json={"sdp": await offer_sdp(), "type": "offer", "webrtc_id": c.webrtc_id, "session_key": key}
        )
    assert ended.status_code == 404 and reason(ended.json()) == "not_resumable", ended.text
