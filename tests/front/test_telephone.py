"""Phone calls through Twilio Media Streams, with a local client playing Twilio's side:
the webhook's TwiML, then connected / start / media / mark / stop on /telephone/handler,
against ReplyOnPause handlers in worker processes. No Twilio account is involved."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit
from xml.etree import ElementTree

import httpx
import numpy as np
import pytest

from runtime.clients.websocket import WebSocketClient
from runtime.front.twilio import (
    CALL_TOKEN_PARAM,
    MAX_WEBHOOK_BYTES,
    signature_matches,
    twilio_signature,
)
from runtime.media import mulaw
from tests.conftest import _loopback_config, async_wait_until, serve_gateway
from tests.context_reporter import PHONE_HZ, ContextReporter
from tests.echo import find_echo
from tests.speech import compose, speech
from workers.voice.reply_on_pause import ReplyOnPause

pytestmark = pytest.mark.asyncio(loop_scope="session")

PHONE_RATE = 8_000
SAID = "hello there, how are you today"
REPLY_WAIT_S = 15.0
RELEASE_S = 10.0
TWILIO_TOKEN_ENV = "TWILIO_AUTH_TOKEN"  # telephone.twilio_auth_token_env's default
TWILIO_TOKEN = "0123456789abcdef0123456789abcdef"  # a made-up auth token: signatures are computed locally

LONG_REPLY_S = 6.0  # of tone, as one array: only the interruption's clear can cut it
TONE_HZ = 440.0
SECOND_TONE_HZ = 880.0
SHORT_REPLY_S = 0.5
PITCH_SPLIT_HZ = 660.0
LOUD_RMS = 1500.0  # of a 20 ms message's samples: reply audio, not silence


def echo(audio: tuple[int, np.ndarray]):
    yield audio


def tone(seconds: float, hz: float) -> np.ndarray:
    t = np.arange(int(seconds * PHONE_RATE)) / PHONE_RATE
    return (0.3 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)[None, :]


class LongThenShort:
    """A long tone for the first utterance (the second one interrupts it), a short tone of
    another pitch for the next. (One instance per worker process.)"""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, audio: tuple[int, np.ndarray]):
        self.calls += 1
        yield (PHONE_RATE, tone(LONG_REPLY_S, TONE_HZ) if self.calls == 1 else tone(SHORT_REPLY_S, SECOND_TONE_HZ))


def dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.fft.rfftfreq(len(samples), 1 / PHONE_RATE)[int(np.argmax(spectrum))])


def voiced(x: np.ndarray) -> np.ndarray:
    loud = np.nonzero(np.abs(x) > 0.02)[0]
    return x[loud[0] : loud[-1] + 1]


@pytest.fixture(scope="module")
def served(ray_session):
    from runtime.front.gateway import Gateway

    gw = Gateway(_loopback_config())
    gw.add_stream(ReplyOnPause(echo), modality="audio", event_id="phone-echo", concurrency_limit=2)
    gw.add_stream(ReplyOnPause(LongThenShort()), modality="audio", event_id="phone-long", concurrency_limit=1)
    gw.add_stream(ContextReporter(), modality="audio", event_id="phone-context")
    with serve_gateway(gw) as s:
        yield s


def _released(served) -> bool:
    return served.leases() == 0 and not any(served.gateway.sessions.values())


async def _call_token(served, stream_id: str) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(f"{served.url}/telephone/incoming?stream_id={stream_id}", data={"CallSid": "CA1", "From": "+15550100"})
    assert r.status_code == 200, r.text
    stream = ElementTree.fromstring(r.text).find("./Connect/Stream")
    assert stream is not None
    return {p.get("name"): p.get("value") for p in stream.findall("Parameter")}[CALL_TOKEN_PARAM]


async def test_twiml_connects_the_call_to_the_media_stream(served):
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(f"{served.url}/telephone/incoming", data={"CallSid": "CA1"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml"), r.text
        root = ElementTree.fromstring(r.text)
        assert root.tag == "Response"
        assert [c.tag for c in root] == ["Say", "Connect"], r.text
        stream = root.find("./Connect/Stream")
        host = served.url.removeprefix("http://")
        assert stream is not None and stream.get("url") == f"wss://{host}/telephone/handler", r.text
        tokens = [p.get("value") for p in stream.findall("Parameter") if p.get("name") == CALL_TOKEN_PARAM]
        assert len(tokens) == 1 and len(tokens[0]) >= 32
        # a Host that is not a host name is refused, not written into the TwiML
        r = await http.post(f"{served.url}/telephone/incoming", headers={"Host": 'evil"/><Play>x</Play>'})
        assert r.status_code == 400 and r.json()["meta"]["error"] == "bad_host", r.text
        r = await http.post(f"{served.url}/telephone/incoming?stream_id=nope")
        assert r.status_code == 404 and r.json()["meta"]["error"] == "unknown_stream"


async def test_the_webhook_takes_only_what_twilio_signed(served, monkeypatch):
    monkeypatch.setenv(TWILIO_TOKEN_ENV, TWILIO_TOKEN)  # read per request: no restart
    url = f"{served.url}/telephone/incoming"
    form = {"CallSid": "CA42", "From": "+15550100", "To": "+15550199"}
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(url, data=form)
        assert r.status_code == 403 and r.json()["meta"]["error"] == "bad_twilio_signature", r.text
        wrong = twilio_signature("not-the-token", url, form)
        r = await http.post(url, data=form, headers={"X-Twilio-Signature": wrong})
        assert r.status_code == 403
        signed = twilio_signature(TWILIO_TOKEN, url, form)
        r = await http.post(url, data={**form, "From": "+15550666"}, headers={"X-Twilio-Signature": signed})
        assert r.status_code == 403, "a changed field kept its signature"
        r = await http.post(url, data=form, headers={"X-Twilio-Signature": signed})
        assert r.status_code == 200 and "<Stream" in r.text, r.text


async def test_the_signature_is_twilios():
    # the vector of Twilio's own request validator tests (auth token 12345)
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {"CallSid": "CA1234567890ABCDE", "Digits": "1234", "From": "+14158675309", "To": "+18005551212", "Caller": "+14158675309"}
    assert twilio_signature("12345", url, params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    # a proxy may add or drop the default port: Twilio signs the URL it was given
    assert signature_matches("12345", "RSOYDt4T1cUTdK1PDd93/VVr8B8=", "https://mycompany.com:443/myapp.php?foo=1&bar=2", params)
    assert not signature_matches("12345", "RSOYDt4T1cUTdK1PDd93/VVr8B8=", "https://othercompany.com/myapp.php?foo=1&bar=2", params)


async def test_a_whole_call_echoes_the_caller(served):
    said = speech(SAID, PHONE_RATE)
    client = WebSocketClient(served.url, rate=PHONE_RATE, telephone=True, call_token=await _call_token(served, "phone-echo"), websocket_id="MZ" + "1" * 32)
    await client.connect()
    try:
        await client.play_silence(0.5)
        await client.send({"event": "mark", "streamSid": client.websocket_id, "mark": {"name": "greeting-played"}})
        await client.send({"event": "dtmf", "streamSid": client.websocket_id, "dtmf": {"digit": "1"}})
        await client.play(said)
        await client.play_silence(1.0)
        assert await async_wait_until(lambda: len(client.received_audio()) > 0.8 * len(voiced(said)), REPLY_WAIT_S), "no reply audio"
        await client.play_silence(1.5)
        heard = client.received_audio()
        assert served.leases() == 1
    finally:
        await client.stop()
    expected = mulaw.decode(mulaw.encode((voiced(said) * 32767).astype(np.int16)))
    found = find_echo(heard, expected, rate=PHONE_RATE)
    assert not found.problems(), found
    assert client.messages == [], "nothing but media goes to Twilio"
    assert client.close_code == 1000
    assert await async_wait_until(lambda: _released(served), RELEASE_S, 0.2)


async def test_the_handler_knows_it_is_on_a_phone(served):
    """phone_mode is True (the 440 Hz tone comes back), the handler hears the call at its own
    input rate (the worker resampled the 8 kHz), and its context's webrtc_id is the
    streamSid; its own messages to the socket (get_current_context().websocket) reach the
    Twilio side as it wrote them, while rtcpool's data-channel messages do not."""
    client = WebSocketClient(served.url, rate=PHONE_RATE, telephone=True, call_token=await _call_token(served, "phone-context"), websocket_id="MZ" + "2" * 32)
    await client.connect()
    try:
        await client.play_silence(1.0)
        assert await async_wait_until(lambda: len(client.received_audio()) >= PHONE_RATE // 2, REPLY_WAIT_S), "no reply audio"
        heard = client.received_audio()
    finally:
        await client.stop()
    assert client.messages == [{"type": "context", "webrtc_id": client.websocket_id, "phone_mode": True, "in_rate": 48_000}]
    assert abs(dominant_hz(heard[-PHONE_RATE // 4 :]) - PHONE_HZ) < 20
    assert await async_wait_until(lambda: _released(served), RELEASE_S, 0.2)


async def test_media_messages_carry_the_stream_sid(served):
    import websockets

    token = await _call_token(served, "phone-echo")
    url = served.url.replace("http://", "ws://") + "/telephone/handler"
    sid = "MZ" + "2" * 32
    said = speech("one two three", PHONE_RATE)
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(json.dumps({"event": "start", "streamSid": sid, "start": {"streamSid": sid, "customParameters": {CALL_TOKEN_PARAM: token}}}))
        pcm = np.concatenate([np.zeros(4000), said, np.zeros(16_000)])
        for i in range(0, len(pcm), 160):
            chunk = (pcm[i : i + 160] * 32767).astype(np.int16)
            await ws.send(json.dumps({"event": "media", "streamSid": sid, "media": {"track": "inbound", "payload": __import__("base64").b64encode(mulaw.encode(chunk)).decode()}}))
            await asyncio.sleep(0.02)
        first = json.loads(await asyncio.wait_for(ws.recv(), REPLY_WAIT_S))
    assert first["event"] == "media" and first["streamSid"] == sid and set(first) == {"event", "streamSid", "media"}, first
    assert await async_wait_until(lambda: _released(served), RELEASE_S, 0.2)


async def test_a_call_without_a_good_token_is_refused(served):
    used = await _call_token(served, "phone-echo")
    first = WebSocketClient(served.url, rate=PHONE_RATE, telephone=True, call_token=used)
    await first.connect()
    await first.play_silence(0.1)
    for token in (None, "x" * 32, used):  # none, made up, spent already
        client = WebSocketClient(served.url, rate=PHONE_RATE, telephone=True, call_token=token)
        await client.connect()
        assert await async_wait_until(lambda c=client: c.ended.is_set(), 10)
        assert (client.close_code, client.close_reason) == (4403, "bad_call_token"), (token, client.close_code)
        assert client.messages == []
    await first.stop()
    assert await async_wait_until(lambda: _released(served), RELEASE_S, 0.2)


async def test_speaking_over_a_reply_clears_the_callers_audio(served):
    speaking = compose([0.5, "hello there, how are you", 1.5, "what time is it", 2.5], sample_rate=PHONE_RATE)
    client = WebSocketClient(served.url, rate=PHONE_RATE, telephone=True, call_token=await _call_token(served, "phone-long"), websocket_id="MZ" + "3" * 32)
    await client.connect()
    try:
        await client.play(speaking.samples)
        await client.play_silence(1.0)
    finally:
        await client.stop()
    clears = [m for m in client.messages if m.get("event") == "clear"]
    assert clears and clears[0] == {"event": "clear", "streamSid": client.websocket_id}, client.messages
    # the long reply stopped well short of its length (20 ms messages of its tone), and the
    # second utterance got its own reply
    loud = [r for r in client.media if len(r.samples) and np.sqrt(np.mean(r.samples.astype(np.float64) ** 2)) > LOUD_RMS]
    long_s = sum(len(r.samples) for r in loud if dominant_hz(r.samples) < PITCH_SPLIT_HZ) / PHONE_RATE
    short_s = sum(len(r.samples) for r in loud if dominant_hz(r.samples) >= PITCH_SPLIT_HZ) / PHONE_RATE
    assert 0 < long_s < LONG_REPLY_S - 2.0, f"{long_s:.1f} s of the {LONG_REPLY_S} s reply was sent"
    assert short_s > 0.5 * SHORT_REPLY_S, f"the second reply: {short_s:.2f} s"
    assert await async_wait_until(lambda: _released(served), RELEASE_S, 0.2)


async def test_a_webhook_body_is_read_only_up_to_its_limit(served):
    """A body without a length (chunked) that never ends is refused (413) once it passes
    MAX_WEBHOOK_BYTES, without waiting for the rest; a declared one over it, before a byte."""
    parts = urlsplit(served.url)
    for framing, first in (
        ("Transfer-Encoding: chunked", b"%x\r\n%s\r\n" % (2 * MAX_WEBHOOK_BYTES, b"x" * 2 * MAX_WEBHOOK_BYTES)),
        ("Content-Length: 10000000", b"CallSid=CA1&"),
    ):
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            head = f"POST /telephone/incoming HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/x-www-form-urlencoded\r\n{framing}\r\n\r\n"
            writer.write(head.encode() + first)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(4096), REPLY_WAIT_S)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 413") and b"body_too_large" in answer, (framing, answer[:200])


async def test_a_webhook_that_is_not_a_form_is_refused(served):
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(f"{served.url}/telephone/incoming", json={"CallSid": "CA1"})
        assert r.status_code == 415 and r.json()["meta"]["error"] == "unsupported_media_type", r.text
        r = await http.post(f"{served.url}/telephone/incoming", content="&".join(f"f{i}=1" for i in range(1000)), headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 400 and r.json()["meta"]["error"] == "bad_request", r.text
