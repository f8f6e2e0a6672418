"""Benchmark the worker pool without codecs: FrameChannel hops and GIL-bound throughput.

N sessions (1, 2, 4) each push 640x480x3 uint8 RGB frames through a FrameChannel to a real
``workers.process.actor.Worker`` Ray actor (one worker per session), which runs the handler on the
newest frame and sends the result back. Two measurements per N:

* **hop latency** (no-op handler, returns its frame): ping-pong. Each session sends one
  frame and waits for the processed frame to come back into this process (copied out of
  the slot, as the gateway's encoder would) before it sends the next. p50/p99 of that time.
* **throughput** (handler holding the GIL for ~20 ms: a pure-Python loop, its count timed
  here at start-up; the table shows what a frame really cost in a worker): every session offers frames at a fixed
  ``OFFER_FPS``, like a camera; frames are latest-frame-wins (a busy handler makes older
  frames drop). Processed frames/s in total, and offer -> result latency.

Baseline: the same handlers on threads in ONE process, one thread per session, fed the same
way (latest-frame-wins, a new array per frame as a decoder makes) -- how a single-process
server runs them. All sessions are driven from one thread of this process with poll(2) (pool)
or a result queue (threads), so the driver itself adds no GIL contention to the pool case.

    python scripts/bench_pool.py            # full run, ~2.5 min
    python scripts/bench_pool.py --quick    # ~1 min

Prints a Markdown table and writes bench-results/bench_pool.json and bench_pool.png.
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import secrets
import select
import sys
import threading
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common as bc  # noqa: E402
import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from workers.link.messages import WorkerInfo

SESSION_COUNTS = (1, 2, 4)  # concurrent sessions per configuration
FRAME_SHAPE = (480, 640, 3)  # H, W, C of every frame (RGB24, 921,600 bytes)
BUSY_MS = 20.0  # GIL-holding handler: pure-Python work per frame, in ms
OFFER_FPS = 30.0  # throughput run: frames offered per session per second
RUN_S = 10.0  # measured seconds per configuration (full run)
QUICK_RUN_S = 3.0  # measured seconds per configuration (--quick)
WARMUP_S = 1.0  # seconds run before measuring, per configuration
QUICK_WARMUP_S = 0.5
CONNECT_TIMEOUT_S = 10.0  # bench -> worker socket connect + ready
SESSION_TOKEN_BYTES = 16  # a session token: 128 random bits, as the scheduler mints them
WORKER_START_TIMEOUT_S = 120.0  # Ray actor start
STALL_TIMEOUT_S = 5.0  # no result for this long aborts a run
WINDOWS = 3  # a run's measured time is cut in this many windows; the quiet ones are reported
WAIT_SLICE_S = 0.1  # ping-pong: longest single wait for a result (the stall check runs between)
RETRY_SLICE_S = 0.001  # ping-pong: wait while a send waits to be retried
QUIET_THRESHOLD_PCT = 30.0  # before each configuration, wait for the machine to be this idle (100 = one core)
QUIET_WAIT_MAX_S = 10.0  # ... but no longer than this
QUICK_QUIET_WAIT_MAX_S = 1.0  # (--quick)
TARGET_HOP_P50_MS = 0.6
TARGET_HOP_P99_MS = 2.0
TARGET_THROUGHPUT_RATIO = 1.7  # pool / threads frames/s at N=4 with the busy handler
RAY_NICENESS_ENV = "RAY_worker_niceness"  # Ray's own setting; its default is 15
RESULT_JSON = "bench_pool.json"
RESULT_PNG = "bench_pool.png"


def test_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, FRAME_SHAPE, dtype=np.uint8)


# --- drivers: send a frame to session i, collect (i, pts) of processed frames ----------------


class PoolDriver:
    """Sessions on real worker actors, over FrameChannels, polled from this thread."""

    name = "pool"

    def __init__(self, endpoints: list[tuple[str, Any]], args: list[Any]) -> None:
        import ray

        from tests.workers.link.blocking import connect_worker
        from workers.link.wire import Hello

        self.channels = []
        for ep, actor in endpoints:
            # one token opens one session: arm a fresh one, as the scheduler does per lease
            token = secrets.token_hex(SESSION_TOKEN_BYTES)
            ray.get(actor.arm.remote(token), timeout=CONNECT_TIMEOUT_S)
            hello = Hello(f"bench-{uuid.uuid4().hex[:8]}", "", "", "send-receive", "video", args=list(args), args_set=True, token=token)
            ch, _ready = connect_worker(ep, hello, CONNECT_TIMEOUT_S)
            self.channels.append(ch)
        self.poller = select.poll()
        self.by_fd: dict[int, int] = {}
        for i, ch in enumerate(self.channels):
            fd = ch.sock.fileno()
            self.by_fd[fd] = i
            self.poller.register(fd, select.POLLIN)
        # the worker answers in I420 (a 1-D payload); RGB24 is the larger form a slot may hold
        self.out = [np.empty(int(np.prod(FRAME_SHAPE)), np.uint8) for _ in self.channels]

    def send(self, i: int, frame: np.ndarray, pts: int) -> bool:
        return self.channels[i].send_video(frame, pts)

    def wait(self, timeout_s: float) -> list[tuple[int, int]]:
        results = []
        for fd, _ev in self.poller.poll(max(0, math.ceil(timeout_s * 1000))):
            i = self.by_fd[fd]
            ch = self.channels[i]
            ch.pump()
            if ch.closed:
                raise RuntimeError(f"session {i} closed: {ch.close_reason}")
            got = ch.take_video()
            if got is not None:
                header, view = got
                flat = view.reshape(-1)
                np.copyto(self.out[i][: flat.size], flat)  # as the gateway's encoder copies out of the slot
                ch.release_video()
                results.append((i, header.pts))
            if ch.has_backlog:
                ch.flush()
        return results

    def stats(self) -> list[dict[str, int]]:
        return [dict(vars(ch.stats)) for ch in self.channels]

    def close(self) -> None:
        for ch in self.channels:
            ch.close("benchmark done")


class ThreadDriver:
    """The same handler on one thread per session in this process (single-process server)."""

    name = "threads"

    class _Session:
        def __init__(self) -> None:
            self.cond = threading.Condition()
            self.latest: tuple[int, np.ndarray] | None = None
            self.superseded = 0
            self.stop = False

    def __init__(self, n: int, handler: Any, args: list[Any]) -> None:
        self.results: queue.SimpleQueue[tuple[int, int, np.ndarray]] = queue.SimpleQueue()
        self.sessions = [self._Session() for _ in range(n)]
        self.out = [np.empty(FRAME_SHAPE, np.uint8) for _ in range(n)]
        self.threads = [
            threading.Thread(target=self._loop, args=(i, handler, args), name=f"handler-{i}", daemon=True)
            for i in range(n)
        ]
        for t in self.threads:
            t.start()

    def _loop(self, i: int, handler: Any, args: list[Any]) -> None:
        s = self.sessions[i]
        while True:
            with s.cond:
                while s.latest is None and not s.stop:
                    s.cond.wait()
                if s.stop:
                    return
                pts, frame = s.latest  # type: ignore[misc]
                s.latest = None
            out = handler(frame, *args)
            self.results.put((i, pts, out))

    def send(self, i: int, frame: np.ndarray, pts: int) -> bool:
        f = frame.copy()  # a decoder hands over a new array per frame
        s = self.sessions[i]
        with s.cond:
            if s.latest is not None:
                s.superseded += 1
            s.latest = (pts, f)
            s.cond.notify()
        return True

    def wait(self, timeout_s: float) -> list[tuple[int, int]]:
        try:
            items = [self.results.get(timeout=max(timeout_s, 0.0))]
        except queue.Empty:
            return []
        while True:
            try:
                items.append(self.results.get_nowait())
            except queue.Empty:
                break
        out = []
        for i, pts, arr in items:
            np.copyto(self.out[i], arr)
            out.append((i, pts))
        return out

    def stats(self) -> list[dict[str, int]]:
        return [{"video_superseded": s.superseded} for s in self.sessions]

    def close(self) -> None:
        for s in self.sessions:
            with s.cond:
                s.stop = True
                s.cond.notify()
        for t in self.threads:
            t.join(5)


# --- the two measurements ------------------------------------------------------------------------


class Windows:
    """A run after its warm-up, cut into ``count`` equal windows, each with its own CPU
    accounting. This machine may be shared: only the windows with the least CPU used by
    other processes are reported, pooled (the same rule for the pool and the threads)."""

    def __init__(self, start: float, warmup_s: float, run_s: float, count: int, pids: dict[str, list[int]]) -> None:
        self.bounds = [start + warmup_s + k * run_s / count for k in range(count + 1)]
        self.seconds = run_s / count
        self.count = count
        self.pids = pids
        self.k = -1  # -1: warming up
        self.cpu: bc.CpuWindow | None = None
        self.data: list[dict[str, Any]] = [{"lat": [], "n": 0, "offered": 0, "refused": 0} for _ in range(count)]

    def tick(self, now: float) -> dict[str, Any] | None:
        """The current window's record (None while warming up or after the end)."""
        while self.k + 1 < len(self.bounds) and now >= self.bounds[self.k + 1]:
            if 0 <= self.k < self.count and self.cpu is not None:
                self.data[self.k]["cpu"] = self.cpu.stop()
            self.k += 1
            if self.k < self.count:
                self.cpu = bc.CpuWindow(self.pids)
        return self.data[self.k] if 0 <= self.k < self.count else None

    @property
    def finished(self) -> bool:
        return self.k >= self.count

    def pooled(self) -> tuple[list[int], dict[str, Any], float]:
        """The quiet windows (bench_common.quiet_windows) merged: counts and samples added,
        CPU averaged; and their total seconds."""
        ks = bc.quiet_windows([d.get("cpu", {}).get("others", 1e9) for d in self.data])
        rec: dict[str, Any] = {"lat": [], "n": 0, "offered": 0, "refused": 0}
        for k in ks:
            d = self.data[k]
            rec["lat"] += d["lat"]
            for key in ("n", "offered", "refused"):
                rec[key] += d[key]
        rec["cpu"] = bc.mean_cpu([self.data[k].get("cpu", {}) for k in ks])
        return ks, rec, self.seconds * len(ks)


