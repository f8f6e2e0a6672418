"""What one client may make the gateway hold (gateway.limits), on a real gateway with the
production rule for loopback (not exempt), so that 127.0.0.2 can be one client and 127.0.0.1
another: a half-open offer flood from one address does not keep the other out, pending
offers and offers per minute per address are bounded, and a session's candidates, input
posts, outputs readers and data-channel messages are too. Over a limit: a 4xx with a JSON
reason (or one warning on the data channel); the offending session may end, others never
notice.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from runtime import constants as C
from runtime.clients.webrtc import Client
from tests.conftest import async_wait_until, offer_sdp

pytestmark = pytest.mark.asyncio(loop_scope="session")

FLOOD, LIMITS = "abuse-flood", "abuse-limits"
ATTACKER, RATE_PROBE = "127.0.0.2", "127.0.0.3"  # other loopback addresses: other clients
# the pending-offer test's own attacker: the flood test's offers from ATTACKER may still count
# against its per-minute budget when that test ends quickly (CI-found: two 429 offer_rate_limited)
HOLDER = "127.0.0.4"
START_S = 60.0
MAX_PENDING = 2
OFFERS_PER_MIN = 12
MAX_CANDIDATES = 6  # refused ones count too: a flood of bad candidates is a flood
INPUT_BURST = 3
MAX_READERS = 2
MESSAGE_BURST = 10
LIMITS_CONFIG = {
    "exempt_loopback": False,
    "allow_loopback_candidates": True,  # every peer here is on loopback
    "max_pending_offers_per_address": MAX_PENDING,
    "max_offers_per_address_per_min": OFFERS_PER_MIN,
    "max_candidates_per_session": MAX_CANDIDATES,
    "max_input_posts_per_s": 0.5,
    "input_post_burst": INPUT_BURST,
    "max_sse_readers_per_session": MAX_READERS,
    "data_channel_messages_per_s": 1.0,
    "data_channel_message_burst": MESSAGE_BURST,
}


def invert(frame: np.ndarray) -> np.ndarray:
    return 255 - frame


def _streams(gw) -> None:
    gw.add_stream(invert, event_id=FLOOD, concurrency_limit=1)
    gw.add_stream(invert, event_id=LIMITS, concurrency_limit=4)


@pytest.fixture(scope="module")
def app(make_gateway):
    with make_gateway(_streams, limits=LIMITS_CONFIG, connect_timeout_s=60.0) as served:
        yield served


def _from(address: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=address), timeout=60)


async def _half_open(http: httpx.AsyncClient, url: str, stream: str, n: int) -> httpx.Response:
    # a real offer whose client never sets the answer: ICE never completes
    return await http.post(f"{url}/webrtc/offer", json={"type": "offer", "sdp": await offer_sdp(), "webrtc_id": f"half-{stream}-{n}", "stream_id": stream})


def _inverted(client: Client) -> bool:
    if not client.frames or client.source is None:
        return False
    got, sent = client.frames[-1].astype(int), client.source.frame.astype(int)
    return float(np.abs(got - (255 - sent)).mean()) < 20


async def test_a_half_open_flood_from_one_address_does_not_keep_another_out(app):
    flood_status: list[int] = []
    stop = asyncio.Event()

    async def flood() -> None:
        async with _from(ATTACKER) as http:
            n = 0
            while not stop.is_set():
                flood_status.append((await _half_open(http, app.url, FLOOD, n)).status_code)
                n += 1
                await asyncio.sleep(1.0)

    attacker = asyncio.create_task(flood())
    try:
        # the attacker holds the stream's one slot with an offer it never connects
        assert await async_wait_until(lambda: 200 in flood_status, START_S), flood_status
        client = Client(app.url, stream_id=FLOOD)
        for _ in range(20):  # until the attacker's offer is old enough to be displaced
            try:
                await client.connect()
                break
            except Exception:  # ServerFull: 429 while the half-open offer is younger than the grace
                client = Client(app.url, stream_id=FLOOD)
                await asyncio.sleep(1.0)
        else:
            raise AssertionError(f"the other address was never served: {flood_status}")
        assert await async_wait_until(lambda: _inverted(client), START_S), "the other address's session was not processed"
        await asyncio.sleep(2.0)  # the flood goes on: it waits in line or gets 429s; the session streams
        frames = client.report.received
        await asyncio.sleep(1.0)
        assert client.report.received > frames and _inverted(client)
        # its offers queue (never followed: passed over for turns) up to the per-address
        # bound, then 429; none became a session after the first
        assert flood_status.count(200) == 1 and set(flood_status[1:]) <= {202, 429}, flood_status
        assert app.status()["events"][FLOOD]["queue"] <= C.QUEUE_MAX_PER_ADDRESS
        await client.hang_up()
    finally:
        stop.set()
        await attacker
    assert await async_wait_until(lambda: not any(s is not None and s.event.event_id == FLOOD for s in app.gateway.sessions.values()), 70, 0.5)


async def test_pending_offers_and_offers_per_minute_per_address_are_bounded(app):
    async with _from(HOLDER) as http:
        answered = [await _half_open(http, app.url, LIMITS, n) for n in range(MAX_PENDING)]
        assert [r.status_code for r in answered] == [200] * MAX_PENDING, [r.text for r in answered]
        over = await _half_open(http, app.url, LIMITS, MAX_PENDING)
        assert over.status_code == 429 and over.json()["meta"]["error"] == "too_many_pending_offers", over.text
        assert int(over.headers["retry-after"]) > 0
    # another address is not touched by the first one's holds
    client = Client(app.url, stream_id=LIMITS)
    await client.connect()
    assert await async_wait_until(lambda: _inverted(client), START_S)
    await client.hang_up()
    # offers per minute: garbage counts too (it still costs the server a parse)
    async with _from(RATE_PROBE) as http:
        codes = [(await http.post(f"{app.url}/webrtc/offer", json={"type": "offer", "sdp": "v=0", "webrtc_id": f"r{n}"})).status_code for n in range(OFFERS_PER_MIN + 3)]
        limited = await http.post(f"{app.url}/webrtc/offer", json={"type": "offer", "sdp": "v=0", "webrtc_id": "r-last"})
    assert codes[:OFFERS_PER_MIN] == [400] * OFFERS_PER_MIN, codes
    assert limited.status_code == 429 and limited.json()["meta"]["error"] == "offer_rate_limited", limited.text
    # the half-open offers end at their connect timeout; hang them up now (their keys are in the answers)
    async with httpx.AsyncClient(timeout=30) as http:
        for n, r in enumerate(answered):
            await http.post(f"{app.url}/webrtc/close", json={"webrtc_id": f"half-{LIMITS}-{n}", "session_key": r.json()["session_key"]})


async def test_a_sessions_candidates_inputs_readers_and_messages_are_bounded(app):
    client = Client(app.url, stream_id=LIMITS)
    await client.connect()
    other = Client(app.url, stream_id=LIMITS)
    await other.connect()
    try:
        assert await async_wait_until(lambda: _inverted(client) and _inverted(other), START_S)
        async with httpx.AsyncClient(timeout=30) as http:
            offer = f"{app.url}/webrtc/offer"

            def cand(address: str, port: int = 9) -> dict:
                return client.ids(type="ice-candidate", candidate={"candidate": f"candidate:1 1 udp 2122260223 {address} {port} typ host", "sdpMid": "0", "sdpMLineIndex": 0})

            # no candidates to the metadata service or link-local addresses, whoever asks
            for address in ("169.254.169.254", "fe80::1", "224.0.0.1", "0.0.0.0"):
                r = await http.post(offer, json=cand(address))
                assert r.status_code == 400 and r.json()["meta"]["error"] == "forbidden_candidate_address", (address, r.text)
            codes = [(await http.post(offer, json=cand("127.0.0.1", 40000 + n))).status_code for n in range(MAX_CANDIDATES - 4 + 1)]
            assert codes == [200] * (MAX_CANDIDATES - 4) + [400], codes
            r = await http.post(offer, json=cand("127.0.0.1", 41000))
            assert r.json()["meta"]["error"] == "too_many_candidates"

            # input posts: a burst, then 429 with Retry-After
            codes = [(await client.post("input", args=[])).status_code for _ in range(INPUT_BURST + 2)]
            assert codes[:INPUT_BURST] == [200] * INPUT_BURST and codes[-1] == 429, codes
            r = await client.post("input", args=[])
            assert r.json()["meta"]["error"] == "input_rate_limited" and int(r.headers["retry-after"]) >= 1

            # outputs readers
            readers = [http.stream("POST", f"{app.url}/webrtc/outputs", json=client.ids()) for _ in range(MAX_READERS)]
            opened = [await r.__aenter__() for r in readers]
            try:
                assert all(o.status_code == 200 for o in opened)
                r = await http.post(f"{app.url}/webrtc/outputs", json=client.ids())
                assert r.status_code == 429 and r.json()["meta"]["error"] == "too_many_readers", r.text
            finally:
                for r in readers:
                    await r.__aexit__(None, None, None)

        # data channel: a burst is answered, the rest dropped with one warning
        for n in range(MESSAGE_BURST * 3):
            client.channel.send(json.dumps({"type": "ping", "data": n}))
        await asyncio.sleep(1.0)
        pongs = [m for m in client.messages if m.get("type") == "pong"]
        warnings = [m for m in client.messages if m.get("type") == "warning" and "too many data channel messages" in m.get("message", "")]
        assert MESSAGE_BURST <= len(pongs) < MESSAGE_BURST * 2, len(pongs)
        assert len(warnings) == 1, warnings
        # the session goes on, and the other one never noticed
        frames = client.report.received, other.report.received
        await asyncio.sleep(1.0)
        assert client.report.received > frames[0] and other.report.received > frames[1]
        assert _inverted(client) and _inverted(other)
        assert not [m for m in other.messages if m.get("type") in ("warning", "error")]
    finally:
        await client.hang_up()
        await other.hang_up()
