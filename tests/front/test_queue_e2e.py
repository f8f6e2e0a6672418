"""The waiting room through a real gateway, without Gradio: the offer's 202 and its ticket,
the updates stream, admission, the offer posted again, processed frames; leaving by the
route and by closing the updates stream; streams that do not queue; bad input on the routes.

Real Ray, real aiortc peers (runtime/clients/webrtc.py, as an app without Gradio would use it).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from typing import Any

import httpx
import numpy as np
import pytest

from runtime import constants as C
from runtime.clients.webrtc import Client, ServerFull
from runtime.config_loader import load_config
from runtime.front.gateway import Gateway
from tests.conftest import async_wait_until, offer_sdp, serve_gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")

LINE, CLOSED = "queue-line", "queue-closed"
TIME_LIMIT_S = 60.0  # the line's ETA is known from the first session on
FIRST_FRAME_TIMEOUT_S = 60.0
QUEUED_TIMEOUT_S = 30.0  # a client's offer is answered with its place by then
ADMIT_TIMEOUT_S = 30.0  # after the slot frees, the waiting client streams by then
LEAVE_TIMEOUT_S = 10.0  # a closed updates stream has taken its ticket out by then


def invert(frame: np.ndarray) -> np.ndarray:
    return 255 - frame


@pytest.fixture(scope="module")
def app(ray_session):
    gateway = Gateway(load_config(overrides={"gateway": {"ice_host_addresses": ["127.0.0.1"]}}))
    gateway.add_stream(invert, event_id=LINE, concurrency_limit=1, time_limit=TIME_LIMIT_S)
    gateway.add_stream(invert, event_id=CLOSED, concurrency_limit=1, queue=False)
    with serve_gateway(gateway) as served:
        yield served


def line(served: Any, event_id: str = LINE) -> dict[str, Any]:
    return served.status()["events"][event_id]


async def raw_offer(url: str, webrtc_id: str, stream_id: str = LINE, **extra: Any) -> httpx.Response:
    body = {"sdp": await offer_sdp(), "type": "offer", "webrtc_id": webrtc_id, "stream_id": stream_id, **extra}
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(f"{url}/webrtc/offer", json=body)


async def test_a_full_stream_queues_the_client_and_admits_it_when_the_slot_frees(app):
    first = Client(app.url, stream_id=LINE)
    await first.connect()
    await asyncio.wait_for(first.first_frame.wait(), FIRST_FRAME_TIMEOUT_S)
    waiting = Client(app.url, stream_id=LINE)
    joining = asyncio.create_task(waiting.connect())
    assert await async_wait_until(lambda: any(v["state"] == "waiting" for v in waiting.queue_views[1:]), QUEUED_TIMEOUT_S), waiting.queue_views
    placed = waiting.queue_views[0]
    assert (placed["position"], placed["size"], placed["updates"]) == (1, 1, "/webrtc/queue")
    assert 0 < placed["eta_s"] <= TIME_LIMIT_S, "the ETA is what is left of the first session's time limit"
    assert not joining.done(), "a waiting client is not answered yet"
    assert line(app)["queue"] == 1 and line(app)["leases"] == 1
    assert len(app.gateway.sessions) == 1, "a waiting client holds no session, no peer connection"

    await first.hang_up()
    await asyncio.wait_for(joining, ADMIT_TIMEOUT_S)
    assert waiting.queue_views[-1]["state"] == "admitted"
    await asyncio.wait_for(waiting.first_frame.wait(), FIRST_FRAME_TIMEOUT_S)
    sent = waiting.source.base.astype(int)
    got = waiting.frames[-1].astype(int)
    assert abs(got.mean() - (255 - sent).mean()) < 10, "the admitted session's frames went through the handler"
    assert line(app)["queue"] == 0
    await waiting.hang_up()
    assert await async_wait_until(lambda: line(app)["leases"] == 0, LEAVE_TIMEOUT_S)


async def test_the_202_names_a_ticket_that_the_updates_stream_and_leave_route_take(app):
    holder = Client(app.url, stream_id=LINE)
    await holder.connect()
    try:
        r = await raw_offer(app.url, "raw-202")
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["status"] == "queued" and body["webrtc_id"] == "raw-202"
        ticket = body["queue"]["ticket"]
        assert isinstance(ticket, str) and len(ticket) >= 32
        assert "sdp" not in body and "session_key" not in body
        headers = {"X-Queue-Ticket": ticket}
        async with httpx.AsyncClient(timeout=30) as http:
            async with http.stream("GET", f"{app.url}/webrtc/queue", params={"webrtc_id": "raw-202"}, headers=headers) as resp:
                assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
                lines = resp.aiter_lines()
                event = await anext(lines)
                data = await anext(lines)
                assert event == "event: queue"
                view = json.loads(data.removeprefix("data: "))
                assert view["state"] == "waiting" and view["position"] == 1 and view["size"] == 1
                # the stream stays open while it waits; leaving by the route ends it
                left = await http.post(f"{app.url}/webrtc/queue/leave", json={"webrtc_id": "raw-202", "ticket": ticket})
                assert left.status_code == 200 and left.json() == {"status": "success"}
                rest = [json.loads(x.removeprefix("data: ")) async for x in lines if x.startswith("data: ")]
            # (a fresh ETA may come first: the front's poll refreshes waiting views)
            assert rest and (rest[-1]["state"], rest[-1]["reason"]) == ("gone", "left"), rest
            assert all(v["state"] == "waiting" for v in rest[:-1]), rest
            again = await http.post(f"{app.url}/webrtc/queue/leave", json={"webrtc_id": "raw-202", "ticket": ticket})
            assert again.status_code == 404 and again.json()["meta"]["error"] == "unknown_queue_ticket"
        # the left ticket cannot be redeemed
        gone = await raw_offer(app.url, "raw-202", queue_ticket=ticket)
        assert gone.status_code == 410 and gone.json()["meta"]["error"] == "queue_ticket_gone"
        assert line(app)["queue"] == 0
    finally:
        await holder.hang_up()


async def test_closing_the_updates_stream_leaves_the_line(app):
    holder = Client(app.url, stream_id=LINE)
    await holder.connect()
    try:
        r = await raw_offer(app.url, "tab-closed")
        assert r.status_code == 202
        ticket = r.json()["queue"]["ticket"]
        async with httpx.AsyncClient(timeout=30) as http:
            async with http.stream("GET", f"{app.url}/webrtc/queue", params={"webrtc_id": "tab-closed"}, headers={"X-Queue-Ticket": ticket}) as resp:
                await anext(resp.aiter_lines())
                assert line(app)["queue"] == 1
        # the stream closed while the client waited (a closed tab): out of the line
        assert await async_wait_until(lambda: line(app)["queue"] == 0, LEAVE_TIMEOUT_S)
        assert line(app)["leases"] == 1, "the holder's session is untouched"
    finally:
        await holder.hang_up()
    assert await async_wait_until(lambda: line(app)["leases"] == 0, LEAVE_TIMEOUT_S)


async def test_streams_and_clients_that_do_not_queue_get_the_429(app):
    holder = Client(app.url, stream_id=CLOSED)
    await holder.connect()
    try:
        # a fastrtc-style client (no queue field) on a stream with queue=False
        r = await raw_offer(app.url, "closed-2", stream_id=CLOSED)
        assert r.status_code == 429 and r.headers["retry-after"] == str(C.RETRY_AFTER_S)
        meta = r.json()["meta"]
        assert (meta["error"], meta["limit"], meta["queue_size"]) == ("concurrency_limit_reached", 1, 0)
    finally:
        await holder.hang_up()
    line_holder = Client(app.url, stream_id=LINE)
    await line_holder.connect()
    try:
        # a client that takes no place in line, on a stream that queues
        with pytest.raises(ServerFull) as full:
            await Client(app.url, stream_id=LINE, queue=False).connect()
        assert full.value.body["meta"]["error"] == "concurrency_limit_reached"
        assert line(app)["queue"] == 0
    finally:
        await line_holder.hang_up()


@pytest.mark.parametrize(
    ("method", "route", "kw", "status", "error"),
    [
        ("GET", "/webrtc/queue", {"params": {"webrtc_id": "x"}}, 400, "queue_ticket_required"),
        ("GET", "/webrtc/queue", {"params": {"webrtc_id": "x", "ticket": "t"}, "headers": {"X-Queue-Ticket": "t"}}, 400, "ticket_in_url"),
        ("GET", "/webrtc/queue", {"params": {"webrtc_id": "x"}, "headers": {"X-Queue-Ticket": "a" * 32}}, 404, "unknown_queue_ticket"),
        ("GET", "/webrtc/queue", {"params": {"webrtc_id": "x"}, "headers": {"X-Queue-Ticket": "a" * 65}}, 400, "bad_queue_ticket"),
        ("GET", "/webrtc/queue", {"params": {"webrtc_id": "bad id!"}, "headers": {"X-Queue-Ticket": "a" * 32}}, 400, "bad_webrtc_id"),
        ("POST", "/webrtc/queue/leave", {"content": b"webrtc_id=x", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
        ("POST", "/webrtc/queue/leave", {"json": {"webrtc_id": "x", "ticket": "b" * 32}}, 404, "unknown_queue_ticket"),
        ("POST", "/webrtc/queue/leave", {"json": {"webrtc_id": "x", "ticket": ["b"]}}, 400, "queue_ticket_required"),
        ("POST", "/webrtc/queue/leave", {"json": {"webrtc_id": "x", "ticket": "b" * 32, "deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}, 400, None),
        ("POST", "/webrtc/queue/leave", {"content": b"{" * 2_000_000, "headers": {"content-type": "application/json"}}, 413, "body_too_large"),
    ],
)
async def test_bad_input_on_the_queue_routes_gets_a_4xx_and_changes_nothing(app, method, route, kw, status, error):
    before = line(app)["queue"]
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.request(method, f"{app.url}{route}", **kw)
    assert r.status_code == status, r.text
    meta = r.json()["meta"]
    assert meta["message"]
    if error is not None:
        assert meta["error"] == error
    assert line(app)["queue"] == before


@pytest.mark.parametrize(
    ("extra", "status", "error"),
    [
        ({"queue": "yes"}, 400, "bad_request"),
        ({"queue_ticket": "x" * 1000}, 400, "bad_queue_ticket"),
        ({"queue_ticket": 7}, 400, "queue_ticket_required"),
        ({"queue_ticket": "never-issued-ticket-0123456789abcdef"}, 410, "queue_ticket_gone"),
    ],
)
async def test_bad_queue_fields_on_the_offer_get_a_4xx_and_take_nothing(app, extra, status, error):
    r = await raw_offer(app.url, "bad-queue-field", **extra)
    assert r.status_code == status, r.text
    assert r.json()["meta"]["error"] == error
    assert (line(app)["queue"], line(app)["leases"]) == (0, 0)
    assert "bad-queue-field" not in app.gateway.sessions


async def test_update_streams_on_one_ticket_are_bounded_and_given_back(app):
    """queue.max_update_streams_per_ticket streams follow one ticket; one more is a 429
    with a JSON reason and Retry-After; when they close, nothing stays counted."""
    per_ticket = app.gateway.config.queue.max_update_streams_per_ticket
    holder = Client(app.url, stream_id=LINE)
    await holder.connect()
    try:
        r = await raw_offer(app.url, "many-tabs")
        assert r.status_code == 202, r.text
        headers = {"X-Queue-Ticket": r.json()["queue"]["ticket"]}
        url = f"{app.url}/webrtc/queue?webrtc_id=many-tabs"
        async with httpx.AsyncClient(timeout=30) as http:
            async with contextlib.AsyncExitStack() as streams:
                for _ in range(per_ticket - 1):
                    resp = await streams.enter_async_context(http.stream("GET", url, headers=headers))
                    assert resp.status_code == 200
                # a stream whose response never starts (the client gone before it did) is
                # given back when it is collected
                never_read = app.run(app.gateway.queue_stream(headers["X-Queue-Ticket"], "many-tabs", "203.0.113.9"))
                assert app.gateway.queue.held == (per_ticket, 1)
                del never_read
                gc.collect()
                assert app.gateway.queue.held == (per_ticket - 1, 0)
                resp = await streams.enter_async_context(http.stream("GET", url, headers=headers))
                assert resp.status_code == 200
                over = await http.get(url, headers=headers)
                assert over.status_code == 429 and over.json()["meta"]["error"] == "too_many_queue_streams", over.text
                assert int(over.headers["Retry-After"]) >= 1
        assert await async_wait_until(lambda: app.gateway.queue.held == (0, 0), LEAVE_TIMEOUT_S), app.gateway.queue.held
        assert await async_wait_until(lambda: line(app)["queue"] == 0, LEAVE_TIMEOUT_S)
    finally:
        await holder.hang_up()
    assert await async_wait_until(lambda: line(app)["leases"] == 0, LEAVE_TIMEOUT_S)
