"""Two ``rtcpool serve`` gateways of one deployment (issue 10): two processes on two ports,
serving the same app file with ``gateway.processes=2`` each, joined to the test session's
Ray in one ``ray.namespace`` (so one scheduler and its session directory), as two hosts
behind a plain load balancer would be.

A session offered to gateway A is reached through gateway B: its input (the handler
paints it into the picture: checked in the pixels the client receives), its outputs
(the SSE stream carries the value), its close (the session ends on A's media process and
its slot is back). A request to B for a session that exists nowhere is a 404 with a JSON
reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime import constants as C
from runtime.clients.webrtc import Client
from tests.cluster.cluster import end_tree, tail
from tests.conftest import async_wait_until, free_port
from tests.front.test_serve import serve_env

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
SERVING_S = 120.0  # python + aiortc + two media processes (Ray actors), on 2 busy cores
FIRST_FRAME_S = 60.0  # offer -> a worker -> the first processed frame
INPUT_S = 15.0  # an input posted to B shows in the pixels by then
OUTPUT_S = 15.0  # ... and its value on B's SSE stream
RELEASE_S = 10.0  # a close posted to B ends the session and frees its slot by then
POLL_S = 0.25
STREAM_ID = "level-bar"
LEVEL = 200  # the input posted through B
BAR_ROWS = slice(5, 50)  # inside the painted bar (the top 60 rows), away from its edge
BAR_COLS = slice(100, 500)
MAX_BAR_ERROR = 12  # mean distance from LEVEL of the bar after VP8 both ways

APP = """
import numpy as np

from runtime.stream import Stream
from workers.handlers import AdditionalOutputs


def level_bar(frame: np.ndarray, level=0):
    out = frame.copy()
    out[:60] = int(level)  # the top rows take the input's value
    return out, AdditionalOutputs(int(level))


