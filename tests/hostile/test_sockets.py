"""The telephone, WebSocket and waiting-room routes under attack (issue 20 items 2, 4, 5, 6,
8, 13, 14), against ``hostile_app``: join-token auth, no Twilio auth token, loopback not
exempt from the per-address limits. The tests run in file order: the webhook's per-address
rate (item 14) is spent last of the webhook tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import websockets

from runtime.clients.websocket import WebSocketClient
from runtime.front.twilio import MAX_WEBHOOK_BYTES
from runtime.guard.socket_limits import (
    MAX_QUEUE_STREAMS_PER_TICKET,
    MAX_UNSTARTED_SOCKETS_PER_ADDRESS,
    WEBHOOKS_PER_ADDRESS_PER_MIN,
)
from tests.hostile.conftest import AUDIO_STREAM, VIDEO_STREAM, HostileApp

pytestmark = pytest.mark.asyncio(loop_scope="session")

ANSWER_S = 10.0  # a refusal that reads nothing comes back at once; an old server never answers
CLOSE_S = 10.0
IN_RATE = 16_000
INCOMING = "/telephone/incoming"
FORGED = "CRITICAL rtcpool.gateway: FORGED-LINE"  # under 40 characters after the newline
WEBHOOK_POSTS = 2 * WEBHOOKS_PER_ADDRESS_PER_MIN


def ws_url(app: HostileApp, path: str) -> str:
    return app.url.replace("http://", "ws://") + path


async def raw_request(app: HostileApp, head: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    """Send a request's head (and the first bytes of its body, never its end), then read
    the answer: (status, JSON body). Times out if the server waits for the rest."""
    parts = urlsplit(app.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), ANSWER_S)
        headers: dict[str, str] = {}
        while (line := await asyncio.wait_for(reader.readline(), ANSWER_S)) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        data = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), ANSWER_S)
        return int(status_line.split()[1]), json.loads(data)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


# --- item 2: no call around gateway.auth -----------------------------------------------------------


async def test_unsigned_webhooks_are_refused_while_auth_is_on(hostile_app):
    async with httpx.AsyncClient(timeout=10) as http:
        for headers in ({}, hostile_app.auth(AUDIO_STREAM)):  # a join token is not Twilio's signature
            r = await http.post(f"{hostile_app.url}{INCOMING}?stream_id={AUDIO_STREAM}", data={"CallSid": "CA1"}, headers=headers)
            assert r.status_code == 403 and r.json()["meta"]["error"] == "unsigned_webhook", r.text
            assert "<Stream" not in r.text
    # no call token was minted, and none can be made up: the media stream is refused
    client = WebSocketClient(hostile_app.url, rate=8_000, telephone=True, call_token="x" * 32)
    await client.connect()
    assert await asyncio.wait_for(client.ended.wait(), CLOSE_S)
    assert (client.close_code, client.close_reason) == (4403, "bad_call_token")
    # said once, at start-up
    said = [line for line in hostile_app.tail().splitlines() if "phone calls are off" in line]
    assert len(said) == 1 and "TWILIO_AUTH_TOKEN" in said[0], hostile_app.tail()


# --- item 4: the webhook's body is measured before it is read -------------------------------------------


async def test_an_oversized_webhook_is_refused_before_its_body_is_read(hostile_app):
    host = urlsplit(hostile_app.url).netloc
    # a declared 10 MB body: 413 at once, without waiting for (or reading) a byte of it
    head = f"POST {INCOMING} HTTP/1.1\nHost: {host}\nContent-Type: application/x-www-form-urlencoded\nContent-Length: 10000000\n"
    status, body = await raw_request(hostile_app, head, b"CallSid=CA1&")
    assert status == 413 and body["meta"]["error"] == "body_too_large", body
    # a chunked body without end: refused (here: unsigned) with the body unread, not awaited
    head = f"POST {INCOMING} HTTP/1.1\nHost: {host}\nContent-Type: application/x-www-form-urlencoded\nTransfer-Encoding: chunked\n"
    chunk = b"x" * MAX_WEBHOOK_BYTES
    status, body = await raw_request(hostile_app, head, b"%x\r\n%s\r\n" % (len(chunk), chunk))
    assert status == 403 and body["meta"]["error"] == "unsigned_webhook", body


# --- item 14: the webhook's rate per address ------------------------------------------------------


async def test_a_webhook_flood_from_one_address_is_throttled(hostile_app):
    statuses: list[int] = []
    began = time.monotonic()
    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(WEBHOOK_POSTS):
            r = await http.post(f"{hostile_app.url}{INCOMING}?stream_id={AUDIO_STREAM}", data={"CallSid": "CA1"})
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.json()["meta"]["error"] == "webhook_rate_limited" and int(r.headers["Retry-After"]) >= 1, r.text
    assert set(statuses) <= {403, 429}, statuses
    # at most the burst and what the rate refilled meanwhile got past it (the earlier tests'
    # posts count too)
    let_through = WEBHOOKS_PER_ADDRESS_PER_MIN * (1 + (time.monotonic() - began) / 60.0)
    assert statuses.count(403) <= let_through and statuses.count(429) >= WEBHOOK_POSTS - let_through, statuses


# --- item 13: client strings in the log -------------------------------------------------------------


async def test_a_phone_event_name_cannot_forge_a_log_line(hostile_app):
    async with websockets.connect(ws_url(hostile_app, "/telephone/handler")) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(json.dumps({"event": f"x\n{FORGED}"}))  # logged as a warning: not started
        await ws.send(json.dumps({"event": "start", "streamSid": "MZ1\n" + FORGED, "start": {"customParameters": {"rtcpool_call": "y\n" + FORGED}}}))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), CLOSE_S)
    assert ws.close_code == 4403
    log = hostile_app.tail()
    assert "telephone (not started)" in log, log  # the warning was logged...
    # ...on one line: nothing the client sent starts a line of its own
    assert not [line for line in log.splitlines() if line.startswith(FORGED)], log


# --- item 5: a join token opens its own stream only -----------------------------------------------


async def test_a_join_token_for_one_stream_does_not_open_a_socket_on_another(hostile_app):
    client = WebSocketClient(hostile_app.url, rate=IN_RATE, stream_id=AUDIO_STREAM, headers=hostile_app.auth(VIDEO_STREAM))
    with pytest.raises(ConnectionError):
        await client.connect()
    assert (client.close_code, client.close_reason) == (4403, "token_wrong_stream")
    assert client.messages and client.messages[-1]["meta"]["error"] == "token_wrong_stream", client.messages
    # the right token opens it
    async with WebSocketClient(hostile_app.url, rate=IN_RATE, stream_id=AUDIO_STREAM, headers=hostile_app.auth(AUDIO_STREAM)) as good:
        assert good.session_key
        await good.send({"event": "stop"})


# --- item 6: sockets before "start", per address ----------------------------------------------------


async def test_silent_sockets_from_one_address_are_bounded(hostile_app):
    held: list[Any] = []
    try:
        for i in range(MAX_UNSTARTED_SOCKETS_PER_ADDRESS):  # both routes, one count
            if i % 2:
                held.append(await websockets.connect(ws_url(hostile_app, "/telephone/handler")))
            else:
                held.append(await websockets.connect(ws_url(hostile_app, "/websocket/offer"), additional_headers=hostile_app.auth(AUDIO_STREAM)))
        for ws in held:  # each is served: a ping before "start" is answered
            await ws.send(json.dumps({"event": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), CLOSE_S)) == {"event": "pong"}
        for path in ("/telephone/handler", "/websocket/offer"):
            async with websockets.connect(ws_url(hostile_app, path), additional_headers=hostile_app.auth(AUDIO_STREAM)) as extra:
                with pytest.raises(websockets.ConnectionClosed):
                    while True:
                        await asyncio.wait_for(extra.recv(), CLOSE_S)
            assert (extra.close_code, extra.close_reason) == (4429, "too_many_unstarted_sockets"), path
        # a socket that leaves frees its place at once
        await held.pop().close()
        async with websockets.connect(ws_url(hostile_app, "/telephone/handler")) as again:
            await again.send(json.dumps({"event": "ping"}))
            assert json.loads(await asyncio.wait_for(again.recv(), CLOSE_S)) == {"event": "pong"}
            # its message's size is checked before it is parsed: 1009, not a parse
            await again.send("[" * (100 * 1024))
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(again.recv(), CLOSE_S)
        assert (again.close_code, again.close_reason) == (1009, "message_too_large")
    finally:
        for ws in held:
            await ws.close()


# --- item 8: the waiting room's update streams per ticket ------------------------------------------------


async def audio_offer_sdp() -> str:
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction="sendrecv")
    pc.createDataChannel("text")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def test_update_streams_per_ticket_are_bounded(hostile_app):
    holders = [WebSocketClient(hostile_app.url, rate=IN_RATE, stream_id=AUDIO_STREAM, headers=hostile_app.auth(AUDIO_STREAM)) for _ in range(4)]
    talking: list[asyncio.Task[None]] = []
    try:
        for holder in holders:  # the audio stream's concurrency_limit: full
            await holder.connect()
            talking.append(asyncio.create_task(holder.play_silence(60.0)))  # not inactive meanwhile
        async with httpx.AsyncClient(timeout=30) as http:
            body = {"sdp": await audio_offer_sdp(), "type": "offer", "webrtc_id": "queued-1", "stream_id": AUDIO_STREAM}
            r = await http.post(f"{hostile_app.url}/webrtc/offer", json=body, headers=hostile_app.auth(AUDIO_STREAM))
            assert r.status_code == 202, r.text
            headers = {**hostile_app.auth(AUDIO_STREAM), "X-Queue-Ticket": r.json()["queue"]["ticket"]}
            url = f"{hostile_app.url}/webrtc/queue?webrtc_id=queued-1"
            async with contextlib.AsyncExitStack() as streams:
                for _ in range(MAX_QUEUE_STREAMS_PER_TICKET):
                    resp = await streams.enter_async_context(http.stream("GET", url, headers=headers))
                    assert resp.status_code == 200
                over = await http.get(url, headers=headers)
                assert over.status_code == 429 and over.json()["meta"]["error"] == "too_many_queue_streams", over.text
                assert int(over.headers["Retry-After"]) >= 1
    finally:
        for task in talking:
            task.cancel()
        for holder in holders:
            with contextlib.suppress(Exception):
                await holder.send({"event": "stop"})
            await holder.close()
