"""What ``GET /metrics`` says: rtcpool's Prometheus metrics, from counters the code keeps anyway.

Three layers, so that nothing is added to the per-frame path:

* :class:`EngineCounters`: one per engine (the app process's, each media process's). The
  engine bumps it at offer and session events (an offer answered or refused, a session
  started, its first processed frame, its end, a worker death), never per frame. It is
  owned by the engine's event loop, which is the only thread that bumps or reads it: no lock.
* :func:`snapshot`: at scrape time, those counters plus what the live sessions count anyway
  (frames, drops, the handler histogram their worker reports on the channel) and the
  engine's last event-loop lag, as a frozen :class:`EngineMetrics`. A media process returns
  it over Ray (plain dataclasses, dicts and tuples: it pickles); :func:`merge` sums them.
* :func:`render`: the Prometheus text exposition of the engines and of the scheduler's
  ``status()`` (pools, slots), from a collector on a registry of its own (never the global
  one: several gateways may live in one process, tests do).

A live session's frames count in its engine's totals from the first scrape on and move to
the ended totals when it ends, so ``frames_total`` and ``session_seconds_total`` rise
smoothly rather than jumping at each session's end.

Labels are bounded: ``stream`` is one of the app's stream events (never a client's string,
and capped all the same), an offer's outcome one of a capped set, a session's end reason
one of :data:`END_REASONS`.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from runtime.control.messages import SchedulerStatus, status_json
from runtime.errors import EndReason
from workers.link.wire import HANDLER_BUCKETS_S, HandlerHist

PREFIX = "rtcpool_"

# --- offers ------------------------------------------------------------------------------------
OUTCOME_ANSWERED = "answered"
OUTCOME_QUEUED = "queued"  # a full stream's offer took a place in its line (202)
OUTCOME_429 = "429"  # refused for now: concurrency_limit_reached, a per-address limit
OUTCOME_503 = "503"  # refused by this server's state: draining, no worker, scheduler away
OUTCOME_5XX = "5xx"  # any other server error
OUTCOME_4XX_PREFIX = "4xx_"  # a client's mistake, by its JSON reason: "4xx_bad_sdp"
OUTCOME_4XX_OTHER = "4xx_other"  # a 4xx reason past the cap, or one that is not an identifier
# exported from the start, at 0, so rate() over them has a first sample before the first event
FIXED_OUTCOMES = (OUTCOME_ANSWERED, OUTCOME_QUEUED, OUTCOME_429, OUTCOME_503, OUTCOME_5XX, OUTCOME_4XX_OTHER)
# Distinct outcome labels an engine (and the merge of engines) keeps, fixed ones included.
# rtcpool has ~25 4xx reasons today; the cap is what keeps a bug or a reason built from a
# client's input from making one series per request.
MAX_OFFER_OUTCOMES = 40
CLIENT_ERROR = 400  # what a refusal counted without its HTTP status is taken for
MAX_REASON_CHARS = 40  # a 4xx reason label longer than this is cut
_REASON_CHARS = re.compile(r"[^a-z0-9_]")
# --- sessions ----------------------------------------------------------------------------------
END_REASON_OTHER = EndReason.OTHER.value
# how sessions end: the engine counts the EndReason a session closed with, never its text
END_REASONS: tuple[str, ...] = tuple(reason.value for reason in EndReason)
MAX_STREAMS = 256  # stream labels an engine keeps; an app has a handful of stream events
STREAM_OTHER = "_other"  # the label of streams past MAX_STREAMS (never an event id: ids are identifiers)

# Upper bounds (seconds) of the offer -> first processed frame histogram: ICE on a LAN takes
# ~0.1 s, a worker connect a few ms, a cold worker start seconds; CONNECT_TIMEOUT_S is 15 s.
OFFER_TO_FIRST_FRAME_BUCKETS_S: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 15.0, 30.0)

MS_PER_S = 1000.0


class FailoverCause(StrEnum):
    """Why a session changed worker or media process (docs/failover.md): a label."""

    WORKER_DIED = "worker_died"  # its worker's link closed under it (killed, crashed)
    WORKER_MEMORY = "worker_memory"  # its worker passed pool.worker_memory_limit_mb
    RESUMED = "resumed"  # its client re-offered after its media process died (or its network changed)


FAILOVER_CAUSES: tuple[str, ...] = tuple(c.value for c in FailoverCause)
# Upper bounds (seconds) of the failover gap: a pre-warmed worker takes over in ~0.1-0.5 s, a
# cold start seconds; a client's resume waits for its silence detection first.
FAILOVER_BUCKETS_S: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class Histogram:
    """Observations over fixed upper bounds (inclusive, Prometheus' ``le``): ``counts`` per
    bucket, not cumulative, with +Inf last; ``sum`` of the observed values."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float = 0.0

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> Histogram:
        return cls(bounds, (0,) * (len(bounds) + 1))

    @classmethod
    def of_handler(cls, hist: HandlerHist | None) -> Histogram:
        if hist is None:
            return cls.empty(HANDLER_BUCKETS_S)
        return cls(HANDLER_BUCKETS_S, hist.counts, hist.sum_s)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def __add__(self, other: Histogram) -> Histogram:
        if other.bounds != self.bounds:
            raise ValueError("histograms of different buckets cannot be added")
        return Histogram(self.bounds, tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)), self.sum + other.sum)

    def exposition(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, +Inf last, as HistogramMetricFamily takes them."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((floatToGoString(bound), float(total)))
        return out


EMPTY_HANDLER = Histogram.empty(HANDLER_BUCKETS_S)
EMPTY_FIRST_FRAME = Histogram.empty(OFFER_TO_FIRST_FRAME_BUCKETS_S)
EMPTY_FAILOVER = Histogram.empty(FAILOVER_BUCKETS_S)


@dataclass(frozen=True)
class LiveSessionStats:
    """What a session has counted so far: read from a live session at scrape time, and from
    an ending one for :meth:`EngineCounters.session_ended`. ``in`` is client -> handler,
    ``out`` handler -> client; ``handler_hist`` is its channel's ``handler_hist``."""

    stream_id: str
    frames_in: int = 0
    frames_out: int = 0
    dropped_in: int = 0
    dropped_out: int = 0
    handler_hist: HandlerHist | None = None
    seconds: float = 0.0  # since the session began (its offer)


@dataclass(frozen=True)
class StreamMetrics:
    """One stream event's share of an engine's metrics (ended and live sessions together)."""

    sessions_live: int = 0
    sessions_started: int = 0
    frames_in: int = 0
    frames_out: int = 0
    dropped_in: int = 0
    dropped_out: int = 0
    worker_deaths: int = 0
    handler: Histogram = EMPTY_HANDLER

    def __add__(self, other: StreamMetrics) -> StreamMetrics:
        return StreamMetrics(
            self.sessions_live + other.sessions_live,
            self.sessions_started + other.sessions_started,
            self.frames_in + other.frames_in,
            self.frames_out + other.frames_out,
            self.dropped_in + other.dropped_in,
            self.dropped_out + other.dropped_out,
            self.worker_deaths + other.worker_deaths,
            self.handler + other.handler,
        )


@dataclass(frozen=True)
class EngineMetrics:
    """An engine's metrics at one instant (or several engines', merged). Crosses Ray from a
    media process to the front: plain values only."""

    streams: Mapping[str, StreamMetrics] = field(default_factory=dict)
    offers: Mapping[str, int] = field(default_factory=dict)  # by outcome label
    sessions_ended: Mapping[str, int] = field(default_factory=dict)  # by END_REASONS label
    session_seconds: float = 0.0  # ended sessions' durations plus the live ones' so far
    first_frame: Histogram = EMPTY_FIRST_FRAME  # offer -> first processed frame
    loop_lag_s: tuple[tuple[str, float], ...] = ()  # (process, seconds) per engine
    failovers: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(FAILOVER_CAUSES, 0))  # by FailoverCause label
    failover_seconds: Histogram = EMPTY_FAILOVER  # worker death (or resume offer) -> streaming again
    restarts_refused: int = 0  # sessions ended instead of restarted (pool.max_restarts)
    snapshots: int = 0  # handler snapshots the media processes kept


