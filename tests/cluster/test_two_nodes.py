"""Deployment by config on a real two-node Ray cluster (``ray start --head`` + ``ray start
--address``, both on this machine), two ``rtcpool serve`` gateways joined to it, and the
real aiortc client.

* a stream whose config asks for the second node's resource runs its worker there, and its
  frames cross between the nodes over TCP and come back processed;
* two gateways share one scheduler, so ``concurrency_limit=2`` admits two sessions in all;
* a node that dies ends only the sessions of its workers: their clients are told, their
  slots come back, the stream that needed it says why no worker can start, and new
  sessions of the other streams go to the nodes that are left.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime.cli import SHORT_ID_CHARS, format_status
from runtime.clients.webrtc import Client, OfferRejected, ServerFull
from tests.cluster.cluster import REPO, GatewayProcess, LocalCluster, Probe, subprocess_env
from tests.cluster.conftest import DOOMED_RESOURCE, FAR_RESOURCE, NODE_CPUS
from tests.conftest import async_wait_until

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(600)]

WARM_S = 120.0  # a worker process started and ready in its pool (2 busy cores)
FIRST_FRAME_S = 60.0  # offer -> first processed frame back at the client
SHARPEN_S = 15.0  # VP8 starts blurry and sharpens within a second or two
RELEASE_S = 20.0  # a closed session's slot back at the scheduler
STATUS_S = 60.0  # `rtcpool status`: a Python start, ray.init, two calls
TOLD_S = 5.0  # a lost worker -> its client told (the contract says 1 s; this box is busy)
NODE_DEAD_S = 30.0  # the GCS declares a killed node dead (health checks every 0.5 s, 3 misses)
FAST_ANSWER_S = 10.0  # an offer no node can serve is answered this fast, not in LEASE_TIMEOUT_S
BYSTANDER_FRAMES = 20  # frames another session must receive after the node died
BYSTANDER_S = 10.0
POLL_S = 0.2
REGION = (slice(60, 460), slice(20, 620))  # the picture below the client's counter strip
INVERTED_MAX_ERROR = 12.0  # mean abs difference to the exact inverse, after VP8 twice
UNPROCESSED_MIN_ERROR = 60.0  # mean abs difference to the unprocessed picture


def event(view: dict[str, Any], event_id: str) -> dict[str, Any]:
    return view["events"].get(event_id, {})


def node(view: dict[str, Any], node_id: str) -> dict[str, Any]:
    # Ray lists a dead node for a while; one it no longer lists is gone all the same
    return next(
        (n for n in view["nodes"] if n["node_id"] == node_id), {"alive": False, "workers": []}
    )


async def wait_view(probe: Probe, pred: Any, timeout: float, what: str) -> dict[str, Any]:
    return await asyncio.to_thread(probe.wait, pred, timeout, what)


class Sessions:
    """The clients a test opens; :meth:`close_all` closes every one, whatever happened."""

    def __init__(self) -> None:
        self.opened: list[Client] = []

    async def open(self, url: str, stream_id: str) -> Client:
        client = Client(url, stream_id=stream_id)
        self.opened.append(client)
        await client.connect()
        await asyncio.wait_for(client.first_frame.wait(), FIRST_FRAME_S)
        return client

    async def close_all(self) -> None:
        while self.opened:
            await self.opened.pop().close()


@pytest.fixture
async def sessions() -> AsyncIterator[Sessions]:
    opened = Sessions()
    try:
        yield opened
    finally:
        await opened.close_all()


async def assert_inverted(client: Client) -> None:
    """The frames coming back are the client's picture, inverted by the worker."""
    assert client.source is not None
    sent = client.source.base.astype(int)

    def errors() -> tuple[float, float]:
        got = client.frames[-1].astype(int)
        return (
            float(np.abs(got[REGION] - (255 - sent[REGION])).mean()),
            float(np.abs(got[REGION] - sent[REGION]).mean()),
        )

    await async_wait_until(lambda: errors()[0] < INVERTED_MAX_ERROR, SHARPEN_S)
    inverse, same = errors()
    assert inverse < INVERTED_MAX_ERROR, f"the frame is not the inverse (mean error {inverse:.1f})"
    assert same > UNPROCESSED_MIN_ERROR, "the frame looks unprocessed"


async def sessions_of(gateway: GatewayProcess, event_id: str) -> list[dict[str, Any]]:
    return [s for s in await asyncio.to_thread(gateway.sessions) if s["event_id"] == event_id]


async def no_sessions(gateway: GatewayProcess, event_id: str) -> bool:
    return not await sessions_of(gateway, event_id)


