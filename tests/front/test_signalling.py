"""Bad input on every route gets a clear 4xx with a JSON reason and changes nothing."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from runtime.clients.webrtc import Client
from tests.conftest import async_wait_until, offer_sdp, shm_segments

pytestmark = pytest.mark.asyncio(loop_scope="session")


def identity(frame: np.ndarray) -> np.ndarray:
    return frame


def _two_streams(gw) -> None:
    gw.add_stream(identity, event_id="sig-a", concurrency_limit=2)
    gw.add_stream(identity, event_id="sig-b", concurrency_limit=2)


@pytest.fixture(scope="module")
def app(make_gateway):
    with make_gateway(_two_streams) as served:
        yield served


async def test_streams_are_listed(app):
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{app.url}/webrtc/streams")
    assert r.status_code == 200
    assert {s["stream_id"] for s in r.json()["streams"]} == {"sig-a", "sig-b"}


@pytest.mark.parametrize(
    ("body", "headers", "status", "error"),
    [
        ("not json", {"content-type": "application/json"}, 400, "bad_json"),
        ("[1, 2]", {"content-type": "application/json"}, 400, "bad_json"),
        ('{"sdp": "v=0", "type": "offer", "webrtc_id": "x"}', {"content-type": "text/plain"}, 415, "unsupported_media_type"),
        ('{"type": "answer", "sdp": "v=0", "webrtc_id": "x"}', {"content-type": "application/json"}, 400, "bad_request"),
        ('{"type": "offer", "sdp": "hello", "webrtc_id": "x", "stream_id": "sig-a"}', {"content-type": "application/json"}, 400, "bad_sdp"),
        ('{"type": "offer", "sdp": "v=0\\r\\nm=video", "webrtc_id": "bad id!", "stream_id": "sig-a"}', {"content-type": "application/json"}, 400, "bad_webrtc_id"),
        ('{"type": "offer", "sdp": "v=0\\r\\nm=video", "stream_id": "sig-a"}', {"content-type": "application/json"}, 400, "bad_webrtc_id"),
        ('{"type": "ice-candidate", "webrtc_id": "nobody", "candidate": {"candidate": "x"}}', {"content-type": "application/json"}, 404, "unknown_webrtc_id"),
    ],
)
async def test_malformed_offers_are_refused(app, body, headers, status, error):
    before = shm_segments()
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{app.url}/webrtc/offer", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["status"] == "failed"
    assert r.json()["meta"]["error"] == error
    assert r.json()["meta"]["message"]
    assert app.leases() == 0 and not app.gateway.sessions and shm_segments() == before


async def test_oversize_body_is_refused(app):
    sdp = await offer_sdp()
    body = json.dumps({"type": "offer", "sdp": sdp + "a=x-pad:" + "p" * 100_000, "webrtc_id": "big", "stream_id": "sig-a"})
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{app.url}/webrtc/offer", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["meta"]["error"] == "body_too_large"
    assert app.leases() == 0


async def test_stream_id_is_required_with_two_streams_and_must_exist(app):
    sdp = await offer_sdp()
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{app.url}/webrtc/offer", json={"type": "offer", "sdp": sdp, "webrtc_id": "s1"})
        assert r.status_code == 400 and r.json()["meta"]["error"] == "stream_id_required"
        r = await http.post(f"{app.url}/webrtc/offer", json={"type": "offer", "sdp": sdp, "webrtc_id": "s1", "stream_id": "nope"})
        assert r.status_code == 404 and r.json()["meta"]["error"] == "unknown_stream"
    assert app.leases() == 0


async def test_sdp_that_aiortc_rejects_is_a_400_and_releases_the_lease(app):
    broken = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\n"
    before = shm_segments()
    async with httpx.AsyncClient(timeout=60) as http:
        r = await http.post(f"{app.url}/webrtc/offer", json={"type": "offer", "sdp": broken, "webrtc_id": "broken", "stream_id": "sig-a"})
    assert r.status_code == 400, r.text
    assert r.json()["meta"]["error"] == "bad_sdp"
    assert await async_wait_until(lambda: app.leases() == 0 and shm_segments() == before, 10)
    assert not app.gateway.sessions


async def test_duplicate_webrtc_id_is_a_409(app):
    client = Client(app.url, stream_id="sig-a", webrtc_id="dup-1")
    await client.connect()
    sdp = await offer_sdp()
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{app.url}/webrtc/offer", json={"type": "offer", "sdp": sdp, "webrtc_id": "dup-1", "stream_id": "sig-a"})
    assert r.status_code == 409 and r.json()["meta"]["error"] == "duplicate_webrtc_id"
    assert app.leases() == 1  # the first session is untouched
    await asyncio.wait_for(client.first_frame.wait(), 30)
    await client.close()
    assert await async_wait_until(lambda: app.leases() == 0, 15, 0.2)


async def test_input_route_validates_and_reaches_the_session(app):
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{app.url}/webrtc/input", json={"webrtc_id": "ghost", "args": [1]})
        assert r.status_code == 404 and r.json()["meta"]["error"] == "unknown_webrtc_id"
        r = await http.post(f"{app.url}/webrtc/input", json={"webrtc_id": "ghost", "args": "x"})
        assert r.status_code == 400
        r = await http.post(f"{app.url}/webrtc/input", content="{}", headers={"content-type": "text/plain"})
        assert r.status_code == 415
        r = await http.get(f"{app.url}/webrtc/outputs", params={"webrtc_id": "ghost"})
        assert r.status_code == 404


async def test_garbage_on_the_data_channel_gets_a_warning_and_the_stream_goes_on(app):
    client = Client(app.url, stream_id="sig-b")
    await client.connect()
    await asyncio.wait_for(client.first_frame.wait(), 30)
    await async_wait_until(lambda: client.channel.readyState == "open", 10)
    client.channel.send("{not json")
    client.channel.send(b"\x00\x01binary")
    client.send("no_such_type", 1)
    # past the answer's a=max-message-size, which aiortc's own channel honours: sent as a
    # client that ignores it would (the gateway drops it while reassembling, one warning)
    client.pc.sctp._remote_max_message_size = None
    client.channel.send("x" * 70_000)
    await async_wait_until(lambda: sum(m.get("type") == "warning" for m in client.messages) >= 4, 10)
    warnings = [m["message"] for m in client.messages if m.get("type") == "warning"]
    assert len(warnings) == 4, warnings
    assert any("unknown message type" in w for w in warnings)
    received = client.report.received
    await asyncio.sleep(0.5)
    assert client.report.received > received
    await client.close()
    assert await async_wait_until(lambda: app.leases() == 0, 15, 0.2)