@dataclass
class _StreamTotals:
    """Counts of one stream's ended sessions (and its starts and worker deaths)."""

    sessions_started: int = 0
    frames_in: int = 0
    frames_out: int = 0
    dropped_in: int = 0
    dropped_out: int = 0
    worker_deaths: int = 0
    handler: Histogram = EMPTY_HANDLER


@dataclass
class EngineCounters:
    """An engine's event counters (see the module's docstring). ``process`` names the engine
    in ``event_loop_lag_seconds`` ("app", or a media process's id)."""

    process: str = "app"
    offers: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FIXED_OUTCOMES, 0))
    sessions_ended: dict[str, int] = field(default_factory=dict)
    session_seconds: float = 0.0  # of ended sessions
    first_frame_counts: list[int] = field(default_factory=lambda: [0] * (len(OFFER_TO_FIRST_FRAME_BUCKETS_S) + 1))
    first_frame_sum_s: float = 0.0
    streams: dict[str, _StreamTotals] = field(default_factory=dict)
    failovers: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILOVER_CAUSES, 0))
    failover_counts: list[int] = field(default_factory=lambda: [0] * (len(FAILOVER_BUCKETS_S) + 1))
    failover_sum_s: float = 0.0
    restarts_refused: int = 0
    snapshots: int = 0

    def failover(self, stream_id: str, cause: FailoverCause, seconds: float) -> None:
        """A session went on after ``cause``, ``seconds`` after it struck."""
        self.failovers[cause.value] += 1
        self.failover_counts[bisect.bisect_left(FAILOVER_BUCKETS_S, seconds)] += 1
        self.failover_sum_s += seconds

    def restart_refused(self, stream_id: str) -> None:
        """A session's workers died too often (pool.max_restarts): it ended instead."""
        self.restarts_refused += 1

    def snapshot_taken(self) -> None:
        self.snapshots += 1

    def offer_outcome(self, kind: str, status: int | None = None) -> str:
        """An offer was answered (``kind`` "answered") or refused (``kind`` its JSON reason,
        ``status`` its HTTP status: the front's, runtime/front/statuses.py, the one table of
        them; a refusal without one counts as a client's 4xx).
        Returns the outcome label it counted under."""
        label = outcome_label(kind, status)
        if label not in self.offers and len(self.offers) >= MAX_OFFER_OUTCOMES:
            label = OUTCOME_4XX_OTHER
        self.offers[label] = self.offers.get(label, 0) + 1
        return label

    def session_started(self, stream_id: str) -> None:
        """A session of ``stream_id`` took its slot and worker (its offer is being answered)."""
        self._stream(stream_id).sessions_started += 1

    def first_frame(self, seconds: float) -> None:
        """A session's first processed frame, ``seconds`` after its offer arrived."""
        self.first_frame_counts[bisect.bisect_left(OFFER_TO_FIRST_FRAME_BUCKETS_S, seconds)] += 1
        self.first_frame_sum_s += seconds

    def worker_died(self, stream_id: str) -> None:
        """A session's worker went away without being asked (its link closed under it)."""
        self._stream(stream_id).worker_deaths += 1

    def session_ended(self, final: LiveSessionStats, reason: EndReason) -> str:
        """A session ended: its last counts move to the totals, counted under ``reason``.
        Returns the label counted."""
        label = EndReason(reason).value
        self.sessions_ended[label] = self.sessions_ended.get(label, 0) + 1
        self.session_seconds += final.seconds
        t = self._stream(final.stream_id)
        t.frames_in += final.frames_in
        t.frames_out += final.frames_out
        t.dropped_in += final.dropped_in
        t.dropped_out += final.dropped_out
        if final.handler_hist is not None and final.handler_hist.count:
            t.handler = t.handler + Histogram.of_handler(final.handler_hist)
        return label

    def _stream(self, stream_id: str) -> _StreamTotals:
        t = self.streams.get(stream_id)
        if t is None:
            if len(self.streams) >= MAX_STREAMS:
                stream_id = STREAM_OTHER
                t = self.streams.get(stream_id)
            if t is None:
                t = self.streams[stream_id] = _StreamTotals()
        return t