async def until(check: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(POLL_S)
    return True


async def rtcpool_status(*flags: str) -> subprocess.CompletedProcess[bytes]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "runtime.cli", "status", *flags],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        timeout=STATUS_S,
    )


async def test_a_stream_that_needs_the_far_node_runs_there_over_tcp(
    cluster: LocalCluster,
    cluster_config: Path,
    two_gateways: list[GatewayProcess],
    probe: Probe,
    sessions: Sessions,
) -> None:
    a, _ = two_gateways
    far, head = cluster.nodes["far"].node_id, cluster.nodes["head"].node_id
    await wait_view(
        probe, lambda v: event(v, "far").get("idle", 0) >= 1, WARM_S, "a far worker ready"
    )
    client = await sessions.open(a.url, "far")
    await assert_inverted(client)
    [session] = await sessions_of(a, "far")
    assert session["worker_node_id"] == far, "the worker is not where pool.resources put it"
    assert session["transport"] == "tcp", "a worker on another node is reached over TCP"

    # the gateway tells the scheduler each session's transport with its next heartbeat
    await wait_view(
        probe,
        lambda v: [r["transport"] for r in v["sessions"] if r["event_id"] == "far"] == ["tcp"],
        STATUS_S,
        "the far session listed with its transport",
    )
    # `rtcpool status`, per node: the far node runs this session's worker, the head none.
    # The scheduler is in the config's namespace: --config finds it there
    result = await rtcpool_status("--address", cluster.address, "--config", str(cluster_config), "--json")
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    view = json.loads(result.stdout)
    nodes = {n["node_id"]: n for n in view["nodes"]}
    assert nodes[head]["head"] and not nodes[far]["head"]
    assert (
        nodes[far]["resources"][FAR_RESOURCE] == 1 and nodes[far]["resources"]["CPU"] == NODE_CPUS
    )
    assert {"event_id": "far", "pid": session["worker_pid"], "busy": True} in nodes[far]["workers"]
    assert not [w for w in nodes[head]["workers"] if w["event_id"] == "far"]
    assert event(view, "far")["leases"] == 1 and event(view, "far")["sessions"] == 1
    # and the session itself: its stream, gateway, worker node and pid, transport
    [row] = [r for r in view["sessions"] if r["event_id"] == "far"]
    assert (row["pid"], row["node_id"], row["transport"]) == (session["worker_pid"], far, "tcp")
    assert row["gateway_id"] in view["gateways"] and row["streaming_s"] is not None
    text = format_status(view)
    assert f"node {far[:SHORT_ID_CHARS]}" in text and f"node {head[:SHORT_ID_CHARS]} head" in text
    assert f"far: pid {session['worker_pid']} busy" in text
    assert "far: 1/1 slots taken" in text
    assert f"{row['lease']} far via {row['gateway_id']}: pid {session['worker_pid']} on node {far[:SHORT_ID_CHARS]}, tcp" in text
    # the default namespace holds no scheduler of this deployment
    other = await rtcpool_status("--address", cluster.address)
    assert other.returncode == 1 and b"no rtcpool scheduler" in other.stdout, other.stdout[-500:]
    await sessions.close_all()
    await wait_view(probe, lambda v: event(v, "far")["leases"] == 0, RELEASE_S, "the far slot back")


async def test_two_gateways_share_one_concurrency_limit(
    two_gateways: list[GatewayProcess], probe: Probe, sessions: Sessions
) -> None:
    a, b = two_gateways
    first = await sessions.open(a.url, "shared")
    second = await sessions.open(b.url, "shared")
    await assert_inverted(first)
    await assert_inverted(second)
    for gateway in (a, b):  # full, whichever gateway the third offer reaches
        with pytest.raises(ServerFull) as full:  # (a client that takes no place in line)
            await Client(gateway.url, stream_id="shared", queue=False).connect()
        assert full.value.retry_after is not None and int(full.value.retry_after) > 0
        assert full.value.body["status"] == "failed"
        assert full.value.body["meta"]["error"] == "concurrency_limit_reached"
        assert full.value.body["meta"]["limit"] == 2
    view = await asyncio.to_thread(probe.view)
    assert event(view, "shared")["leases"] == 2
    assert len(view["gateways"]) == 2, "both gateways hold leases of the one scheduler"

    # one line for both gateways: the first to queue (through b) goes first, then the one
    # that queued through a, each when a slot frees, whichever gateway held it
    third, fourth = Client(b.url, stream_id="shared"), Client(a.url, stream_id="shared")
    sessions.opened += [third, fourth]
    third_in = asyncio.create_task(third.connect())
    await wait_view(probe, lambda v: event(v, "shared").get("queue") == 1, RELEASE_S, "the third in line")
    fourth_in = asyncio.create_task(fourth.connect())
    await wait_view(probe, lambda v: event(v, "shared").get("queue") == 2, RELEASE_S, "the fourth in line")
    await first.close()  # a's session ends: the slot goes to the head of the line, through b
    await asyncio.wait_for(third_in, RELEASE_S + FIRST_FRAME_S)
    await asyncio.wait_for(third.first_frame.wait(), FIRST_FRAME_S)
    await assert_inverted(third)
    assert await async_wait_until(lambda: fourth.queue_views[-1].get("position") == 1, RELEASE_S), fourth.queue_views
    assert not fourth_in.done()
    await second.close()  # b's session ends: the fourth, through a
    await asyncio.wait_for(fourth_in, RELEASE_S + FIRST_FRAME_S)
    await asyncio.wait_for(fourth.first_frame.wait(), FIRST_FRAME_S)
    await assert_inverted(fourth)
    await sessions.close_all()
    await wait_view(probe, lambda v: event(v, "shared")["leases"] == 0, RELEASE_S, "slots back")


