"""A session belongs to whoever opened it: the answer carries a server-made key, and every
later request about the session (trickle candidates, input, close, outputs) must present it.

Real gateway, real Ray, real aiortc peers. A request with no key, a wrong key or another
session's key gets 403 with a JSON reason and changes nothing: the frames keep their input's
paint, no outputs reader is attached, the session keeps streaming and its slot stays held.
The key never shows in /webrtc/sessions, in the logs or in a URL.
"""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import numpy as np
import pytest

from runtime.clients.webrtc import Client
from tests.conftest import async_wait_until
from workers.handlers import AdditionalOutputs

pytestmark = pytest.mark.asyncio(loop_scope="session")

STREAM = "keys"
START_S = 60.0
PAINT_S = 10.0
RELEASE_S = 10.0
INITIAL, SET = 40, 210  # the bar's level before and after a keyed input
MAX_BAR_ERROR = 12  # VP8 round trip of a flat bar
KEY_MIN_CHARS = 22  # 128 bits in base64url


def paint(frame: np.ndarray, level: int):
    out = frame.copy()
    out[:16] = level
    return out, AdditionalOutputs(level)


def bar(client: Client) -> float:
    return float(client.frames[-1][2:14, 20:-20].mean())


@pytest.fixture(scope="module")
def app(make_gateway):
    with make_gateway(lambda gw: gw.add_stream(paint, event_id=STREAM, concurrency_limit=2, initial_args=[INITIAL])) as served:
        yield served


async def _streaming(app) -> Client:
    client = Client(app.url, fps=15, size=(160, 120))
    await client.connect()
    await asyncio.wait_for(client.first_frame.wait(), START_S)
    assert await async_wait_until(lambda: abs(bar(client) - INITIAL) < MAX_BAR_ERROR, PAINT_S)
    return client


async def test_the_answer_carries_a_fresh_unguessable_key_that_is_never_listed(app, caplog):
    caplog.set_level(logging.DEBUG)
    a, b = await _streaming(app), await _streaming(app)
    try:
        assert a.session_key and b.session_key and a.session_key != b.session_key
        assert len(a.session_key) >= KEY_MIN_CHARS
        async with httpx.AsyncClient(timeout=10) as http:
            listed = (await http.get(f"{app.url}/webrtc/sessions")).text
        assert len(json.loads(listed)) == 2
    finally:
        await a.hang_up()
        await b.hang_up()
    assert await async_wait_until(lambda: app.leases() == 0, RELEASE_S, 0.1)
    for key in (a.session_key, b.session_key):
        assert key not in listed
        assert not [r for r in caplog.records if key in r.getMessage() or key in str(getattr(r, "rtcpool", ""))], "a session key was logged"
    # one line per session start and end, with the fields an operator indexes
    fields = [getattr(r, "rtcpool", {}) for r in caplog.records]
    ends = [f for f in fields if f.get("event") == "session_end" and f.get("webrtc_id") == a.webrtc_id]
    starts = [f for f in fields if f.get("event") == "session_start" and f.get("webrtc_id") == a.webrtc_id]
    assert len(starts) == 1 and starts[0]["stream"] == STREAM and starts[0]["worker_pid"]
    assert len(ends) == 1 and ends[0]["frames_in"] > 0 and ends[0]["frames_out"] > 0 and ends[0]["duration_s"] > 0
    assert ends[0]["reason"] == "the client hung up"


async def test_requests_without_the_sessions_key_are_refused_and_change_nothing(app):
    victim, other = await _streaming(app), await _streaming(app)
    try:
        wrong_keys = {
            "no key": {},
            "null key": {"session_key": None},
            "empty key": {"session_key": ""},
            "wrong key": {"session_key": "A" * len(victim.session_key)},
            "another session's key": {"session_key": other.session_key},
            "a non-string key": {"session_key": ["x"]},
            "a non-ascii key": {"session_key": "ключ"},
        }
        async with httpx.AsyncClient(timeout=10) as http:
            for name, key in wrong_keys.items():
                base = {"webrtc_id": victim.webrtc_id, **key}
                attempts = [
                    ("input", {"json": {**base, "args": [SET]}}),
                    ("close", {"json": base}),
                    ("offer", {"json": {**base, "type": "ice-candidate", "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0}}}),
                    ("outputs", {"json": base}),
                ]
                for route, kw in attempts:
                    r = await http.post(f"{app.url}/webrtc/{route}", **kw)
                    assert r.status_code == 403, (name, route, r.status_code, r.text)
                    assert r.json()["meta"]["error"] in ("session_key_required", "bad_session_key"), (name, route, r.text)
                headers = {"X-Session-Key": key["session_key"]} if isinstance(key.get("session_key"), str) and key["session_key"].isascii() else {}
                r = await http.get(f"{app.url}/webrtc/outputs", params={"webrtc_id": victim.webrtc_id}, headers=headers)
                assert r.status_code == 403, (name, "GET outputs", r.text)
            # the key never goes in a URL (proxies and access logs keep URLs)
            r = await http.get(f"{app.url}/webrtc/outputs", params={"webrtc_id": victim.webrtc_id, "session_key": victim.session_key})
            assert r.status_code == 400 and r.json()["meta"]["error"] == "session_key_in_url"
        # nothing changed: same paint, streaming, no reader, slot held
        frames = victim.report.received
        await asyncio.sleep(1.0)
        assert victim.report.received > frames, "the session stopped streaming"
        assert abs(bar(victim) - INITIAL) < MAX_BAR_ERROR, f"a refused input reached the worker: bar at {bar(victim)}"
        session = app.gateway.sessions[victim.webrtc_id]
        assert not session.closed and session.subscribers == []
        assert app.leases() == 2

        # with the key every route works
        r = await victim.post("input", args=[SET])
        assert r.status_code == 200, r.text
        assert await async_wait_until(lambda: abs(bar(victim) - SET) < MAX_BAR_ERROR, PAINT_S), bar(victim)
        got = []
        async with httpx.AsyncClient(timeout=30) as http:
            async with http.stream("POST", f"{app.url}/webrtc/outputs", json=victim.ids()) as sse:
                assert sse.status_code == 200
                async for line in sse.aiter_lines():
                    if line.startswith("data: "):
                        got.append(json.loads(line[6:]))
                        if got[-1] == [SET] or len(got) > 200:
                            break
        assert got[-1] == [SET], got[-5:]
        r = await victim.post("close")
        assert r.status_code == 200, r.text
        assert await async_wait_until(lambda: app.leases() == 1, RELEASE_S, 0.1)
        assert abs(bar(other) - INITIAL) < MAX_BAR_ERROR, "the other session was touched"
    finally:
        await victim.close()
        await other.hang_up()
    assert await async_wait_until(lambda: app.leases() == 0, RELEASE_S, 0.1)