def outcome_label(kind: str, status: int | None = None) -> str:
    """The ``offers_total`` label of an offer's outcome (before the cap)."""
    if kind in (OUTCOME_ANSWERED, OUTCOME_QUEUED):
        return kind
    if status is None:
        status = CLIENT_ERROR
    if status == 429:
        return OUTCOME_429
    if status == 503:
        return OUTCOME_503
    if status >= 500:
        return OUTCOME_5XX
    reason = _REASON_CHARS.sub("_", str(kind).lower())[:MAX_REASON_CHARS].strip("_")
    return OUTCOME_4XX_PREFIX + reason if reason and reason != "other" else OUTCOME_4XX_OTHER


def snapshot(counters: EngineCounters, live: Iterable[LiveSessionStats], loop_lag_ms: float) -> EngineMetrics:
    """An engine's metrics now: its counters plus its live sessions' counts (``live``, one
    per session not yet ended) and its last event-loop lag (EngineLoad.loop_lag_ms)."""
    acc: dict[str, StreamMetrics] = {
        sid: StreamMetrics(0, t.sessions_started, t.frames_in, t.frames_out, t.dropped_in, t.dropped_out, t.worker_deaths, t.handler)
        for sid, t in counters.streams.items()
    }
    seconds = counters.session_seconds
    for s in live:
        stream_id = s.stream_id if s.stream_id in acc or len(acc) < MAX_STREAMS else STREAM_OTHER
        add = StreamMetrics(1, 0, s.frames_in, s.frames_out, s.dropped_in, s.dropped_out, 0, Histogram.of_handler(s.handler_hist))
        acc[stream_id] = acc[stream_id] + add if stream_id in acc else add
        seconds += s.seconds
    return EngineMetrics(
        streams=acc,
        offers=dict(counters.offers),
        sessions_ended=dict(counters.sessions_ended),
        session_seconds=seconds,
        first_frame=Histogram(OFFER_TO_FIRST_FRAME_BUCKETS_S, tuple(counters.first_frame_counts), counters.first_frame_sum_s),
        loop_lag_s=((counters.process, loop_lag_ms / MS_PER_S),),
        failovers=dict(counters.failovers),
        failover_seconds=Histogram(FAILOVER_BUCKETS_S, tuple(counters.failover_counts), counters.failover_sum_s),
        restarts_refused=counters.restarts_refused,
        snapshots=counters.snapshots,
    )