async def test_a_lost_node_ends_only_its_sessions_and_gives_their_slots_back(
    cluster: LocalCluster, two_gateways: list[GatewayProcess], probe: Probe, sessions: Sessions
) -> None:
    a, b = two_gateways
    doomed = await asyncio.to_thread(cluster.add_node, "doomed", NODE_CPUS, {DOOMED_RESOURCE: 1})
    # the doomed stream's workers were requested when the gateways started; the node takes them
    await wait_view(
        probe,
        lambda v: event(v, "doomed").get("idle", 0) == 2,
        WARM_S,
        "two workers on the new node",
    )
    victim = await sessions.open(a.url, "doomed")
    bystander = await sessions.open(b.url, "shared")
    await assert_inverted(victim)
    await assert_inverted(bystander)
    [lost] = await sessions_of(a, "doomed")
    assert lost["worker_node_id"] == doomed.node_id
    [kept] = await sessions_of(b, "shared")
    assert kept["worker_node_id"] != doomed.node_id

    told = asyncio.Event()
    victim.on_message.append(lambda m: told.set() if m.get("type") == "error" else None)
    await asyncio.to_thread(doomed.kill)
    received_at_kill = bystander.report.received

    # its client is told on the data channel, and the gateway ends the session
    await asyncio.wait_for(told.wait(), TOLD_S)
    ended = await victim.wait_message("end_stream", TOLD_S)
    assert ended["data"]["reason"] == "worker_failed"
    assert await until(lambda: no_sessions(a, "doomed"), RELEASE_S), "the lost session lingers"
    # the session on another node did not notice
    assert await async_wait_until(
        lambda: bystander.report.received >= received_at_kill + BYSTANDER_FRAMES, BYSTANDER_S
    ), "the session on a surviving node stopped receiving frames"
    assert not bystander.ended.is_set()

    # its slot is back; Ray declares the node dead; the stream that needs it says why (the
    # scheduler reads the node list once a second)
    view = await wait_view(
        probe,
        lambda v: (
            event(v, "doomed")["leases"] == 0
            and not node(v, doomed.node_id)["alive"]
            and event(v, "doomed")["unplaceable"]
        ),
        NODE_DEAD_S,
        "the lost session's slot back, its node declared dead, its stream unplaceable",
    )
    assert DOOMED_RESOURCE in event(view, "doomed")["unplaceable"]
    # the busy worker went with its session, the idle one left the pool: none is handed out
    assert not node(view, doomed.node_id)["workers"], "a dead node's workers are still pooled"
    assert event(view, "doomed")["idle"] == 0
    started = time.monotonic()
    with pytest.raises(OfferRejected) as rejected:
        await Client(a.url, stream_id="doomed").connect()
    assert time.monotonic() - started < FAST_ANSWER_S
    assert rejected.value.status == 503
    assert rejected.value.body["meta"]["error"] == "no_node_fits"
    assert DOOMED_RESOURCE in rejected.value.body["meta"]["message"]

    # a new session of another stream goes to a node that is left
    newcomer = await sessions.open(a.url, "shared")
    await assert_inverted(newcomer)
    [placed] = await sessions_of(a, "shared")
    left = {cluster.nodes["head"].node_id, cluster.nodes["far"].node_id}
    assert placed["worker_node_id"] in left
    await sessions.close_all()
    await wait_view(probe, lambda v: event(v, "shared")["leases"] == 0, RELEASE_S, "slots back")
