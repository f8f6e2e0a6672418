"""/websocket/offer: fastrtc's WebSocket audio messages, against real workers.

espeak-ng speech goes out as 20 ms mu-law messages paced to real time, a ReplyOnPause echo
in a worker process sends it back, and what comes back is checked piece by piece against
what was said (tests/echo.py), through mu-law both ways and the handler's 24 kHz output."""

from __future__ import annotations

import asyncio
import json
import os

import numpy as np
import pytest

from runtime.clients.websocket import WebSocketClient
from runtime.media import mulaw
from tests.conftest import async_wait_until, shm_segments
from tests.context_reporter import OTHER_HZ, ContextReporter, dominant_hz
from tests.echo import find_echo
from tests.speech import speech
from workers.audio import resample
from workers.voice.reply_on_pause import ReplyOnPause

pytestmark = pytest.mark.asyncio(loop_scope="session")

IN_RATE = 48_000  # ReplyOnPause's input_sample_rate: what a WebSocket client sends at
OUT_RATE = 24_000  # its output_sample_rate: what comes back
SAID = "hello there, how are you today"
REPLY_WAIT_S = 15.0
RELEASE_S = 10.0


def echo(audio: tuple[int, np.ndarray]):
    yield audio


def voiced(x: np.ndarray) -> np.ndarray:
    """The speech without its leading and trailing silence."""
    loud = np.nonzero(np.abs(x) > 0.02)[0]
    return x[loud[0] : loud[-1] + 1]


@pytest.fixture(scope="module")
def served(make_gateway):
    def setup(gw):
        gw.add_stream(ReplyOnPause(echo), modality="audio", event_id="ws-echo", concurrency_limit=1)
        gw.add_stream(ReplyOnPause(echo), modality="audio", event_id="ws-full", concurrency_limit=1, queue=False)
        gw.add_stream(ReplyOnPause(echo), modality="audio", event_id="ws-limited", concurrency_limit=2, time_limit=2.0)
        gw.add_stream(lambda frame: frame, modality="video", event_id="ws-video")
        gw.add_stream(ContextReporter(), modality="audio", event_id="ws-context")

    with make_gateway(setup) as s:
        yield s


def _released(served) -> bool:
    return served.leases() == 0 and not any(served.gateway.sessions.values())


async def test_speech_echoes_back_through_mu_law(served):
    said = speech(SAID, IN_RATE)
    async with WebSocketClient(served.url, rate=IN_RATE, stream_id="ws-echo") as client:
        assert client.session_key and len(client.session_key) >= 32
        await client.play_silence(0.5)
        await client.play(said)
        await client.play_silence(1.0)
        assert await async_wait_until(lambda: len(client.received_audio()) > 0.8 * len(voiced(said)) * OUT_RATE / IN_RATE, REPLY_WAIT_S), "no reply audio"
        await client.play_silence(1.5)
        heard = client.received_audio()
        logs = [m["data"] for m in client.events("log")]
    # what was said, at the reply's rate and through mu-law as the server encodes it
    expected = mulaw.decode(mulaw.encode((resample(voiced(said), IN_RATE, OUT_RATE) * 32767).astype(np.int16)))
    found = find_echo(heard, expected, rate=OUT_RATE)
    assert not found.problems(), found
    assert "pause_detected" in logs and "response_starting" in logs, logs  # ReplyOnPause's log messages, as on the data channel
    # paced to real time: the reply is as long as it sounds, not burst in one go
    arrivals = [r.at for r in client.media]
    assert arrivals[-1] - arrivals[0] > 0.7 * len(expected) / OUT_RATE
    assert await async_wait_until(lambda: _released(served), RELEASE_S, 0.2)