def merge(snapshots: Iterable[EngineMetrics]) -> EngineMetrics:
    """Several engines' metrics as one: sums, and each engine's own event-loop lag."""
    streams: dict[str, StreamMetrics] = {}
    offers: dict[str, int] = {}
    ended: dict[str, int] = {}
    seconds = 0.0
    first = EMPTY_FIRST_FRAME
    lags: list[tuple[str, float]] = []
    failovers: dict[str, int] = dict.fromkeys(FAILOVER_CAUSES, 0)
    failover_seconds = EMPTY_FAILOVER
    refused = kept = 0
    for m in snapshots:
        for sid, sm in m.streams.items():
            streams[sid] = streams[sid] + sm if sid in streams else sm
        for label, n in m.offers.items():
            offers[label] = offers.get(label, 0) + n
        for label, n in m.sessions_ended.items():
            ended[label] = ended.get(label, 0) + n
        seconds += m.session_seconds
        first = first + m.first_frame
        lags.extend(m.loop_lag_s)
        for label, n in m.failovers.items():
            failovers[label] = failovers.get(label, 0) + n
        failover_seconds = failover_seconds + m.failover_seconds
        refused += m.restarts_refused
        kept += m.snapshots
    return EngineMetrics(streams, _cap_outcomes(offers), ended, seconds, first, tuple(lags), failovers, failover_seconds, refused, kept)


