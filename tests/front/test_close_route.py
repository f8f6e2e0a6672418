"""POST /webrtc/close: the client hangs up and the gateway frees the slot at once.

A real gateway (real Ray, real aiortc peers): a hang-up (with the session's key) ends a live
session well inside the media-inactivity timeout; a hang-up for an offer that is still being
answered has no key yet, so it is refused and the client hangs up once the answer brings the
key (with ``gateway.require_session_key: false`` the id alone ends that session as soon as it
exists); bad input gets a 4xx with a JSON reason and changes nothing.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from runtime import constants as C
from runtime.clients.webrtc import Client
from runtime.config_loader import load_config
from runtime.front.gateway import Gateway
from tests.conftest import async_wait_until, serve_gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")

WARM, COLD = "close-warm", "close-cold"  # COLD keeps no idle worker: each offer starts one
# a hang-up must free the slot well before the timeouts that would otherwise end the session
HANGUP_RELEASE_S = 5.0
assert HANGUP_RELEASE_S < C.MEDIA_INACTIVITY_TIMEOUT_S < C.CONNECT_TIMEOUT_S
FIRST_FRAME_TIMEOUT_S = 60.0
OFFER_PENDING_TIMEOUT_S = 30.0  # the cold stream's offer reserves its id by then
PENDING_HOLD_S = 1.0  # an offer held pending this long before its lease: the poll sees it
WORKER_START_TIMEOUT_S = 120.0  # the cold stream's offer waits for a worker at most this long


def identity(frame: np.ndarray) -> np.ndarray:
    return frame


@pytest.fixture(scope="module")
def app(ray_session):
    config = load_config(
        overrides={
            "gateway": {"ice_host_addresses": ["127.0.0.1"]},
            "streams": {COLD: {"pool": {"prewarm": 0}}},
        }
    )
    gateway = Gateway(config)
    gateway.add_stream(identity, event_id=WARM, concurrency_limit=2)
    gateway.add_stream(identity, event_id=COLD, concurrency_limit=1)
    with serve_gateway(gateway, warm=False) as served:
        served.gateway.wait_warm()  # WARM's idle worker; COLD has none by design
        yield served


def leases(served, event_id: str) -> int:
    return served.status()["events"][event_id]["leases"]


async def hang_up(url: str, client: Client, **body) -> httpx.Response:
    async with httpx.AsyncClient(timeout=WORKER_START_TIMEOUT_S) as http:
        return await http.post(f"{url}/webrtc/close", json=client.ids(**body))


async def test_hang_up_ends_a_live_session_at_once(app):
    client = Client(app.url, stream_id=WARM)
    await client.connect()
    await asyncio.wait_for(client.first_frame.wait(), FIRST_FRAME_TIMEOUT_S)
    assert leases(app, WARM) == 1
    try:
        r = await hang_up(app.url, client)
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "success"}
        # the client's peer connection is still open and sending: only the hang-up ends it
        released = await async_wait_until(
            lambda: client.webrtc_id not in app.gateway.sessions and leases(app, WARM) == 0,
            HANGUP_RELEASE_S,
            0.1,
        )
        assert released, (list(app.gateway.sessions), leases(app, WARM))
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{app.url}/webrtc/sessions")).json() == []
    finally:
        await client.close()


async def test_hang_up_during_the_offer_needs_the_key_the_answer_brings(app):
    client = Client(app.url, stream_id=COLD)
    offer = asyncio.ensure_future(client.connect())
    try:
        pending = await async_wait_until(
            lambda: client.webrtc_id in app.gateway.sessions
            and app.gateway.sessions[client.webrtc_id] is None,
            OFFER_PENDING_TIMEOUT_S,
            0.01,
        )
        assert pending, "the offer was answered before it could be caught pending"
        # whoever saw only the id (it is the client's own name) cannot end the session
        r = await hang_up(app.url, client, session_key=None)
        assert r.status_code == 403 and r.json()["meta"]["error"] == "session_key_required", r.text
        await asyncio.wait_for(offer, WORKER_START_TIMEOUT_S)
        assert client.session_key and len(client.session_key) >= 22  # >= 128 bits, base64url
        await asyncio.wait_for(client.first_frame.wait(), FIRST_FRAME_TIMEOUT_S)
        r = await hang_up(app.url, client)
        assert r.status_code == 200, r.text
        released = await async_wait_until(
            lambda: client.webrtc_id not in app.gateway.sessions and leases(app, COLD) == 0,
            HANGUP_RELEASE_S,
            0.1,
        )
        assert released, (list(app.gateway.sessions), leases(app, COLD))
    finally:
        if not offer.done():
            offer.cancel()
        await client.close()


async def test_without_session_keys_a_hang_up_during_the_offer_ends_the_session_once_it_exists(app, monkeypatch):
    # fastrtc-style clients (gateway.require_session_key: false) hang up by id alone
    monkeypatch.setattr(app.gateway.config.gateway, "require_session_key", False)
    # the test before left COLD's worker idle, so this offer would be answered within a few
    # ms, too fast to be caught pending (CI-found); its lease now takes a moment longer
    engine = app.gateway.engine
    acquire = engine._acquire

    async def slow_acquire(*args, **kwargs):
        await asyncio.sleep(PENDING_HOLD_S)
        return await acquire(*args, **kwargs)

    monkeypatch.setattr(engine, "_acquire", slow_acquire)
    client = Client(app.url, stream_id=COLD)
    offer = asyncio.ensure_future(client.connect())
    try:
        # the offer has reserved its id and waits for a worker to start: no session yet
        pending = await async_wait_until(
            lambda: client.webrtc_id in app.gateway.sessions
            and app.gateway.sessions[client.webrtc_id] is None,
            OFFER_PENDING_TIMEOUT_S,
            0.01,
        )
        assert pending, "the offer was answered before it could be caught pending"
        # answered only once the session existed and was ended
        r = await hang_up(app.url, client, session_key=None)
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "success"}
        await asyncio.wait_for(offer, WORKER_START_TIMEOUT_S)  # the session was made: an answer came
        released = await async_wait_until(
            lambda: client.webrtc_id not in app.gateway.sessions and leases(app, COLD) == 0,
            HANGUP_RELEASE_S,
            0.1,
        )
        assert released, (list(app.gateway.sessions), leases(app, COLD))
    finally:
        if not offer.done():
            offer.cancel()
        await client.close()


@pytest.mark.parametrize(
    ("body", "headers", "status", "error"),
    [
        ("not json", {"content-type": "application/json"}, 400, "bad_json"),
        ("[1, 2]", {"content-type": "application/json"}, 400, "bad_json"),
        ('{"webrtc_id": "x"}', {"content-type": "text/plain"}, 415, "unsupported_media_type"),
        ('{"webrtc_id": "x"}', {}, 415, "unsupported_media_type"),
        ("{}", {"content-type": "application/json"}, 400, "bad_webrtc_id"),
        ('{"webrtc_id": 7}', {"content-type": "application/json"}, 400, "bad_webrtc_id"),
        ('{"webrtc_id": "bad id!"}', {"content-type": "application/json"}, 400, "bad_webrtc_id"),
        ('{"webrtc_id": "nobody"}', {"content-type": "application/json"}, 404, "unknown_webrtc_id"),
        (
            json.dumps({"webrtc_id": "x", "pad": "p" * (C.MAX_INPUT_BYTES + 1)}),
            {"content-type": "application/json"},
            413,
            "body_too_large",
        ),
    ],
)
async def test_bad_hang_ups_are_refused_and_change_nothing(app, body, headers, status, error):
    client = Client(app.url, stream_id=WARM)
    await client.connect()
    await asyncio.wait_for(client.first_frame.wait(), FIRST_FRAME_TIMEOUT_S)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(f"{app.url}/webrtc/close", content=body, headers=headers)
        assert r.status_code == status, r.text
        assert r.json()["status"] == "failed"
        assert r.json()["meta"]["error"] == error
        assert r.json()["meta"]["message"]
        # the live session goes on
        frames = client.report.received
        await asyncio.sleep(0.5)
        session = app.gateway.sessions.get(client.webrtc_id)
        assert session is not None and not session.closed
        assert client.report.received > frames, "the session stopped streaming"
        assert leases(app, WARM) == 1
    finally:
        await hang_up(app.url, client)
        await client.close()
        assert await async_wait_until(lambda: leases(app, WARM) == 0, HANGUP_RELEASE_S, 0.1)