def run_pingpong(driver: Any, n: int, image: np.ndarray, win: Windows) -> None:
    """Each session: send one frame, wait for its result, repeat. Hop = send -> result back."""
    pts = [0] * n
    sent_at = [0.0] * n
    unsent: set[int] = set()
    last_result = time.perf_counter()
    for i in range(n):
        sent_at[i] = time.perf_counter()
        if not driver.send(i, image, pts[i]):
            unsent.add(i)
    while True:
        now = time.perf_counter()
        cur = win.tick(now)
        if win.finished:
            break
        if now - last_result > STALL_TIMEOUT_S:
            raise RuntimeError(f"{driver.name}: no result for {STALL_TIMEOUT_S} s")
        for i in list(unsent):  # a slot was not free yet (never seen in practice): retry
            sent_at[i] = time.perf_counter()
            if driver.send(i, image, pts[i]):
                unsent.discard(i)
        for i, got in driver.wait(WAIT_SLICE_S if not unsent else RETRY_SLICE_S):
            t = time.perf_counter()
            if got != pts[i]:
                continue
            last_result = t
            if cur is not None:
                cur["lat"].append((t - sent_at[i]) * 1000.0)
                cur["n"] += 1
            pts[i] += 1
            sent_at[i] = time.perf_counter()
            if not driver.send(i, image, pts[i]):
                unsent.add(i)