def _cap_outcomes(offers: dict[str, int]) -> dict[str, int]:
    """Engines cap their labels each; together they may hold more. The fixed labels stay,
    the rest are kept in name order (stable from one scrape to the next) up to the cap."""
    out = {label: offers.get(label, 0) for label in FIXED_OUTCOMES}
    for label in sorted(offers):
        if label in out:
            continue
        if len(out) < MAX_OFFER_OUTCOMES:
            out[label] = offers[label]
        else:
            out[OUTCOME_4XX_OTHER] += offers[label]
    return out


# --- exposition ----------------------------------------------------------------------------------


class _Collector(Collector):
    """One scrape's families, from values gathered before the scrape (collect() only formats)."""

    def __init__(self, engines: EngineMetrics, scheduler_status: SchedulerStatus | Mapping[str, Any] | None) -> None:
        self.m = engines
        self.events: Mapping[str, Any] = (status_json(scheduler_status) or {}).get("events") or {}

    def collect(self) -> Iterator[Metric]:
        yield from self._engine_families()
        yield from self._scheduler_families()

    def _engine_families(self) -> Iterator[Metric]:
        m = self.m
        streams = sorted(set(m.streams) | set(self.events))
        per = {sid: m.streams.get(sid, StreamMetrics()) for sid in streams}

        live = GaugeMetricFamily(PREFIX + "sessions_live", "Sessions live now, per stream event.", labels=["stream"])
        started = CounterMetricFamily(PREFIX + "sessions_started", "Sessions started (slot and worker taken).", labels=["stream"])
        frames = CounterMetricFamily(
            PREFIX + "frames", "Frames through sessions: in = client to handler, out = handler to client.", labels=["direction", "stream"]
        )
        dropped = CounterMetricFamily(
            PREFIX + "frames_dropped", "Frames dropped (latest-frame-wins, full rings), by direction.", labels=["direction", "stream"]
        )
        deaths = CounterMetricFamily(PREFIX + "worker_deaths", "Workers that went away under a live session.", labels=["stream"])
        handler = HistogramMetricFamily(
            PREFIX + "handler_seconds", "Duration of handler calls that take an input, measured in the worker.", labels=["stream"]
        )
        for sid, sm in per.items():
            live.add_metric([sid], sm.sessions_live)
            started.add_metric([sid], sm.sessions_started)
            frames.add_metric(["in", sid], sm.frames_in)
            frames.add_metric(["out", sid], sm.frames_out)
            dropped.add_metric(["in", sid], sm.dropped_in)
            dropped.add_metric(["out", sid], sm.dropped_out)
            deaths.add_metric([sid], sm.worker_deaths)
            handler.add_metric([sid], sm.handler.exposition(), sm.handler.sum)
        yield from (live, started, frames, dropped, deaths, handler)

        offers = CounterMetricFamily(PREFIX + "offers", "Offers, by outcome: answered, 429, 503, 5xx, 4xx_<reason>.", labels=["outcome"])
        for label in sorted({*FIXED_OUTCOMES, *m.offers}):
            offers.add_metric([label], m.offers.get(label, 0))
        yield offers

        ended = CounterMetricFamily(PREFIX + "sessions_ended", "Sessions ended, by reason.", labels=["reason"])
        for label in END_REASONS:
            ended.add_metric([label], m.sessions_ended.get(label, 0))
        yield ended

        yield CounterMetricFamily(PREFIX + "session_seconds", "Seconds of sessions, ended and live.", value=m.session_seconds)

        first = HistogramMetricFamily(PREFIX + "offer_to_first_frame_seconds", "Time from an offer to its session's first processed frame.")
        first.add_metric([], m.first_frame.exposition(), m.first_frame.sum)
        yield first

        lag = GaugeMetricFamily(PREFIX + "event_loop_lag_seconds", "How late the engine's event loop ran a timer, last sample.", labels=["process"])
        for process, seconds in m.loop_lag_s:
            lag.add_metric([process], seconds)
        yield lag

        failovers = CounterMetricFamily(PREFIX + "failovers", "Sessions that went on after a crash, by cause.", labels=["cause"])
        for label in FAILOVER_CAUSES:
            failovers.add_metric([label], m.failovers.get(label, 0))
        yield failovers
        gap = HistogramMetricFamily(PREFIX + "failover_seconds", "From a crash (or a resume offer) to the session streaming again.")
        gap.add_metric([], m.failover_seconds.exposition(), m.failover_seconds.sum)
        yield gap
        yield CounterMetricFamily(
            PREFIX + "restarts_refused", "Sessions ended rather than restarted again (pool.max_restarts).", value=m.restarts_refused
        )
        yield CounterMetricFamily(PREFIX + "snapshots", "Handler snapshots kept for failover.", value=m.snapshots)

    def _scheduler_families(self) -> Iterator[Metric]:
        # deployment-wide (the scheduler's own counts): every front that serves /metrics
        # reports the same values, so a dashboard takes max, not sum, across instances
        starts = CounterMetricFamily(PREFIX + "worker_starts", "Workers the pool started.", labels=["stream"])
        replaced = CounterMetricFamily(PREFIX + "worker_replacements", "Workers the pool replaced (died, retired, unhealthy).", labels=["stream"])
        workers = GaugeMetricFamily(PREFIX + "pool_workers", "Workers of a stream's pool, by state.", labels=["stream", "state"])
        used = GaugeMetricFamily(PREFIX + "slots_used", "Slots (concurrency_limit) held by leases.", labels=["stream"])
        limit = GaugeMetricFamily(PREFIX + "slots_limit", "A stream's concurrency_limit (absent: none).", labels=["stream"])
        waiting = GaugeMetricFamily(PREFIX + "queue_waiting", "Users waiting in a stream's line (the waiting room).", labels=["stream"])
        admitted = GaugeMetricFamily(PREFIX + "queue_admitted", "Users admitted from the line whose slot is held for their offer.", labels=["stream"])
        for sid in sorted(self.events):
            ev = self.events[sid]
            starts.add_metric([sid], ev.get("started_total", 0))
            replaced.add_metric([sid], ev.get("replaced_total", 0))
            workers.add_metric([sid, "idle"], ev.get("idle", 0))
            workers.add_metric([sid, "busy"], ev.get("active", 0))
            workers.add_metric([sid, "starting"], ev.get("starting", 0))
            used.add_metric([sid], ev.get("leases", 0))
            if ev.get("limit") is not None:
                limit.add_metric([sid], ev["limit"])
            waiting.add_metric([sid], ev.get("queue", 0))
            admitted.add_metric([sid], ev.get("admitted", 0))
        yield from (starts, replaced, workers, used, limit, waiting, admitted)


def render(engines: Iterable[EngineMetrics], scheduler_status: SchedulerStatus | Mapping[str, Any] | None) -> tuple[bytes, str]:
    """The body and content type of a ``/metrics`` answer: the engines' metrics (merged) and
    the scheduler's pools (``Scheduler.status()``; None when it did not answer)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(merge(engines), scheduler_status))
    return generate_latest(registry), CONTENT_TYPE_LATEST


__all__ = [
    "EngineCounters",
    "EngineMetrics",
    "LiveSessionStats",
    "StreamMetrics",
    "Histogram",
    "snapshot",
    "merge",
    "render",
    "outcome_label",
]
