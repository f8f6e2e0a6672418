"""runtime/control/messages.py: the typed answers' JSON forms are the dicts the routes, the CLI
and the metrics were written against, key for key and in order (no Ray)."""

import json
from dataclasses import replace

from runtime.control.messages import (
    EventStatus,
    HeartbeatAnswer,
    MediaRow,
    RegisterAnswer,
    SchedulerStatus,
    SessionRow,
    WorkerStatus,
    status_json,
)
from workers.link.messages import WorkerInfo


def test_status_json_is_the_old_dict_byte_for_byte():
    info = {"endpoint": "\0rtcpool-1", "tcp_endpoint": "10.0.0.2:4000", "pid": 11, "node_id": "n1", "host": "h1"}
    ready = WorkerInfo(info["endpoint"], info["tcp_endpoint"], "", 11, "n1", "h1")
    status = SchedulerStatus(
        events={
            "e": EventStatus(
                limit=2, active=1, leases=1, idle=1, starting=0,
                workers=(WorkerStatus.of(ready, False), WorkerStatus.of(replace(ready, pid=12), True)),
                started_total=2, replaced_total=0, last_error="", unplaceable="", gateways=("gw",),
                queue=3, admitted=1, max_queue=100, expected_session_s=None,
            )
        },
        leases=1,
        tickets=4,
        autoscale_request=({"CPU": 1.0},),
        autoscale_calls=1,
        sessions=(SessionRow("abcdef01", "e", "gw", "n1", 12, 1.5, None, "shm"),),
        gateways=("gw",),
        media=(MediaRow("gw", "front", "n1", 10, False, 1, 12.5, 0.3),),
    )  # fmt: skip
    old = {
        "events": {
            "e": {
                "limit": 2, "active": 1, "leases": 1, "idle": 1, "starting": 0,
                "workers": [{**info, "busy": False}, {**info, "pid": 12, "busy": True}],
                "started_total": 2, "replaced_total": 0, "last_error": "", "unplaceable": "", "gateways": ["gw"],
                "queue": 3, "admitted": 1, "max_queue": 100, "expected_session_s": None,
            }
        },
        "leases": 1,
        "tickets": 4,
        "autoscale_request": [{"CPU": 1.0}],
        "autoscale_calls": 1,
        "sessions": [{"lease": "abcdef01", "event_id": "e", "gateway_id": "gw", "node_id": "n1", "pid": 12,
                      "age_s": 1.5, "streaming_s": None, "transport": "shm"}],
        "gateways": ["gw"],
        "media": [{"gateway_id": "gw", "front_id": "front", "node_id": "n1", "pid": 10, "in_app": False,
                   "sessions": 1, "cpu_percent": 12.5, "loop_lag_ms": 0.3}],
    }  # fmt: skip
    assert json.dumps(status.to_json()) == json.dumps(old)
    assert status_json(status) == old and status_json(old) is old and status_json(None) is None


def test_small_answers():
    assert RegisterAnswer("e", 1, None, False, "").to_json() == {
        "event_id": "e", "limit": 1, "time_limit": None, "pending": False, "warning": ""
    }  # fmt: skip
    assert HeartbeatAnswer(("l1",), ()).to_json() == {"gone": ["l1"], "unknown_events": []}
