"""runtime/ops/metrics.py: counters -> snapshot -> merge -> render, read back as Prometheus reads it.

Every value is asserted exactly, from the text a scrape gets (parsed by prometheus_client's
own parser), not from the dataclasses; the dashboard in docs/ is checked against it too.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from runtime.errors import EndReason
from runtime.ops import metrics as M
from runtime.ops.metrics import (
    END_REASONS,
    FIXED_OUTCOMES,
    MAX_OFFER_OUTCOMES,
    MAX_STREAMS,
    OFFER_TO_FIRST_FRAME_BUCKETS_S,
    STREAM_OTHER,
    EngineCounters,
    EngineMetrics,
    LiveSessionStats,
    merge,
    outcome_label,
    render,
    snapshot,
)
from workers.link.wire import HANDLER_BUCKET_COUNT, HANDLER_BUCKETS_S, HandlerHist

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
INF = float("inf")


def hist(**by_bound: int) -> HandlerHist:
    """A handler histogram with ``n`` calls in the bucket of bound ``b`` (``b0_02=3``; ``inf``)."""
    counts = [0] * HANDLER_BUCKET_COUNT
    total = 0.0
    for key, n in by_bound.items():
        bound = INF if key == "inf" else float(key[1:].replace("_", "."))
        i = len(HANDLER_BUCKETS_S) if bound == INF else HANDLER_BUCKETS_S.index(bound)
        counts[i] += n
        total += n * (10.0 if bound == INF else bound)
    return HandlerHist(tuple(counts), total)


def scrape(engines: list[EngineMetrics], status: dict | None = None) -> dict[tuple[str, tuple], float]:
    """The samples of a render as {(name, sorted labels): value}; checks the content type."""
    body, content_type = render(engines, status)
    assert content_type == CONTENT_TYPE_LATEST
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body.decode())
        for s in fam.samples
    }


def families(engines: list[EngineMetrics], status: dict | None = None) -> dict[str, str]:
    body, _ = render(engines, status)
    return {fam.name: fam.type for fam in text_string_to_metric_families(body.decode())}


def val(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


STATUS = {
    "events": {
        "video": {"limit": 2, "active": 1, "leases": 2, "idle": 1, "starting": 1, "started_total": 5, "replaced_total": 2, "workers": [], "queue": 3, "admitted": 1},
        "audio": {"limit": None, "active": 0, "leases": 0, "idle": 2, "starting": 0, "started_total": 2, "replaced_total": 0, "workers": []},
    },
    "leases": 2,
    "sessions": [],
}


def two_engines() -> tuple[EngineMetrics, EngineMetrics]:
    """An app process and a media process, each with ended and live sessions."""
    app = EngineCounters("app")
    app.offer_outcome("answered")
    app.offer_outcome("answered")
    app.offer_outcome("concurrency_limit_reached", 429)
    app.offer_outcome("bad_sdp", 400)
    app.offer_outcome("origin_not_allowed", 403)
    app.session_started("video")
    app.session_started("video")
    app.first_frame(0.3)
    app.first_frame(1.0)  # exactly a bound: counted in it ("le")
    app.session_ended(LiveSessionStats("video", 100, 90, 3, 1, hist(b0_02=50, b0_033=40), 10.0), EndReason.CLIENT_CLOSED)
    live_app = [LiveSessionStats("video", 20, 19, 1, 0, hist(b0_033=19), 2.5)]

    media = EngineCounters("media-1")
    media.offer_outcome("answered")
    media.offer_outcome("draining", 503)
    media.offer_outcome("boom", 500)
    media.session_started("audio")
    media.session_started("video")
    media.first_frame(40.0)  # past the last bound: +Inf
    media.worker_died("audio")
    media.session_ended(LiveSessionStats("audio", 500, 480, 0, 2, hist(b0_001=500), 12.0), EndReason.WORKER_DIED)
    live_media = [LiveSessionStats("video", 7, 7, 0, 0, None, 1.5)]

    return snapshot(app, live_app, 12.0), snapshot(media, live_media, 250.0)


def test_counters_to_a_scrape_exact_values():
    s = scrape(list(two_engines()), STATUS)

    assert val(s, "rtcpool_sessions_live", stream="video") == 2  # one live in each process
    assert val(s, "rtcpool_sessions_live", stream="audio") == 0
    assert val(s, "rtcpool_sessions_started_total", stream="video") == 3
    assert val(s, "rtcpool_sessions_started_total", stream="audio") == 1

    # ended + live, both processes
    assert val(s, "rtcpool_frames_total", direction="in", stream="video") == 100 + 20 + 7
    assert val(s, "rtcpool_frames_total", direction="out", stream="video") == 90 + 19 + 7
    assert val(s, "rtcpool_frames_total", direction="in", stream="audio") == 500
    assert val(s, "rtcpool_frames_total", direction="out", stream="audio") == 480
    assert val(s, "rtcpool_frames_dropped_total", direction="in", stream="video") == 3 + 1
    assert val(s, "rtcpool_frames_dropped_total", direction="out", stream="video") == 1
    assert val(s, "rtcpool_frames_dropped_total", direction="out", stream="audio") == 2
    assert val(s, "rtcpool_worker_deaths_total", stream="audio") == 1
    assert val(s, "rtcpool_worker_deaths_total", stream="video") == 0

    assert val(s, "rtcpool_offers_total", outcome="answered") == 3
    assert val(s, "rtcpool_offers_total", outcome="429") == 1
    assert val(s, "rtcpool_offers_total", outcome="503") == 1
    assert val(s, "rtcpool_offers_total", outcome="5xx") == 1
    assert val(s, "rtcpool_offers_total", outcome="4xx_bad_sdp") == 1
    assert val(s, "rtcpool_offers_total", outcome="4xx_origin_not_allowed") == 1
    assert val(s, "rtcpool_offers_total", outcome="4xx_other") == 0
    assert {dict(k[1])["outcome"] for k in s if k[0] == "rtcpool_offers_total"} == {*FIXED_OUTCOMES, "4xx_bad_sdp", "4xx_origin_not_allowed"}

    assert val(s, "rtcpool_sessions_ended_total", reason="client_closed") == 1
    assert val(s, "rtcpool_sessions_ended_total", reason="worker_died") == 1
    assert {dict(k[1])["reason"] for k in s if k[0] == "rtcpool_sessions_ended_total"} == set(END_REASONS)
    assert sum(v for k, v in s.items() if k[0] == "rtcpool_sessions_ended_total") == 2
    assert val(s, "rtcpool_session_seconds_total") == pytest.approx(10.0 + 2.5 + 12.0 + 1.5)

    # handler seconds: video = 50 calls <= 20 ms, 40 + 19 in (20, 33] ms; audio 500 <= 1 ms
    assert val(s, "rtcpool_handler_seconds_bucket", le="0.01", stream="video") == 0
    assert val(s, "rtcpool_handler_seconds_bucket", le="0.02", stream="video") == 50
    assert val(s, "rtcpool_handler_seconds_bucket", le="0.033", stream="video") == 109
    assert val(s, "rtcpool_handler_seconds_bucket", le="+Inf", stream="video") == 109
    assert val(s, "rtcpool_handler_seconds_count", stream="video") == 109
    assert val(s, "rtcpool_handler_seconds_sum", stream="video") == pytest.approx(50 * 0.02 + 59 * 0.033)
    assert val(s, "rtcpool_handler_seconds_bucket", le="0.001", stream="audio") == 500
    assert val(s, "rtcpool_handler_seconds_count", stream="audio") == 500
    les = [dict(k[1])["le"] for k in s if k[0] == "rtcpool_handler_seconds_bucket" and dict(k[1])["stream"] == "video"]
    assert len(les) == len(HANDLER_BUCKETS_S) + 1 and les[-1] == "+Inf"

    # offer -> first frame: 0.3 s, 1.0 s (the 1.0 bucket), 40 s (+Inf only)
    assert val(s, "rtcpool_offer_to_first_frame_seconds_bucket", le="0.25") == 0
    assert val(s, "rtcpool_offer_to_first_frame_seconds_bucket", le="0.5") == 1
    assert val(s, "rtcpool_offer_to_first_frame_seconds_bucket", le="1.0") == 2
    assert val(s, "rtcpool_offer_to_first_frame_seconds_bucket", le="30.0") == 2
    assert val(s, "rtcpool_offer_to_first_frame_seconds_bucket", le="+Inf") == 3
    assert val(s, "rtcpool_offer_to_first_frame_seconds_count") == 3
    assert val(s, "rtcpool_offer_to_first_frame_seconds_sum") == pytest.approx(41.3)

    # per process, never summed
    assert val(s, "rtcpool_event_loop_lag_seconds", process="app") == pytest.approx(0.012)
    assert val(s, "rtcpool_event_loop_lag_seconds", process="media-1") == pytest.approx(0.25)

    # the scheduler's view
    assert val(s, "rtcpool_worker_starts_total", stream="video") == 5
    assert val(s, "rtcpool_worker_replacements_total", stream="video") == 2
    assert val(s, "rtcpool_worker_starts_total", stream="audio") == 2
    assert val(s, "rtcpool_pool_workers", stream="video", state="idle") == 1
    assert val(s, "rtcpool_pool_workers", stream="video", state="busy") == 1
    assert val(s, "rtcpool_pool_workers", stream="video", state="starting") == 1
    assert val(s, "rtcpool_pool_workers", stream="audio", state="idle") == 2
    assert val(s, "rtcpool_slots_used", stream="video") == 2
    assert val(s, "rtcpool_slots_limit", stream="video") == 2
    assert ("rtcpool_slots_limit", (("stream", "audio"),)) not in s  # no concurrency_limit: no limit series
    # the waiting room
    assert val(s, "rtcpool_queue_waiting", stream="video") == 3
    assert val(s, "rtcpool_queue_admitted", stream="video") == 1
    assert val(s, "rtcpool_queue_waiting", stream="audio") == 0


def test_types_of_the_families():
    assert families(list(two_engines()), STATUS) == {
        "rtcpool_sessions_live": "gauge",
        "rtcpool_sessions_started": "counter",
        "rtcpool_frames": "counter",
        "rtcpool_frames_dropped": "counter",
        "rtcpool_worker_deaths": "counter",
        "rtcpool_handler_seconds": "histogram",
        "rtcpool_offers": "counter",
        "rtcpool_sessions_ended": "counter",
        "rtcpool_session_seconds": "counter",
        "rtcpool_offer_to_first_frame_seconds": "histogram",
        "rtcpool_event_loop_lag_seconds": "gauge",
        "rtcpool_failovers": "counter",
        "rtcpool_failover_seconds": "histogram",
        "rtcpool_restarts_refused": "counter",
        "rtcpool_snapshots": "counter",
        "rtcpool_worker_starts": "counter",
        "rtcpool_worker_replacements": "counter",
        "rtcpool_pool_workers": "gauge",
        "rtcpool_slots_used": "gauge",
        "rtcpool_slots_limit": "gauge",
        "rtcpool_queue_waiting": "gauge",
        "rtcpool_queue_admitted": "gauge",
    }


def test_render_of_one_engine_equals_render_of_its_merge_and_merge_sums():
    a, b = two_engines()
    assert scrape([a, b], STATUS) == scrape([merge([a, b])], STATUS)
    m = merge([a, b])
    assert m.streams["video"].frames_in == a.streams["video"].frames_in + b.streams["video"].frames_in
    assert m.first_frame.count == 3 and m.loop_lag_s == (("app", 0.012), ("media-1", 0.25))
    assert merge([]) == merge([EngineMetrics()]) == EngineMetrics(offers=dict.fromkeys(FIXED_OUTCOMES, 0))


def test_a_session_ending_moves_its_counts_without_a_counter_going_back():
    c = EngineCounters()
    c.session_started("video")
    live = LiveSessionStats("video", 30, 28, 2, 1, hist(b0_005=28), 4.0)
    before = scrape([snapshot(c, [live], 0.0)])
    c.session_ended(live, EndReason.TIME_LIMIT)
    after = scrape([snapshot(c, [], 0.0)])
    for name in ("rtcpool_frames_total", "rtcpool_frames_dropped_total", "rtcpool_handler_seconds_bucket", "rtcpool_session_seconds_total"):
        assert {k: v for k, v in after.items() if k[0] == name} == {k: v for k, v in before.items() if k[0] == name}
    assert val(before, "rtcpool_sessions_live", stream="video") == 1
    assert val(after, "rtcpool_sessions_live", stream="video") == 0
    assert val(after, "rtcpool_sessions_ended_total", reason="time_limit") == 1


def test_nothing_yet_and_no_scheduler():
    s = scrape([snapshot(EngineCounters(), [], 0.0)], None)
    assert {k[0] for k in s} == {
        "rtcpool_offers_total",
        "rtcpool_sessions_ended_total",
        "rtcpool_session_seconds_total",
        "rtcpool_offer_to_first_frame_seconds_bucket",
        "rtcpool_offer_to_first_frame_seconds_count",
        "rtcpool_offer_to_first_frame_seconds_sum",
        "rtcpool_event_loop_lag_seconds",
        "rtcpool_failovers_total",
        "rtcpool_failover_seconds_bucket",
        "rtcpool_failover_seconds_count",
        "rtcpool_failover_seconds_sum",
        "rtcpool_restarts_refused_total",
        "rtcpool_snapshots_total",
    }
    assert all(v == 0 for v in s.values())
    # the scheduler's streams are known even before any session: zeros for them
    s = scrape([], STATUS)
    assert val(s, "rtcpool_sessions_live", stream="audio") == 0
    assert val(s, "rtcpool_handler_seconds_count", stream="audio") == 0


@pytest.mark.parametrize(
    ("kind", "status", "label"),
    [
        ("answered", None, "answered"),
        ("answered", 200, "answered"),
        ("concurrency_limit_reached", 429, "429"),
        ("too_many_pending_offers", 429, "429"),
        ("offer_rate_limited", 429, "429"),
        ("draining", 503, "503"),
        ("scheduler_unavailable", 503, "503"),
        ("whatever", 503, "503"),
        ("internal", 500, "5xx"),
        ("bad_sdp", None, "4xx_bad_sdp"),
        ("unknown_stream", 404, "4xx_unknown_stream"),
        ("bad_sdp", 400, "4xx_bad_sdp"),
        ("Bad SDP!", 400, "4xx_bad_sdp"),
        ('x"} evil{a="1', 400, "4xx_x___evil_a__1"),
        ("", 400, "4xx_other"),
        ("___", 400, "4xx_other"),
        ("other", 400, "4xx_other"),
        ("a" * 100, 400, "4xx_" + "a" * M.MAX_REASON_CHARS),
    ],
)
def test_offer_outcome_labels(kind, status, label):
    assert outcome_label(kind, status) == label
    assert re.fullmatch(r"[a-z0-9_]+", label)


def test_a_hostile_stream_of_reasons_cannot_grow_the_label_set():
    a, b = EngineCounters("a"), EngineCounters("b")
    for i in range(1000):
        assert a.offer_outcome(f"reason_{i}", 400) in a.offers
        b.offer_outcome(f"other_reason_{i}", 400)
    assert len(a.offers) == MAX_OFFER_OUTCOMES
    assert sum(a.offers.values()) == 1000
    assert a.offers["4xx_other"] == 1000 - (MAX_OFFER_OUTCOMES - len(FIXED_OUTCOMES))
    # each engine capped, and their merge capped again, with every offer still counted once
    s = scrape([snapshot(a, [], 0.0), snapshot(b, [], 0.0)])
    outcomes = {k: v for k, v in s.items() if k[0] == "rtcpool_offers_total"}
    assert len(outcomes) == MAX_OFFER_OUTCOMES
    assert sum(outcomes.values()) == 2000
    # a known label keeps counting after the cap is reached
    a.offer_outcome("answered")
    assert a.offers["answered"] == 1


def test_stream_labels_are_capped_too():
    c = EngineCounters()
    for i in range(MAX_STREAMS + 10):
        c.session_started(f"s{i}")
    live = [LiveSessionStats(f"x{i}", 1) for i in range(3)]
    m = snapshot(c, live, 0.0)
    assert len(m.streams) == MAX_STREAMS + 1  # the first MAX_STREAMS and the rest as one
    assert m.streams[STREAM_OTHER].sessions_started == 10
    assert m.streams[STREAM_OTHER].sessions_live == 3 and m.streams[STREAM_OTHER].frames_in == 3


@pytest.mark.parametrize("reason", list(EndReason))
def test_every_end_reason_is_counted_as_itself(reason):
    c = EngineCounters()
    assert c.session_ended(LiveSessionStats("s", 1), reason) == reason.value
    assert c.sessions_ended == {reason.value: 1}
    assert reason.value in END_REASONS
    assert type(next(iter(c.sessions_ended))) is str  # plain labels: they merge across processes


def test_end_reasons_are_the_enum_in_order():
    assert END_REASONS == tuple(r.value for r in EndReason)
    assert END_REASONS[-1] == "other"


def test_first_frame_buckets_are_le():
    c = EngineCounters()
    for bound in OFFER_TO_FIRST_FRAME_BUCKETS_S:
        c.first_frame(bound)
    assert c.first_frame_counts == [1] * len(OFFER_TO_FIRST_FRAME_BUCKETS_S) + [0]


def test_engine_metrics_pickle_round_trip():
    # a media process returns its snapshot over Ray
    for m in (*two_engines(), merge(two_engines()), EngineMetrics()):
        back = pickle.loads(pickle.dumps(m))
        assert back == m and type(back) is EngineMetrics
        assert scrape([back], STATUS) == scrape([m], STATUS)


def test_snapshot_is_not_changed_by_later_counting():
    c = EngineCounters()
    c.offer_outcome("answered")
    m = snapshot(c, [], 0.0)
    c.offer_outcome("answered")
    c.first_frame(0.2)
    assert m.offers["answered"] == 1 and m.first_frame.count == 0


# --- the Grafana dashboard in docs/ --------------------------------------------------------------

METRIC_RE = re.compile(r"\brtcpool_[a-z_]+\b")


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) of every query in the dashboard: panels' targets and variables."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [(panel["title"], t["expr"]) for panel in board["panels"] for t in panel.get("targets", [])]
    exprs += [(f"${v['name']}", v["definition"]) for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_dashboard_uses_only_metrics_render_emits_and_shows_them_all():
    emitted = {k[0] for k in scrape(list(two_engines()), STATUS)}
    used = {name for _, expr in dashboard_exprs() for name in METRIC_RE.findall(expr)}
    assert used, "the dashboard queries no rtcpool metric"
    assert used <= emitted, f"not emitted by render(): {sorted(used - emitted)}"
    on_panels = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    assert set(families(list(two_engines()), STATUS)) <= on_panels


def test_dashboard_shape():
    board = json.loads(DASHBOARD.read_text())
    assert board["schemaVersion"] >= 36 and board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in board["panels"] if p["type"] != "row"}
    for want in ("Live sessions", "Offers", "Frames", "Handler", "first frame", "Event-loop lag", "Pool", "Slots"):
        assert any(want.lower() in t.lower() for t in titles), f"no panel on {want}"
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == "${datasource}" and t["refId"]
    quantiles = [expr for _, expr in dashboard_exprs() if "histogram_quantile" in expr]
    assert any("rtcpool_handler_seconds_bucket" in e and "0.95" in e for e in quantiles)
    assert any("rtcpool_handler_seconds_bucket" in e and "0.5" in e for e in quantiles)
    assert any("rtcpool_offer_to_first_frame_seconds_bucket" in e and "0.95" in e for e in quantiles)
