"""GET /metrics scraped before, during and after a real session (real Ray, real aiortc):
the counters moved by what happened, in the Prometheus text format."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime.clients.webrtc import Client
from tests.conftest import async_wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")

STREAM = "metrics-slow"
HANDLER_S = 0.03  # each call: lands in the handler histogram's (0.02, 0.033] bucket or above
START_S = 60.0
STREAM_S = 3.0


def slow_invert(frame: np.ndarray) -> np.ndarray:
    time.sleep(HANDLER_S)
    return 255 - frame


@pytest.fixture(scope="module")
def app(make_gateway):
    with make_gateway(lambda gw: gw.add_stream(slow_invert, event_id=STREAM, concurrency_limit=2)) as served:
        yield served


async def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.get(f"{url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(m: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in m.items() if n == name and all(dict(ls).get(k) == w for k, w in labels.items()))


async def test_metrics_move_with_a_session(app):
    before = await _scrape(app.url)
    async with httpx.AsyncClient(timeout=30) as http:  # one refused offer: counted by its reason
        await http.post(f"{app.url}/webrtc/offer", json={"type": "offer", "sdp": "v=0", "webrtc_id": "m-bad"})
    client = Client(app.url, fps=15, size=(160, 120))
    await client.connect()
    await asyncio.wait_for(client.first_frame.wait(), START_S)
    await asyncio.sleep(STREAM_S)
    during = await _scrape(app.url)
    assert _value(during, "rtcpool_sessions_live", stream=STREAM) == 1
    assert _value(during, "rtcpool_slots_used", stream=STREAM) == 1
    assert _value(during, "rtcpool_frames_total", stream=STREAM, direction="in") > _value(before, "rtcpool_frames_total", stream=STREAM, direction="in")
    await client.hang_up()
    assert await async_wait_until(lambda: app.leases() == 0, 15, 0.2)
    after = await _scrape(app.url)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert moved("rtcpool_offers_total", outcome="answered") == 1
    assert moved("rtcpool_offers_total") == 2, "the refused offer is counted too"
    assert moved("rtcpool_sessions_started_total", stream=STREAM) == 1
    assert moved("rtcpool_sessions_ended_total") == 1
    assert _value(after, "rtcpool_sessions_live", stream=STREAM) == 0
    assert moved("rtcpool_session_seconds_total") >= STREAM_S
    frames_out = moved("rtcpool_frames_total", stream=STREAM, direction="out")
    assert frames_out >= 10, frames_out
    assert moved("rtcpool_offer_to_first_frame_seconds_count") == 1
    # the handler's calls, timed in the worker: at least HANDLER_S each
    calls = moved("rtcpool_handler_seconds_count", stream=STREAM)
    assert calls >= 10, calls
    assert moved("rtcpool_handler_seconds_sum", stream=STREAM) >= calls * HANDLER_S * 0.9
    assert _value(after, "rtcpool_pool_workers", stream=STREAM) >= 1