def pingpong_summary(rec: dict[str, Any], seconds: float) -> dict[str, Any]:
    lat = rec["lat"]
    return {
        "round_trips_per_s": round(rec["n"] / seconds, 1),
        "hop_p50_ms": bc.percentile(lat, 50),
        "hop_p99_ms": bc.percentile(lat, 99),
        "hop_mean_ms": bc.mean(lat),
        "hop_max_ms": max(lat) if lat else None,
    }


def run_rate(driver: Any, n: int, image: np.ndarray, fps: float, win: Windows) -> None:
    """Offer ``fps`` frames/s per session (latest-frame-wins), count what comes back processed."""
    interval = 1.0 / fps
    start = time.perf_counter()
    next_due = [start + i * interval / n for i in range(n)]  # staggered, like independent cameras
    pts = [0] * n
    in_flight: list[deque[tuple[int, float]]] = [deque() for _ in range(n)]
    last_result = start
    while True:
        now = time.perf_counter()
        cur = win.tick(now)
        if win.finished:
            break
        if now - last_result > STALL_TIMEOUT_S:
            raise RuntimeError(f"{driver.name}: no result for {STALL_TIMEOUT_S} s")
        for i in range(n):
            if next_due[i] <= now:
                pts[i] += 1
                sent = time.perf_counter()
                ok = driver.send(i, image, pts[i])
                if cur is not None:
                    cur["offered"] += 1
                    cur["refused"] += 0 if ok else 1
                if ok:
                    in_flight[i].append((pts[i], sent))
                next_due[i] += interval
                if next_due[i] < now:  # fell behind (a starved driver): do not burst to catch up
                    next_due[i] = now + interval
        for i, got in driver.wait(min(next_due) - time.perf_counter()):
            t = time.perf_counter()
            last_result = t
            q = in_flight[i]
            while q and q[0][0] < got:  # superseded frames: never processed
                q.popleft()
            if q and q[0][0] == got:
                _, sent = q.popleft()
                if cur is not None:
                    cur["n"] += 1
                    cur["lat"].append((t - sent) * 1000.0)