async def test_the_handler_knows_its_socket_and_is_not_on_a_phone(served):
    """get_current_context() in a worker: the session's webrtc_id and a sender to this very
    socket; phone_mode is False, so the reply is the 880 Hz tone."""
    async with WebSocketClient(served.url, rate=IN_RATE, stream_id="ws-context") as client:
        await client.play_silence(1.0)
        assert await async_wait_until(lambda: client.events("context"), REPLY_WAIT_S), client.messages
        assert await async_wait_until(lambda: len(client.received_audio()) >= OUT_RATE // 2, REPLY_WAIT_S)
        (ctx,) = client.events("context")
        session = client.events("session")[0]["data"]
        heard = client.received_audio()
    assert ctx == {"type": "context", "webrtc_id": client.websocket_id, "phone_mode": False, "in_rate": IN_RATE}
    assert session["webrtc_id"] == client.websocket_id
    assert abs(dominant_hz(heard[-OUT_RATE // 4 :], OUT_RATE) - OTHER_HZ) < 20
    assert await async_wait_until(lambda: _released(served), RELEASE_S, 0.2)


def _ended(served, reason: str) -> int:
    return served.gateway.engine.counters.sessions_ended.get(reason, 0)


async def test_ping_pong_and_stop_end_the_session(served):
    closed = _ended(served, "client_closed")
    client = WebSocketClient(served.url, rate=IN_RATE, stream_id="ws-echo")
    await client.connect()
    await client.send({"event": "ping"})
    assert await async_wait_until(lambda: client.events("pong"), 5)
    assert served.leases() == 1
    await client.stop()
    assert client.close_code == 1000, (client.close_code, client.close_reason)
    assert await async_wait_until(lambda: _released(served), RELEASE_S, 0.2)
    # /metrics counts its end as the client's hang-up (not "other", and not never)
    assert _ended(served, "client_closed") == closed + 1


async def test_full_stream_without_a_line_closes_with_a_readable_reason(served):
    async with WebSocketClient(served.url, rate=IN_RATE, stream_id="ws-full"):
        refused = WebSocketClient(served.url, rate=IN_RATE, stream_id="ws-full")
        await refused.connect(wait_started=False)
        assert await async_wait_until(lambda: refused.ended.is_set(), 10)
        assert refused.close_code == 4429 and refused.close_reason == "concurrency_limit_reached", (refused.close_code, refused.close_reason)
        body = refused.messages[-1]
        assert body["status"] == "failed" and body["meta"]["error"] == "concurrency_limit_reached" and body["meta"]["limit"] == 1, body
        assert served.leases() == 1
    assert await async_wait_until(lambda: _released(served), RELEASE_S, 0.2)


async def test_a_full_stream_queues_the_socket_and_admits_it(served):
    first = WebSocketClient(served.url, rate=IN_RATE, stream_id="ws-echo")
    await first.connect()
    second = WebSocketClient(served.url, rate=IN_RATE, stream_id="ws-echo")
    await second.connect(wait_started=False)
    try:
        assert await async_wait_until(lambda: second.events("queue"), 10), second.messages
        view = second.events("queue")[0]["data"]
        assert view["state"] == "waiting" and view["position"] == 1 and view["size"] == 1, view
        assert not second.started.is_set()
        await first.stop()
        await second.wait_started(15)  # admitted without a second "start"
        assert served.leases() == 1
    finally:
        await first.close()
        await second.stop()
    assert await async_wait_until(lambda: _released(served), RELEASE_S, 0.2)


async def test_time_limit_ends_the_socket_after_telling_it(served):
    async with WebSocketClient(served.url, rate=IN_RATE, stream_id="ws-limited") as client:
        # media flowing starts the clock, as for WebRTC
        player = asyncio.ensure_future(client.play_silence(6.0))
        try:
            assert await async_wait_until(lambda: client.ended.is_set(), 10), "the time limit did not end the socket"
        finally:
            player.cancel()
            await asyncio.gather(player, return_exceptions=True)
        ends = client.events("end_stream")
        assert ends and ends[0]["data"]["reason"] == "time_limit_reached", client.messages
        assert client.close_code == 1000 and "time limit" in client.close_reason, (client.close_code, client.close_reason)
    assert await async_wait_until(lambda: _released(served), RELEASE_S, 0.2)


async def test_the_session_key_reaches_the_rest_routes(served):
    import httpx

    async with WebSocketClient(served.url, rate=IN_RATE, stream_id="ws-echo") as client:
        async with httpx.AsyncClient(timeout=10) as http:
            ids = {"webrtc_id": client.websocket_id}
            r = await http.post(f"{served.url}/webrtc/input", json={**ids, "args": [], "session_key": "x" * 32})
            assert r.status_code == 403, r.text
            r = await http.post(f"{served.url}/webrtc/input", json={**ids, "args": [], "session_key": client.session_key})
            assert r.status_code == 200, r.text
            r = await http.post(f"{served.url}/webrtc/close", json={**ids, "session_key": client.session_key})
            assert r.status_code == 200, r.text
        assert await async_wait_until(lambda: client.ended.is_set(), 10)
    assert await async_wait_until(lambda: _released(served), RELEASE_S, 0.2)


async def _raw(served, *messages, binary: bytes | None = None):
    """A socket that sends ``messages`` (text as is) after a good start; its replies."""
    import websockets

    url = served.url.replace("http://", "ws://") + "/websocket/offer"
    replies = []
    assert await async_wait_until(lambda: _released(served), RELEASE_S, 0.1)  # not in line behind the last test's session
    async with websockets.connect(url, max_size=2**22) as ws:
        await ws.send(json.dumps({"event": "start", "websocket_id": os.urandom(6).hex(), "stream_id": "ws-echo"}))
        replies.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
        for m in messages:
            await ws.send(m)
        if binary is not None:
            await ws.send(binary)
        try:
            while True:
                replies.append(json.loads(await asyncio.wait_for(ws.recv(), 2)))
        except (TimeoutError, websockets.ConnectionClosed):
            pass
        return replies, ws.close_code, ws.close_reason


async def test_bad_messages_are_answered_and_change_nothing(served):
    bad = [
        "not json",
        "[1, 2, 3]",
        json.dumps({"event": "teleport"}),
        json.dumps({"event": "media", "media": {"payload": "%%% not base64 %%%"}}),
        json.dumps({"event": "media", "media": "no payload"}),
        json.dumps({"event": "media", "media": {"payload": 12}}),
        json.dumps({"event": "start", "websocket_id": "again"}),
        "[" * 10_000 + "]" * 10_000,  # deeply nested
        json.dumps({"event": "ping"}),
    ]
    replies, code, _ = await _raw(served, *bad)
    assert replies[0]["type"] == "session"
    warnings = [r for r in replies[1:] if r.get("type") == "warning"]
    assert len(warnings) == len(bad) - 1, replies
    assert replies[-1] == {"event": "pong"}, "the session lived on through the bad messages"
    assert await async_wait_until(lambda: _released(served), RELEASE_S, 0.2)


@pytest.mark.parametrize(
    ("messages", "binary", "code", "reason"),
    [
        ((), b"\x00\x01", 1003, "binary_message"),
        (("x" * (65 * 1024),), None, 1009, "message_too_large"),
        ((json.dumps({"event": "nope"}),) * 25, None, 1008, "too_many_bad_messages"),
    ],
    ids=["binary", "oversize", "many-bad"],
)
async def test_hostile_sockets_are_closed_with_a_code(served, messages, binary, code, reason):
    replies, got_code, got_reason = await _raw(served, *messages, binary=binary)
    assert (got_code, got_reason) == (code, reason), replies[-2:]
    assert await async_wait_until(lambda: _released(served), RELEASE_S, 0.2)
    # and the server takes the next client as ever
    async with WebSocketClient(served.url, rate=IN_RATE, stream_id="ws-echo") as client:
        assert client.session_key


async def test_starts_that_are_wrong_are_refused(served):
    import websockets

    url = served.url.replace("http://", "ws://") + "/websocket/offer"
    cases = [
        ({"event": "start", "websocket_id": "bad id with spaces", "stream_id": "ws-echo"}, 4400, "bad_webrtc_id"),
        ({"event": "start", "websocket_id": "abc", "stream_id": "no-such"}, 4404, "unknown_stream"),
        ({"event": "start", "websocket_id": "abc"}, 4400, "stream_id_required"),
        ({"event": "start", "websocket_id": "abc", "stream_id": "ws-video"}, 4400, "not_an_audio_stream"),
    ]
    for start, code, reason in cases:
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps(start))
            body = json.loads(await asyncio.wait_for(ws.recv(), 10))
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
        assert body["meta"]["error"] == reason and (ws.close_code, ws.close_reason) == (code, reason), (start, body, ws.close_code)
    # media before start is answered, and a start after it still works
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"event": "media", "media": {"payload": ""}}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "warning"
    assert await async_wait_until(lambda: _released(served), RELEASE_S, 0.2)


async def test_a_socket_that_never_starts_is_closed(served, monkeypatch):
    import websockets

    monkeypatch.setattr(served.gateway.config.sockets, "start_timeout_s", 0.5)  # read per socket
    async with websockets.connect(served.url.replace("http://", "ws://") + "/websocket/offer") as ws:
        body = json.loads(await asyncio.wait_for(ws.recv(), 10))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    assert body["meta"]["error"] == "start_timeout" and ws.close_code == 1008


async def test_many_sockets_leave_nothing_behind(served):
    before, closed = shm_segments(), _ended(served, "client_closed")
    for _ in range(5):
        client = WebSocketClient(served.url, rate=IN_RATE, stream_id="ws-echo")
        await client.connect()
        await client.play_silence(0.2)
        await client.close()  # a hang-up without "stop"
        assert await async_wait_until(lambda: _released(served), RELEASE_S, 0.1)
    assert shm_segments() <= before
    assert not served.gateway.engine.keys
    assert _ended(served, "client_closed") == closed + 5


async def test_sockets_are_served_by_the_front_beside_media_processes(make_gateway):
    """gateway.processes: 2 puts WebRTC sessions in media processes; a socket's session stays
    in the front, whose loop holds the socket, with the same lease and limits."""
    said = speech("one two three four", IN_RATE)
    with make_gateway(lambda gw: gw.add_stream(ReplyOnPause(echo), modality="audio", event_id="ws-mp"), processes=2) as mp:
        assert len(mp.gateway.media) == 2
        async with WebSocketClient(mp.url, rate=IN_RATE) as client:
            assert client.websocket_id in mp.gateway.engine.sessions and mp.leases() == 1
            await client.play_silence(0.3)
            await client.play(said)
            await client.play_silence(1.0)
            assert await async_wait_until(lambda: len(client.received_audio()) > 0.5 * len(voiced(said)) * OUT_RATE / IN_RATE, REPLY_WAIT_S)
        assert await async_wait_until(lambda: mp.leases() == 0 and not any(mp.gateway.engine.sessions.values()), RELEASE_S, 0.2)
