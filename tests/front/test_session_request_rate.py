"""Requests about sessions (close, input, candidates, outputs) for unknown ids: a bucket per
client address is charged before the session directory (a Ray call to the scheduler) is
asked, and a gateway that alone holds its media answers unknown ids itself. A real gateway's
routes over ASGI, with a scheduler that counts the look-ups it is asked for."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from runtime.config_loader import load_config
from runtime.front.gateway import Gateway
from runtime.guard.limits import (
    SESSION_REQUEST_BURST_PER_ADDRESS,
    SESSION_REQUESTS_PER_ADDRESS_PER_S,
)

ATTACKS = 300  # the count: 300 closes in 0.9 s from one address
ATTACKER = ("203.0.113.7", 40000)


class CountingScheduler:
    """The scheduler's ``locate`` as the gateway calls it (``.remote()``, awaited): no such session."""

    def __init__(self) -> None:
        self.lookups = 0
        self.locate = self

    def remote(self, webrtc_id: str) -> Any:
        self.lookups += 1

        async def answer() -> None:
            return None

        return answer()


def gateway(ray_address: str | None) -> tuple[Gateway, CountingScheduler]:
    overrides: dict[str, Any] = {"gateway": {"processes": 1, "limits": {"exempt_loopback": False}}}
    if ray_address is not None:
        overrides["ray"] = {"address": ray_address}
    gw = Gateway(load_config(overrides=overrides))
    gw.scheduler = scheduler = CountingScheduler()
    return gw, scheduler


def client(gw: Gateway, address: tuple[str, int] = ATTACKER) -> httpx.AsyncClient:
    app = FastAPI()
    gw.mount(app)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app, client=address), base_url="http://127.0.0.1:7860")


async def hammer(http: httpx.AsyncClient, route: str) -> list[httpx.Response]:
    async def one() -> httpx.Response:
        body = {"webrtc_id": uuid.uuid4().hex[:16], "session_key": "k" * 32}
        if route == "offer":
            body |= {"type": "ice-candidate", "candidate": {"candidate": ""}}
        if route == "input":
            body["args"] = []
        return await http.post(f"/webrtc/{route}", json=body)

    return list(await asyncio.gather(*(one() for _ in range(ATTACKS))))


@pytest.mark.parametrize("route", ["close", "input", "offer"])
async def test_unknown_ids_from_one_address_cost_at_most_the_burst_in_lookups(route):
    gw, scheduler = gateway("auto")  # a cluster: a session may be in another gateway's process
    async with client(gw) as http:
        start = time.monotonic()
        answers = await hammer(http, route)
        # the burst, and what the bucket refilled meanwhile (a loaded machine is slow)
        allowed = SESSION_REQUEST_BURST_PER_ADDRESS + SESSION_REQUESTS_PER_ADDRESS_PER_S * (time.monotonic() - start) + 1
        statuses = [r.status_code for r in answers]
        assert statuses.count(404) <= allowed
        assert statuses.count(429) >= ATTACKS - allowed
        assert scheduler.lookups <= allowed  # before: 300
        limited = next(r for r in answers if r.status_code == 429)
        assert limited.json()["meta"]["error"] == "session_request_rate_limited"
        assert int(limited.headers["Retry-After"]) >= 1
    # only the offender notices: another address is answered, and asks the directory
    async with client(gw, ("203.0.113.8", 40000)) as other:
        resp = await other.post("/webrtc/close", json={"webrtc_id": "nobody", "session_key": "k" * 32})
        assert resp.status_code == 404 and resp.json()["meta"]["error"] == "unknown_webrtc_id"


async def test_outputs_for_unknown_ids_are_throttled_too():
    gw, scheduler = gateway("auto")
    async with client(gw) as http:
        start = time.monotonic()
        got = await asyncio.gather(
            *(http.get("/webrtc/outputs", params={"webrtc_id": f"id{i}"}, headers={"X-Session-Key": "k" * 32}) for i in range(ATTACKS))
        )
        allowed = SESSION_REQUEST_BURST_PER_ADDRESS + SESSION_REQUESTS_PER_ADDRESS_PER_S * (time.monotonic() - start) + 1
    assert 429 in {r.status_code for r in got}
    assert scheduler.lookups <= allowed


async def test_the_only_gateway_of_its_own_ray_answers_unknown_ids_itself():
    gw, scheduler = gateway(None)  # the embedded local Ray, media in this process
    async with client(gw, ("203.0.113.9", 40000)) as http:
        resp = await http.post("/webrtc/close", json={"webrtc_id": "nobody", "session_key": "k" * 32})
    assert resp.status_code == 404 and resp.json()["meta"]["error"] == "unknown_webrtc_id"
    assert scheduler.lookups == 0
