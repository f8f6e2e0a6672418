"""AdditionalOutputs reach their own session only, in order, none lost; inputs reach the worker live."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from runtime.clients.webrtc import Client
from workers.handlers import AdditionalOutputs

pytestmark = pytest.mark.asyncio(loop_scope="session")

COUNT = {"n": 0}


def tagger(frame: np.ndarray, tag: str):
    COUNT["n"] += 1
    return frame, AdditionalOutputs(tag, COUNT["n"])


MAX_OUTPUTS = 2000  # a reader gives up after this many without seeing its input's tag


async def _collect(url: str, client: Client, tag: str, out: list) -> None:
    """Outputs of one session until its new input's ``tag`` shows (robust to a slow machine:
    a fixed count may all be backlog from before the input)."""
    async with httpx.AsyncClient(timeout=None) as http:
        async with http.stream("GET", f"{url}/webrtc/outputs", params={"webrtc_id": client.webrtc_id}, headers={"X-Session-Key": client.session_key}) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    out.append(json.loads(line[6:]))
                    if out[-1][0] == tag or len(out) >= MAX_OUTPUTS:
                        return


async def test_outputs_are_per_session_in_order_and_inputs_change_live(make_gateway):
    with make_gateway(lambda gw: gw.add_stream(tagger, event_id="out-tag", concurrency_limit=2, initial_args=["initial"])) as served:
        a = Client(served.url, fps=15, size=(160, 120))
        b = Client(served.url, fps=15, size=(160, 120))
        await a.connect()
        await b.connect()
        await asyncio.wait_for(asyncio.gather(a.first_frame.wait(), b.first_frame.wait()), 30)
        got_a: list = []
        got_b: list = []
        readers = [
            asyncio.create_task(_collect(served.url, a, "A", got_a)),
            asyncio.create_task(_collect(served.url, b, "B", got_b)),
        ]
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient() as http:
            for c, tag in ((a, "A"), (b, "B")):
                r = await http.post(f"{served.url}/webrtc/input", json=c.ids(args=[tag]))
                assert r.status_code == 200
        await asyncio.wait_for(asyncio.gather(*readers), 60)
        await a.close()
        await b.close()
    for got, tag in ((got_a, "A"), (got_b, "B")):
        tags = [g[0] for g in got]
        assert set(tags) <= {"initial", tag}, f"a session saw another session's outputs: {set(tags)}"
        assert tags[0] == "initial" and tags[-1] == tag, "the input change did not reach the worker"
        first = tags.index(tag)
        assert all(t == tag for t in tags[first:]), "an old input value came back after the new one"
        counters = [g[1] for g in got]
        assert counters == sorted(counters) and len(set(counters)) == len(counters), "outputs out of order"
        assert counters == list(range(counters[0], counters[0] + len(counters))), "outputs lost"
