"""Gateway.start() against the session's real local Ray and the deployment's scheduler:
what a gateway tells the scheduler before any offer arrives."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import numpy as np
import pytest

from runtime import constants as C
from runtime.config_loader import load_config
from runtime.control.scheduler import SchedulerActor
from runtime.front.gateway import Gateway
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(180)

CALL_S = 30.0
# The test's own scheduler expires gateways sooner than the deployment's GATEWAY_TTL_S, so
# "still known well past the TTL" costs seconds; still 3 heartbeats long, for a busy box.
TEST_TTL_S = 3 * C.HEARTBEAT_S
BEYOND_TTL_S = TEST_TTL_S + 2 * C.HEARTBEAT_S  # a gateway that did not beat is gone by then


def invert(frame: np.ndarray) -> np.ndarray:
    return 255 - frame


def scheduler_status(ray: Any, gw: Gateway) -> dict[str, Any]:
    return ray.get(gw.scheduler.status.remote(), timeout=CALL_S).to_json()


def test_a_started_gateway_beats_registers_as_itself_and_warns_of_unknown_stream_ids(ray_session, caplog):
    known = f"t-start-{uuid.uuid4().hex[:6]}"
    typo = f"{known}-typo"
    # the gateway finds (get_if_exists) this scheduler under the deployment's name in a
    # namespace of the test's own, and gets its short TTL
    namespace = f"t-start-{uuid.uuid4().hex[:6]}"
    own = SchedulerActor.options(name=C.SCHEDULER_NAME, namespace=namespace, max_concurrency=1000).remote(
        gateway_ttl_s=TEST_TTL_S, monitor_interval_s=0.2
    )
    cfg = load_config(
        overrides={
            "ray": {"namespace": namespace},
            "gateway": {"ice_host_addresses": ["127.0.0.1"]},
            "streams": {known: {"pool": {"prewarm": 1}}, typo: {"concurrency_limit": 3}},
        },
        environ={},
    )
    gw = Gateway(cfg)
    gw.add_stream(invert, event_id=known)
    try:
        started_and_closed(ray_session, gw, own, known, typo, caplog)
    finally:
        ray_session.kill(own, no_restart=True)


def started_and_closed(ray_session: Any, gw: Gateway, own: Any, known: str, typo: str, caplog: Any) -> None:
    with caplog.at_level(logging.WARNING, logger="rtcpool.gateway"):
        gw.start()
    try:
        # the config key that matches no stream is named, with the ids that exist
        [warning] = [r.getMessage() for r in caplog.records if "no stream event has that id" in r.getMessage()]
        assert f"streams.{typo}" in warning and known in warning.split("this app's:")[1]
        gw.wait_warm()
        assert gw.scheduler._actor_id == own._actor_id, "the gateway found the test's scheduler"
        ev = scheduler_status(ray_session, gw)["events"][known]
        assert ev["gateways"] == [gw.gateway_id], "the registration names its gateway"
        # the embedded local Ray: a worker's TCP listener is on loopback only
        assert ev["workers"] and all(w["tcp_endpoint"].startswith("tcp://127.0.0.1:") for w in ev["workers"])
        # no offer ever came, yet the gateway beats: still known well past the TTL
        time.sleep(BEYOND_TTL_S)
        status = scheduler_status(ray_session, gw)
        assert gw.gateway_id in status["gateways"]
        assert status["events"][known]["gateways"] == [gw.gateway_id]
    finally:
        asyncio.run(gw.aclose(drop_pools=True))
    # closed: forgotten at once, and no late beat brings it back
    assert gw.gateway_id not in scheduler_status(ray_session, gw)["gateways"]
    assert not wait_until(lambda: gw.gateway_id in scheduler_status(ray_session, gw)["gateways"], 3 * C.HEARTBEAT_S)
    assert known not in scheduler_status(ray_session, gw)["events"]