stream = Stream(level_bar, stream_id="level-bar", concurrency_limit=2, initial_args=[0])
"""


@contextlib.contextmanager
def two_gateways(tmp_path: Path, app_ray: str, namespace: str) -> Iterator[tuple[str, str]]:
    """``rtcpool serve`` of the app on two ports, both started at once (the scheduler is
    created by whichever gets there first, found by the other); their URLs."""
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = serve_env(RTCPOOL_RAY__ADDRESS=app_ray, RTCPOOL_RAY__NAMESPACE=namespace)
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    try:
        for name in ("a", "b"):
            port = free_port()
            log = tmp_path / f"serve-{name}.log"
            cmd = [
                sys.executable, "-m", "runtime.cli", "serve", str(app),
                "--port", str(port),
                "--ice-host-address", "127.0.0.1",
                "--set", "gateway.processes=2",
                "--set", "pool.prewarm=0",  # the one worker starts at the offer
            ]  # fmt: skip
            with log.open("wb") as out:
                process = subprocess.Popen(
                    cmd,
                    cwd=REPO,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            procs.append((f"http://127.0.0.1:{port}", process, log))
        deadline = time.monotonic() + SERVING_S
        for url, process, log in procs:
            while True:
                if process.poll() is not None:
                    raise AssertionError(f"serve exited with {process.returncode}:\n{tail(log)}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/webrtc/streams", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise AssertionError(f"serve did not answer in {SERVING_S} s:\n{tail(log)}")
                time.sleep(POLL_S)
        yield procs[0][0], procs[1][0]
    finally:
        for _, process, _ in procs:
            end_tree(process.pid, signal.SIGINT, 30)


def scheduler_status(namespace: str) -> dict[str, Any]:
    import ray

    scheduler = ray.get_actor(C.SCHEDULER_NAME, namespace=namespace)
    return ray.get(scheduler.status.remote(), timeout=10).to_json()


def leases(namespace: str) -> int:
    return scheduler_status(namespace)["events"][STREAM_ID]["leases"]


def bar_level(client: Client) -> float | None:
    if not client.frames:
        return None
    return float(client.frames[-1][BAR_ROWS, BAR_COLS].astype(float).mean())


async def sessions(http: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    resp = await http.get(f"{url}/webrtc/sessions")
    assert resp.status_code == 200, resp.text
    return resp.json()


async def first_output(
    http: httpx.AsyncClient, url: str, client: Client, wanted: list[Any]
) -> list[Any]:
    """The SSE stream of ``url`` for the session, read until ``wanted`` comes; every value
    it carried (the handler reports its level with each frame)."""
    seen: list[Any] = []
    async with http.stream(
        "GET",
        f"{url}/webrtc/outputs",
        params={"webrtc_id": client.webrtc_id},
        headers={"X-Session-Key": client.session_key},
    ) as sse:
        assert sse.status_code == 200, await sse.aread()
        assert sse.headers["content-type"].startswith("text/event-stream")
        async for line in sse.aiter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[len("data: ") :]))
                if seen[-1] == wanted:
                    return seen
    return seen


async def test_offer_to_one_serve_gateway_input_outputs_close_through_the_other(tmp_path, app_ray):
    namespace = f"serve-fwd-{uuid.uuid4().hex[:8]}"  # one deployment: both gateways' own
    with two_gateways(tmp_path, app_ray, namespace) as (a, b):
        media = [m for m in scheduler_status(namespace)["media"] if not m["in_app"]]
        assert len(media) == 4, f"two media processes per gateway: {media}"

        client = Client(a, stream_id=STREAM_ID)
        try:
            await client.connect()
            await asyncio.wait_for(client.first_frame.wait(), FIRST_FRAME_S)
            async with httpx.AsyncClient(timeout=30) as http:
                [row] = await sessions(http, a)
                assert row["media_pid"] in {m["pid"] for m in media}
                assert await sessions(http, b) == [], "the session is not B's: B must forward"
                assert await async_wait_until(
                    lambda: (level := bar_level(client)) is not None and level < MAX_BAR_ERROR, INPUT_S
                ), f"the initial level 0 is not painted: {bar_level(client)}"

                # input to B: the handler on A's media process paints it
                resp = await http.post(
                    f"{b}/webrtc/input", json=client.ids(args=[LEVEL])
                )
                assert resp.status_code == 200, resp.text
                assert resp.json() == {"status": "success"}
                assert await async_wait_until(
                    lambda: abs((bar_level(client) or 0) - LEVEL) < MAX_BAR_ERROR, INPUT_S
                ), f"the input posted to B did not reach the session: bar at {bar_level(client)}"

                # outputs from B: the value the handler reports comes on B's SSE stream
                seen = await asyncio.wait_for(
                    first_output(http, b, client, [LEVEL]), OUTPUT_S
                )
                assert seen[-1] == [LEVEL], f"B's outputs stream carried {seen[-5:]}"

                # a session that exists nowhere: 404 with a JSON reason, from each route
                nobody = "no-such-session-" + uuid.uuid4().hex[:8]
                for method, route, kw in [
                    ("POST", "input", {"json": {"webrtc_id": nobody, "args": [1]}}),
                    ("POST", "close", {"json": {"webrtc_id": nobody}}),
                    ("GET", "outputs", {"params": {"webrtc_id": nobody}}),
                ]:
                    bad = await http.request(method, f"{b}/webrtc/{route}", **kw)
                    assert bad.status_code == 404, (route, bad.status_code, bad.text)
                    body = bad.json()
                    assert body["status"] == "failed", body
                    assert body["meta"]["error"] == "unknown_webrtc_id", body
                    assert nobody in body["meta"]["message"], body

                # close to B: the session ends on A's media process, its slot is back
                assert leases(namespace) == 1
                resp = await http.post(f"{b}/webrtc/close", json=client.ids())
                assert resp.status_code == 200, resp.text
                for _ in range(int(RELEASE_S / POLL_S)):
                    if not await sessions(http, a):
                        break
                    await asyncio.sleep(POLL_S)
                assert await sessions(http, a) == [], (
                    "the close posted to B did not end the session on A"
                )
                assert await async_wait_until(lambda: leases(namespace) == 0, RELEASE_S, POLL_S), (
                    f"{leases(namespace)} slot(s) still leased after the close posted to B"
                )
                # the session is gone for every route now, through either gateway
                gone = await http.post(
                    f"{b}/webrtc/input", json=client.ids(args=[1])
                )
                assert gone.status_code == 404, gone.text
        finally:
            await client.close()