def rate_summary(rec: dict[str, Any], seconds: float) -> dict[str, Any]:
    lat = rec["lat"]
    return {
        "offered_fps": round(rec["offered"] / seconds, 1),
        "processed_fps": round(rec["n"] / seconds, 1),
        "refused_at_send": rec["refused"],
        "latency_p50_ms": bc.percentile(lat, 50),
        "latency_p99_ms": bc.percentile(lat, 99),
    }


# --- orchestration ----------------------------------------------------------------------------


def start_workers(count: int) -> tuple[list[Any], list[WorkerInfo]]:
    import ray

    from workers.process.actor import Worker
    from workers.process.loader import make_spec

    spec = make_spec(bc.spin_frame, 0)
    # the scheduler's options for its pool workers (runtime/control/scheduler.py)
    actor_cls = ray.remote(Worker).options(max_restarts=0, max_concurrency=4)
    actors = [actor_cls.remote(spec, "bench-pool") for _ in range(count)]
    infos = ray.get([a.ready.remote() for a in actors], timeout=WORKER_START_TIMEOUT_S)
    return actors, infos


def measure(mode: str, kind: str, n: int, image: np.ndarray, iters: int, endpoints: list[tuple[str, Any]], worker_pids: list[int], run_s: float, warmup_s: float, quiet_wait_s: float) -> dict[str, Any]:
    args = [iters if kind == "busy" else 0]
    quiet = bc.wait_quiet(QUIET_THRESHOLD_PCT, quiet_wait_s)
    ray_daemons = [p for p in bc.descendants(os.getpid()) if p not in worker_pids]
    if mode == "pool":
        driver: Any = PoolDriver(endpoints[:n], args)
        pids = {"bench": [os.getpid()], "workers": worker_pids[:n], "ray": ray_daemons}
    else:
        driver = ThreadDriver(n, bc.spin_frame, args)
        pids = {"bench": [os.getpid()], "ray": ray_daemons}
    win = Windows(time.perf_counter(), warmup_s, run_s, WINDOWS, pids)
    try:
        if kind == "noop":
            run_pingpong(driver, n, image, win)
        else:
            run_rate(driver, n, image, OFFER_FPS, win)
        stats = driver.stats()
    finally:
        driver.close()
    summary = pingpong_summary if kind == "noop" else rate_summary
    ks, rec, seconds = win.pooled()
    result = summary(rec, seconds)
    cpu = rec.get("cpu", {})
    if kind == "busy" and mode == "pool" and result["processed_fps"]:
        # the work one frame really cost in a worker (this VM's speed wanders; see docs/benchmarks.md)
        result["worker_cpu_ms_per_frame"] = round(10.0 * cpu.get("workers", 0.0) / result["processed_fps"], 2)
    result.update(
        mode=mode,
        handler=kind,
        sessions=n,
        cpu_percent=cpu,
        windows_pooled=ks,
        windows=[dict(summary(r, win.seconds), cpu_percent=r.get("cpu")) for r in win.data],
        machine_busy_before_pct=quiet,
        superseded=sum(s.get("video_superseded", 0) for s in stats),
        dropped_at_producer=sum(s.get("video_dropped", 0) for s in stats),
    )
    return result


