"""Every way a session ends gives back its slot, worker, segments and sockets.

Paths covered: client close, time limit, connect timeout, media inactivity, handler
exception (survives), worker SIGKILL (the session survives too: a fresh worker), gateway shutdown, and 50 connect/close cycles.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
import pytest

from runtime.clients.webrtc import Client, ServerFull
from tests.conftest import async_wait_until, open_fds, shm_segments

pytestmark = pytest.mark.asyncio(loop_scope="session")

RELEASE_TIMEOUT_S = 15.0  # generous: a 2-core CI box may be busy


def tint(frame: np.ndarray) -> np.ndarray:
    out = frame.copy()
    out[..., 2] = 255
    return out


def fail_every_other(frame: np.ndarray, state=[0]) -> np.ndarray:  # noqa: B006 - call counter
    state[0] += 1
    if state[0] % 2:
        raise ValueError(f"boom {state[0]}")
    return frame


async def _connected(url: str, **kw) -> Client:
    client = Client(url, **kw)
    await client.connect()
    await asyncio.wait_for(client.first_frame.wait(), 30)
    return client


async def _released(served, timeout: float = RELEASE_TIMEOUT_S) -> bool:
    return await async_wait_until(lambda: served.leases() == 0 and not served.gateway.sessions, timeout, 0.2)


@pytest.fixture(scope="module")
def tint_app(make_gateway):
    with make_gateway(
        lambda gw: gw.add_stream(tint, event_id="life-tint", concurrency_limit=2),
        connect_timeout_s=3.0,
        media_inactivity_timeout_s=2.0,
    ) as served:
        yield served


async def test_concurrency_limit_answers_429(tint_app):
    a = await _connected(tint_app.url)
    b = await _connected(tint_app.url)
    with pytest.raises(ServerFull) as full:  # a client that takes no place in the stream's line
        await Client(tint_app.url, queue=False).connect()
    assert full.value.retry_after is not None and int(full.value.retry_after) > 0
    assert full.value.body["status"] == "failed"
    assert full.value.body["meta"]["error"] == "concurrency_limit_reached"
    assert full.value.body["meta"]["limit"] == 2
    await a.close()
    assert await async_wait_until(lambda: tint_app.leases() == 1, RELEASE_TIMEOUT_S, 0.2)
    c = await _connected(tint_app.url)  # the freed slot is usable again
    await b.close()
    await c.close()
    assert await _released(tint_app)


async def test_connect_timeout_releases_the_slot(tint_app):
    client = Client(tint_app.url)
    client.pc.setRemoteDescription = _never  # type: ignore[method-assign]  # offer, then vanish
    with pytest.raises(RuntimeError):
        await client.connect()
    assert tint_app.leases() == 1
    assert await _released(tint_app)
    await client.pc.close()


async def _never(*_a, **_k):
    raise RuntimeError("client walked away after its offer")


async def test_media_inactivity_ends_the_session(tint_app):
    client = await _connected(tint_app.url)
    client.source.stop()  # the browser tab freezes: connection up, no media
    assert await _released(tint_app)
    await client.close()


async def test_gateway_shutdown_ends_sessions(make_gateway):
    with make_gateway(lambda gw: gw.add_stream(tint, event_id="life-shutdown", concurrency_limit=2)) as served:
        a = await _connected(served.url)
        b = await _connected(served.url)
        served.run(served.gateway.aclose())
        assert not served.gateway.sessions
        assert served.leases() == 0
        assert await async_wait_until(lambda: a.ended.is_set() and b.ended.is_set(), 10)
        await a.close()
        await b.close()


async def test_time_limit_tells_the_client_then_closes(make_gateway):
    with make_gateway(lambda gw: gw.add_stream(tint, event_id="life-time", time_limit=2.0)) as served:
        client = await _connected(served.url)
        started = time.monotonic()
        msg = await client.wait_message("end_stream", 20)
        assert msg["data"]["reason"] == "time_limit_reached"
        assert time.monotonic() - started >= 1.0  # counted from the first media, not earlier
        assert await async_wait_until(lambda: client.pc.connectionState in ("closed", "failed") or client.ended.is_set(), 15)
        assert await _released(served)
        await client.close()


async def test_handler_exception_reaches_client_and_session_survives(make_gateway):
    with make_gateway(lambda gw: gw.add_stream(fail_every_other, event_id="life-raise")) as served:
        client = await _connected(served.url)
        err = await client.wait_message("error", 20)
        assert "ValueError: boom" in err["message"]
        received = client.report.received
        await asyncio.sleep(1.0)
        assert client.report.received > received  # frames keep coming between the failures
        assert len(served.gateway.sessions) == 1
        await client.close()
        assert await _released(served)


async def test_worker_sigkill_restarts_only_its_session(make_gateway):
    """docs/failover.md: the killed worker's session gets a fresh one (tests/media/test_failover.py
    has the details); here, that its neighbour never notices and the pool replaces the dead one."""
    with make_gateway(lambda gw: gw.add_stream(tint, event_id="life-kill", concurrency_limit=2)) as served:
        victim = await _connected(served.url)
        other = await _connected(served.url)
        session = served.gateway.sessions[victim.webrtc_id]
        pid = session.worker_pid
        before = served.status()["events"]["life-kill"]["replaced_total"]
        told = asyncio.Event()
        victim.on_message.append(lambda m: told.set() if m.get("type") == "warning" and "restarted" in m.get("message", "") else None)
        await asyncio.sleep(0.5)
        other_before = other.report.received
        os.kill(pid, signal.SIGKILL)
        await asyncio.wait_for(told.wait(), 30)
        t0 = time.monotonic()
        await asyncio.sleep(1.5)
        # the other session kept streaming through the kill, and the victim streams again
        assert (other.report.received - other_before) / (time.monotonic() - t0 + 0.5) > 5
        assert other.webrtc_id in served.gateway.sessions and victim.webrtc_id in served.gateway.sessions
        victim_before = victim.report.received
        assert await async_wait_until(lambda: victim.report.received > victim_before + 10, 15, 0.2)
        assert served.leases() == 2
        status = await async_wait_until(
            lambda: (s := served.status()["events"]["life-kill"])["replaced_total"] > before and s,
            60,
            0.5,
        )
        assert status, "the pool did not replace the killed worker"
        assert pid not in {w["pid"] for w in status["workers"]}
        await victim.close()
        await other.close()
        assert await _released(served)


async def test_fifty_cycles_leak_nothing(make_gateway):
    with make_gateway(lambda gw: gw.add_stream(tint, event_id="life-cycles", concurrency_limit=1)) as served:
        warm = await _connected(served.url)  # first session pays one-time costs
        await warm.close()
        assert await _released(served)
        segments, fds = shm_segments(), open_fds()
        workers = {w["pid"] for w in served.status()["events"]["life-cycles"]["workers"]}
        for _ in range(50):
            client = await _connected(served.url, fps=15, size=(320, 240))
            await client.close()
            assert await _released(served), "slot not released after a cycle"
        assert await async_wait_until(lambda: shm_segments() == segments, 10)
        assert await async_wait_until(lambda: open_fds() <= fds + 2, 10), f"fds {fds} -> {open_fds()}"
        status = served.status()["events"]["life-cycles"]
        assert {w["pid"] for w in status["workers"]} == workers, "workers were replaced or leaked"
        assert status["replaced_total"] == 0