def plot(results: list[dict[str, Any]], path: Any, busy_ms: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, style in (("pool", "-"), ("threads", "--")):
        rows = [r for r in results if r["mode"] == mode and r["handler"] == "noop"]
        ns = [r["sessions"] for r in rows]
        ax1.plot(ns, [r["hop_p50_ms"] for r in rows], style + "o", label=f"{mode} p50")
        ax1.plot(ns, [r["hop_p99_ms"] for r in rows], style + "s", label=f"{mode} p99")
    ax1.axhline(TARGET_HOP_P50_MS, color="grey", lw=0.8, ls=":")
    ax1.axhline(TARGET_HOP_P99_MS, color="grey", lw=0.8, ls=":")
    ax1.set_xticks(SESSION_COUNTS)
    ax1.set_xlabel("sessions")
    ax1.set_ylabel("hop latency, ms (send -> result back)")
    ax1.set_title("no-op handler, ping-pong")
    ax1.legend(fontsize=8)
    width = 0.35
    for k, mode in enumerate(("pool", "threads")):
        rows = [r for r in results if r["mode"] == mode and r["handler"] == "busy"]
        xs = np.arange(len(rows)) + (k - 0.5) * width
        ax2.bar(xs, [r["processed_fps"] for r in rows], width, label=mode)
    rows = [r for r in results if r["mode"] == "pool" and r["handler"] == "busy"]
    ax2.plot(np.arange(len(rows)), [r["offered_fps"] for r in rows], "k_", ms=30, mew=2, label="offered")
    ax2.set_xticks(np.arange(len(rows)), [str(r["sessions"]) for r in rows])
    ax2.set_xlabel("sessions")
    ax2.set_ylabel("processed frames/s (total)")
    ax2.set_title(f"{busy_ms:.0f} ms GIL-holding handler, {OFFER_FPS:.0f} fps offered per session")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_RUN_S:.0f} s per configuration instead of {RUN_S:.0f} s")
    ap.add_argument("--busy-ms", type=float, default=BUSY_MS, help="GIL-holding work per frame, ms")
    ap.add_argument("--busy-iters", type=int, help="loop turns per frame (default: what --busy-ms takes here)")
    ap.add_argument("--fixed-rate", action="store_true",
                    help="size --busy-ms at bench_common.ITERS_PER_MS loop turns/ms instead of timing the loop here first (the default: this VM's Python speed differs between machines by up to 3x)")
    ap.add_argument("--worker-niceness", type=int, metavar="N",
                    help="start the Ray workers at this nice value (Ray's default: 15, i.e. below every normal process)")
    args = ap.parse_args(argv)
    if args.worker_niceness is not None:
        os.environ[RAY_NICENESS_ENV] = str(args.worker_niceness)  # read when ray.init starts the local Ray
    run_s = QUICK_RUN_S if args.quick else RUN_S
    warmup_s = QUICK_WARMUP_S if args.quick else WARMUP_S

    quiet_wait_s = QUICK_QUIET_WAIT_MAX_S if args.quick else QUIET_WAIT_MAX_S
    calibrate = not args.fixed_rate
    if calibrate and not args.busy_iters:
        bc.wait_quiet(QUIET_THRESHOLD_PCT, quiet_wait_s)
    iters = args.busy_iters or bc.busy_iters(args.busy_ms, calibrate)
    how = "calibrated here" if calibrate and not args.busy_iters else f"at {bc.ITERS_PER_MS} turns/ms"
    print(f"busy handler: {iters} loop turns ~ {args.busy_ms:.0f} ms ({how})", flush=True)

    import ray

    from runtime import constants as C

    t0 = time.monotonic()
    ray.init(namespace=C.RAY_NAMESPACE, include_dashboard=False, log_to_driver=True)
    actors, infos = start_workers(max(SESSION_COUNTS))
    endpoints = [(i.endpoint, a) for i, a in zip(infos, actors, strict=True)]
    worker_pids = [i.pid for i in infos]
    import psutil

    worker_nice = sorted({psutil.Process(p).nice() for p in worker_pids})
    print(f"ray + {len(infos)} workers up in {time.monotonic() - t0:.1f} s (worker nice {worker_nice}, this process {os.nice(0)})", flush=True)

    image = test_image()
    results = []
    try:
        for n in SESSION_COUNTS:
            for kind in ("noop", "busy"):
                for mode in ("pool", "threads"):
                    r = measure(mode, kind, n, image, iters, endpoints, worker_pids, run_s, warmup_s, quiet_wait_s)
                    results.append(r)
                    if kind == "noop":
                        print(f"  N={n} {mode:7s} no-op: hop p50 {bc.fmt(r['hop_p50_ms'], 3)} ms, p99 {bc.fmt(r['hop_p99_ms'], 3)} ms, {r['round_trips_per_s']} round trips/s", flush=True)
                    else:
                        print(f"  N={n} {mode:7s} busy : {r['processed_fps']} frames/s processed of {r['offered_fps']} offered, latency p50 {bc.fmt(r['latency_p50_ms'], 1)} ms", flush=True)
    finally:
        ray.shutdown()

    def pick(mode: str, kind: str, n: int) -> dict[str, Any]:
        return next(r for r in results if r["mode"] == mode and r["handler"] == kind and r["sessions"] == n)

    def ms(v: float | None, digits: int) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    rows = []
    for n in SESSION_COUNTS:
        tb = pick("threads", "busy", n)
        for mode in ("pool", "threads"):
            no, bu = pick(mode, "noop", n), pick(mode, "busy", n)
            rows.append([
                n, mode,
                ms(no["hop_p50_ms"], 3), ms(no["hop_p99_ms"], 3), f"{no['round_trips_per_s']:.0f}",
                f"{bu['offered_fps']:.0f}", f"{bu['processed_fps']:.1f}",
                f"{bu['processed_fps'] / tb['processed_fps']:.2f}x" if mode == "pool" and tb["processed_fps"] else "",
                ms(bu["latency_p50_ms"], 1), ms(bu["latency_p99_ms"], 1),
                ms(bu.get("worker_cpu_ms_per_frame"), 1) if mode == "pool" else "",
                f"{no['cpu_percent'].get('others', 0):.0f} / {bu['cpu_percent'].get('others', 0):.0f}",
            ])
    headers = [
        "sessions", "mode",
        "hop p50 ms", "hop p99 ms", "round trips/s",
        "offered fps", "processed fps", "pool/threads",
        "latency p50 ms", "latency p99 ms", "worker CPU ms/frame",
        "others CPU% (no-op / busy)",
    ]
    print()
    print("bench_pool: 640x480 RGB frames over FrameChannel to Ray worker processes (pool) vs threads in one process.")
    print(f"hop = no-op handler, ping-pong; fps/latency = {args.busy_ms:.0f} ms GIL-holding handler ({iters} loop turns), "
          f"{OFFER_FPS:.0f} fps offered per session, latest-frame-wins. Each cell: {run_s:.0f} s in {WINDOWS} windows, the "
          f"quietest ones pooled (others = CPU% of processes outside the benchmark; 100 = one core). "
          f"Workers at nice {worker_nice}, the threads' process at nice {os.nice(0)}.")
    print(bc.table(headers, rows))

    p1 = pick("pool", "noop", 1)
    p4b, t4b = pick("pool", "busy", 4), pick("threads", "busy", 4)
    ratio = p4b["processed_fps"] / t4b["processed_fps"] if t4b["processed_fps"] else 0.0
    checks = {
        f"hop p50 (N=1) <= {TARGET_HOP_P50_MS} ms": p1["hop_p50_ms"] <= TARGET_HOP_P50_MS,
        f"hop p99 (N=1) <= {TARGET_HOP_P99_MS} ms": p1["hop_p99_ms"] <= TARGET_HOP_P99_MS,
        f"pool/threads fps (N=4) >= {TARGET_THROUGHPUT_RATIO}x": ratio >= TARGET_THROUGHPUT_RATIO,
    }
    print()
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}")

    out = bc.write_json(RESULT_JSON, {
        "benchmark": "bench_pool",
        "quick": args.quick,
        "settings": {
            "frame_shape": FRAME_SHAPE, "busy_ms": args.busy_ms, "busy_iters": iters, "offer_fps_per_session": OFFER_FPS,
            "run_s": run_s, "warmup_s": warmup_s, "session_counts": SESSION_COUNTS,
            "worker_niceness": worker_nice, "bench_niceness": os.nice(0),
        },
        "machine": bc.machine_info(),
        "results": results,
        "checks": checks,
        "table": {"headers": headers, "rows": rows},
    })
    png = bc.results_path(RESULT_PNG)
    plot(results, png, args.busy_ms)
    print(f"\nwrote {out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
