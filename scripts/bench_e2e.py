"""End-to-end benchmark through WebRTC: rtcpool's gateway + worker pool against fastrtc.

N client streams (640x480, 30 fps, VP8, a frame counter painted into the pixels, see
runtime/clients/webrtc.py) go to

* **rtcpool**: a gateway served by uvicorn+uvloop in its own process (it starts a local Ray;
  the handler runs in pooled worker processes), and
* **fastrtc**: a single-process fastrtc server (scripts/fastrtc_server.py) run from its own
  venv, bench-results/fastrtc-venv (created on first use with ``pip install fastrtc``),

both serving a frame function that holds the GIL ~15 ms (a pure-Python loop, its count timed
here before the servers start and passed to both) and returns the frame unchanged, so the
counter comes back; and, at N=1, a no-op frame function.

Each client stream runs in a process of its own (N independent browsers; no client GIL is
shared between streams), and replays a cycle of VP8 frames encoded once at its start
(runtime.clients.webrtc.ReplayVideoTrack) rather than encoding each frame: on a 2-core machine
four live encoders would take the cores from the servers being measured (--live-source
encodes live). A configuration connects, waits for the first processed frame,
warms up, then measures for a fixed window: delivered fps per stream and in total, latency
from the painted counter (frame made at the client -> processed frame decoded back at the
client) p50/p95, and the CPU% (100 = one core) of the server's processes over the window:
rtcpool's gateway, its workers and Ray's own processes; the fastrtc process; the clients.

Everything runs on 127.0.0.1; both servers offer only loopback ICE candidates and use no
STUN server.

    python scripts/bench_e2e.py             # full run, ~4 min
    python scripts/bench_e2e.py --quick     # ~1.5 min
    python scripts/bench_e2e.py --profile   # also py-spy the gateway and a worker at N=4

Prints a Markdown table and writes bench-results/bench_e2e.json and bench_e2e.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

import bench_common as bc  # noqa: E402

from runtime.clients.webrtc import REPLAY_CYCLE_FRAMES  # noqa: E402

LOOPBACK = "127.0.0.1"
STREAM_COUNTS = (1, 2, 4)  # concurrent streams with the busy handler (full run)
QUICK_STREAM_COUNTS = (1, 4)  # (--quick)
FPS = 30.0  # frames/s each client sends
FRAME_SIZE = (640, 480)  # W, H
BUSY_MS = 15.0  # GIL-holding work per frame in the busy handler, ms
RUN_S = 15.0  # measured seconds per configuration (full run)
QUICK_RUN_S = 6.0  # (--quick)
WARMUP_S = 2.0  # seconds streamed after the first processed frame, before measuring
QUICK_WARMUP_S = 1.0
SETTLE_S = 1.0  # pause between configurations, for the last sessions to close
SERVER_START_TIMEOUT_S = 180.0  # a server answering its stats route (Ray start + pool warm-up)
SERVER_STOP_TIMEOUT_S = 30.0  # graceful stop (SIGINT), then SIGKILL
CLIENT_READY_TIMEOUT_S = 60.0  # connect + first processed frame + warm-up
CLIENT_END_TIMEOUT_S = 15.0  # a client closing its session and sending its last report
OFFER_RETRY_S = 15.0  # a full server (previous sessions still closing) is retried this long
OFFER_RETRY_INTERVAL_S = 0.5
WINDOWS = 3  # a configuration's measured time is cut in this many windows; the quiet ones are reported
QUEUE_SAMPLE_S = 0.1  # clients sample their receive queues this often
LAG_PROBE_S = 0.02  # the server's event-loop lag probe sleeps this long, over and over
STATS_TIMEOUT_S = 15.0  # HTTP calls to a server's stats route
WORKER_STATS_TIMEOUT_S = 3.0  # the rtcpool stats route's Ray call to each worker
QUIET_THRESHOLD_PCT = 40.0  # before each configuration, wait for the machine to be this idle (100 = one core)
QUIET_WAIT_MAX_S = 20.0  # ... but no longer than this
QUICK_QUIET_WAIT_MAX_S = 2.0  # (--quick)
MAX_POOL_STREAMS = max(STREAM_COUNTS)  # rtcpool concurrency_limit and pre-warmed workers
RAY_NICENESS_ENV = "RAY_worker_niceness"  # Ray's own setting; its default is 15
FASTRTC_VENV = bc.FASTRTC_VENV
FASTRTC_SERVER = SCRIPTS / "fastrtc_server.py"
TARGET_FPS_RATIO = 2.5  # rtcpool / fastrtc total fps at N=4, busy
FRESH_LATENCY_MS = 1000.0  # the "fresh" fps column counts frames back within this long (a live view)
TARGET_P95_MS = 250.0  # rtcpool latency p95 at N=4, busy
NO_WORSE = 0.9  # issue 22: H.264 rows within 10 % of VP8's (fps at least, p95 at most), the run's noise
TARGET_NOOP_EXTRA_MS = 10.0  # rtcpool N=1 no-op latency p50 at most this above fastrtc's
RESULT_JSON = "bench_e2e.json"
RESULT_PNG = "bench_e2e.png"


def receive_queues(pc: Any) -> dict[str, int]:
    """Frames waiting inside aiortc on the receive side of ``pc`` (private attributes, read
    for diagnosis only): encoded frames before the decoder thread, decoded frames before
    ``track.recv()``. Both queues are unbounded in aiortc 1.x."""
    out = {"to_decode": 0, "decoded": 0}
    for r in pc.getReceivers():
        if r.track is None or r.track.kind != "video":
            continue
        with contextlib.suppress(AttributeError):
            out["to_decode"] += r._RTCRtpReceiver__decoder_queue.qsize()
        with contextlib.suppress(AttributeError):
            out["decoded"] += r.track._queue.qsize()
    return out


class LoopLag:
    """How late an event loop wakes a sleeper: a loop busy with other work makes every
    callback (RTP packets, frames) wait that long. ``take()`` returns p50/p99/max since
    the last call."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.task: asyncio.Task[None] | None = None

    def ensure_started(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(LAG_PROBE_S)
            self.samples.append((time.perf_counter() - t0 - LAG_PROBE_S) * 1000.0)

    def take(self) -> dict[str, float | None]:
        s, self.samples = self.samples, []
        return {"p50_ms": bc.percentile(s, 50), "p99_ms": bc.percentile(s, 99), "max_ms": max(s) if s else None}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


# --- the rtcpool server (this file, run with --serve-rtcpool) -------------------------------------


def serve_rtcpool(port: int, busy_iters: int) -> None:
    """A gateway with two stream events, 'busy' and 'noop', on 127.0.0.1:port."""
    import ray
    import uvicorn
    from fastapi import FastAPI

    from runtime.config_loader import load_config
    from runtime.front.gateway import Gateway

    config = load_config(overrides={
        "gateway": {"ice_host_addresses": [LOOPBACK], "ice_servers": []},
        "pool": {"prewarm": MAX_POOL_STREAMS},
    })
    gw = Gateway(config)
    gw.add_stream(bc.SpinHandler(busy_iters), event_id="busy", concurrency_limit=MAX_POOL_STREAMS)
    gw.add_stream(bc.SpinHandler(0), event_id="noop", concurrency_limit=1)
    gw.start()
    gw.wait_warm()

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        await gw.aclose(drop_pools=True)

    app = FastAPI(lifespan=lifespan)
    gw.mount(app)

    lag = LoopLag()

    async def worker_channel(s: Any) -> Any:
        try:
            w = await asyncio.wait_for(s.lease.worker.stats.remote(), WORKER_STATS_TIMEOUT_S)
            return dict(vars(w.channel)) if w.channel is not None else None
        except Exception as exc:  # a benchmark stat, not worth failing the route
            return {"error": repr(exc)}

    @app.get("/bench/stats")
    async def stats() -> dict[str, Any]:
        lag.ensure_started()
        live = [(sid, s) for sid, s in list(gw.sessions.items()) if s is not None]
        workers = await asyncio.gather(*(worker_channel(s) for _, s in live))
        sessions = {
            sid: {
                "event": s.event.event_id,
                "worker_pid": s.worker_pid,
                "frames_in": s.frames_in,
                "frames_skipped_in": getattr(s, "frames_skipped_in", 0),
                "frames_out": s.frames_out,
                "gateway_channel": dict(vars(s.channel.stats)) if s.channel else None,
                "rx_queues": receive_queues(s.pc) if s.pc is not None else None,
                "worker_channel": w,
            }
            for (sid, s), w in zip(live, workers, strict=True)
        }
        return {"pid": os.getpid(), "sessions": sessions, "loop_lag": lag.take()}

    try:
        uvicorn.run(app, host=LOOPBACK, port=port, loop="uvloop", log_level="warning")
    finally:
        ray.shutdown()


# --- servers as subprocesses ---------------------------------------------------------------------


class Server:
    """A server subprocess; ``cpu_groups()`` names its processes for CPU accounting."""

    def __init__(self, name: str, cmd: list[str], port: int, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.url = f"http://{LOOPBACK}:{port}"
        self.log_path = bc.results_path(f"e2e-{name}-server.log")
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=bc.ROOT)

    def wait_ready(self) -> float:
        import httpx

        t0 = time.monotonic()
        while time.monotonic() - t0 < SERVER_START_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited with {self.proc.returncode}; see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/bench/stats", timeout=STATS_TIMEOUT_S).status_code == 200:
                    return time.monotonic() - t0
            time.sleep(0.3)
        raise TimeoutError(f"{self.name} server not up within {SERVER_START_TIMEOUT_S} s; see {self.log_path}")

    def stats(self) -> dict[str, Any]:
        import httpx

        return httpx.get(self.url + "/bench/stats", timeout=STATS_TIMEOUT_S).json()

    def cpu_groups(self, stats: dict[str, Any]) -> dict[str, list[int]]:
        pid = self.proc.pid
        if self.name == "fastrtc":
            return {"server": [pid, *bc.descendants(pid)]}
        workers = sorted({s["worker_pid"] for s in stats["sessions"].values()})
        others = [p for p in bc.descendants(pid) if p not in workers]
        return {"server": [pid], "workers": workers, "ray": others}

    def stop(self) -> None:
        bc.stop_server(self.proc, SERVER_STOP_TIMEOUT_S)
        self._log.close()


def ensure_fastrtc_venv() -> Path:
    return bc.ensure_fastrtc_venv()


def start_rtcpool(busy_iters: int, worker_niceness: int | None) -> Server:
    port = free_port()
    # Ray starts its worker processes (the handlers' pool) at nice 15 unless told otherwise
    env = {RAY_NICENESS_ENV: str(worker_niceness)} if worker_niceness is not None else None
    return Server("rtcpool", [sys.executable, str(Path(__file__).resolve()), "--serve-rtcpool", str(port), "--busy-iters", str(busy_iters)], port, env)


def start_fastrtc(busy_iters: int) -> Server:
    python = ensure_fastrtc_venv()
    port = free_port()
    return Server("fastrtc", [str(python), str(FASTRTC_SERVER), "--port", str(port), "--busy-iters", str(busy_iters)], port)


# --- clients: one process per stream, driven over a pipe -----------------------------------------


def client_process(conn: Any) -> None:
    """Serve ``("run", url, stream_id, fps, warmup_s)`` then ``"start"``/``"stop"``; quit on ``"quit"``."""
    asyncio.run(_client_loop(conn))


async def _client_loop(conn: Any) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: inbox.put_nowait(conn.recv()))
    while True:
        cmd = await inbox.get()
        if cmd == "quit":
            return
        if not isinstance(cmd, tuple):
            continue  # a stray "end"/"stop" for a session that failed to start
        _, url, stream_id, fps, warmup_s, replay, *rest = cmd
        codec = rest[0] if rest else None  # offer this video codec alone (None: both, the server picks)
        motion = bool(rest[1]) if len(rest) > 1 else False  # the replayed picture moves, with noise
        try:
            conn.send(("report", await _one_session(conn, inbox, url, stream_id, fps, warmup_s, replay, codec, motion)))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


async def _connect(url: str, stream_id: str | None, fps: float, replay: int, codec: str | None = None, motion: bool = False) -> Any:
    from runtime.clients.webrtc import Client, OfferRejected, ServerFull

    deadline = time.monotonic() + OFFER_RETRY_S
    while True:
        client = Client(url, stream_id=stream_id, fps=fps, size=FRAME_SIZE, replay=replay, codec=codec, replay_motion=motion)
        if replay and codec is not None:
            # encode the replayed cycle now, not at the first frame: a moving one takes seconds
            # of CPU, which would count against the first frame's timeout on a loaded machine
            from runtime.clients.webrtc import ReplayVideoTrack
            from runtime.media.video_codecs import VideoCodec

            source = client.source
            if isinstance(source, ReplayVideoTrack):
                source.use_codec(VideoCodec(codec))
                await asyncio.to_thread(getattr, source, "encoded")  # cached for the process
        try:
            await client.connect()
            return client
        except (ServerFull, OfferRejected) as exc:
            full = isinstance(exc, ServerFull) or "concurrency_limit_reached" in str(exc)
            if not full or time.monotonic() > deadline:
                raise
        await asyncio.sleep(OFFER_RETRY_INTERVAL_S)


async def _one_session(
    conn: Any, inbox: asyncio.Queue[Any], url: str, stream_id: str | None, fps: float, warmup_s: float, replay: int, codec: str | None = None,
    motion: bool = False,
) -> dict[str, Any]:
    """Connect, warm up, then report one window per ``"start"``/``"stop"`` pair until ``"end"``."""
    client = await _connect(url, stream_id, fps, replay, codec, motion)
    try:
        await asyncio.wait_for(client.first_frame.wait(), CLIENT_READY_TIMEOUT_S)
        await asyncio.sleep(warmup_s)
        conn.send(("ready", os.getpid()))
        while True:
            cmd = await inbox.get()
            if cmd == "end":
                break
            if cmd != "start":
                raise RuntimeError(f"expected start or end, got {cmd!r}")
            conn.send(("window", await _one_window(client, inbox)))
    finally:
        await client.close()
    return {"server_messages": [m for m in client.messages if m.get("type") in ("error", "warning")][:5]}


async def _one_window(client: Any, inbox: asyncio.Queue[Any]) -> dict[str, Any]:
    # Reset in place: the client's receive task holds this Report object (replacing it, as
    # runtime.clients.webrtc.run() does, loses every later count).
    rep = client.report
    rep.received = rep.marked = 0
    rep.latencies_ms.clear()
    sent0 = client.source.count
    t0 = time.monotonic()
    samples: list[dict[str, int]] = []

    async def sample_queues() -> None:
        while True:
            samples.append(receive_queues(client.pc))
            await asyncio.sleep(QUEUE_SAMPLE_S)

    sampler = asyncio.get_running_loop().create_task(sample_queues())
    cmd = await inbox.get()
    sampler.cancel()
    if cmd != "stop":
        raise RuntimeError(f"expected stop, got {cmd!r}")
    seconds = time.monotonic() - t0
    return {
        "sent": client.source.count - sent0,
        "received": rep.received,
        "marked": rep.marked,
        "seconds": seconds,
        "fps": rep.received / seconds if seconds else 0.0,
        "latencies_ms": list(rep.latencies_ms),
        "rx_queue_max": {k: max((q[k] for q in samples), default=0) for k in ("to_decode", "decoded")},
        "codec": None if client.video_codec is None else str(client.video_codec),
        "psnr_db": returned_psnr(client),
    }


def returned_psnr(client: Any) -> float | None:
    """PSNR (dB) of the newest frame back against the picture sent, below the counter strip:
    what two lossy encodes (client -> server, server -> client) left of it, for a handler
    that returns its input."""
    from runtime.clients.webrtc import ReplayVideoTrack, read_counter

    if not client.frames or client.source is None:
        return None
    got = client.frames[-1]
    sent = client.source.base
    if isinstance(client.source, ReplayVideoTrack):
        k = read_counter(got)  # which frame of the cycle came back: a moving one differs from the base
        if k is None or k >= len(client.source.encoded):
            return None
        sent = client.source.picture(k)
    if got.shape != sent.shape:
        return None
    height, width = got.shape[:2]
    region = (slice(height // 8, height - 8), slice(8, width - 8))  # the counter is painted above
    mse = float(np.mean((got[region].astype(np.float64) - sent[region].astype(np.float64)) ** 2))
    return round(10 * np.log10(255**2 / max(mse, 1e-9)), 2)


class Clients:
    def __init__(self, count: int) -> None:
        ctx = mp.get_context("spawn")
        self.conns = []
        self.procs = []
        for _ in range(count):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=client_process, args=(child,), daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)

    def _recv(self, i: int, timeout: float) -> Any:
        if not self.conns[i].poll(timeout):
            raise TimeoutError(f"client {i} silent for {timeout} s")
        msg = self.conns[i].recv()
        if msg[0] == "error":
            raise RuntimeError(f"client {i}: {msg[1]}")
        return msg

    def close(self) -> None:
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.send("quit")
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()


def run_config(
    server: Server, clients: Clients, stream_id: str, n: int, run_s: float, warmup_s: float, quiet_wait_s: float, profile: bool, replay: int,
    codec: str | None = None, motion: bool = False,
) -> dict[str, Any]:
    """One configuration: connect ``n`` clients, warm up, measure ``WINDOWS`` windows; the
    windows with the least CPU used by processes outside the benchmark are pooled and reported."""
    url = server.url + (f"/{stream_id}" if server.name == "fastrtc" else "")
    sid = stream_id if server.name == "rtcpool" else None
    quiet = bc.wait_quiet(QUIET_THRESHOLD_PCT, quiet_wait_s)
    for i in range(n):
        clients.conns[i].send(("run", url, sid, FPS, warmup_s, replay, codec, motion))
    try:
        for i in range(n):
            clients._recv(i, CLIENT_READY_TIMEOUT_S + OFFER_RETRY_S)
        window_s = run_s / WINDOWS
        windows = []
        spies: list[subprocess.Popen[bytes]] = []
        for k in range(WINDOWS):
            stats0 = server.stats()
            groups = server.cpu_groups(stats0)
            groups["clients"] = [p.pid for p in clients.procs[:n]]
            if profile and k == 0:
                spies = start_profiles(server, groups, run_s, n, stream_id)
            cpu_window = bc.CpuWindow(groups)
            for i in range(n):
                clients.conns[i].send("start")
            time.sleep(window_s)
            cpu = cpu_window.stop()
            stats1 = server.stats()
            for i in range(n):
                clients.conns[i].send("stop")
            reports = [clients._recv(i, CLIENT_READY_TIMEOUT_S)[1] for i in range(n)]
            windows.append({"reports": reports, "cpu": cpu, "groups": groups, "stats0": stats0, "stats1": stats1})
    finally:
        for i in range(n):  # each client closes its session and answers with a last report
            with contextlib.suppress(OSError):
                clients.conns[i].send("end")
        ends = []
        for i in range(n):
            with contextlib.suppress(Exception):
                ends.append(clients._recv(i, CLIENT_END_TIMEOUT_S)[1])
    for spy in spies:
        spy.wait(run_s + 30)
    ks = bc.quiet_windows([w["cpu"].get("others", 1e9) for w in windows])
    pooled = [{**r, "latencies_ms": [v for k in ks for v in windows[k]["reports"][i]["latencies_ms"]],
               "sent": sum(windows[k]["reports"][i]["sent"] for k in ks),
               "received": sum(windows[k]["reports"][i]["received"] for k in ks),
               "marked": sum(windows[k]["reports"][i]["marked"] for k in ks),
               "seconds": sum(windows[k]["reports"][i]["seconds"] for k in ks),
               "rx_queue_max": {q: max(windows[k]["reports"][i]["rx_queue_max"][q] for k in ks) for q in ("to_decode", "decoded")}}
              for i, r in enumerate(windows[ks[0]]["reports"])]
    for r in pooled:
        r["fps"] = r["received"] / r["seconds"] if r["seconds"] else 0.0
    quietest = min(ks, key=lambda k: windows[k]["cpu"].get("others", 1e9))
    w = windows[quietest]  # server-side rates: from the quietest window alone
    result = {"server": server.name, "handler": stream_id, "streams": n, "windows_pooled": ks}
    result.update(window_summary(server.name, pooled, bc.mean_cpu([windows[k]["cpu"] for k in ks]), w["groups"], w["stats0"], w["stats1"], window_s))
    result["machine_busy_before_pct"] = quiet
    result["server_messages"] = [m for e in ends for m in e.get("server_messages", [])][:5]
    result["windows"] = [
        {k: v for k, v in window_summary(server.name, x["reports"], x["cpu"], x["groups"], x["stats0"], x["stats1"], window_s).items() if k != "server_stats"}
        for x in windows
    ]
    return result


def window_summary(name: str, reports: list[dict[str, Any]], cpu: dict[str, float], groups: dict[str, list[int]],
                   stats0: dict[str, Any], stats1: dict[str, Any], window_s: float) -> dict[str, Any]:
    lat = [v for r in reports for v in r["latencies_ms"]]

    def fresh(r: dict[str, Any]) -> float:
        marked = r["latencies_ms"]
        return r["fps"] * sum(1 for v in marked if v <= FRESH_LATENCY_MS) / len(marked) if marked else 0.0

    return {
        "fps_per_stream": [round(r["fps"], 2) for r in reports],
        "fps_total": round(sum(r["fps"] for r in reports), 2),
        # the same frames, counting only those back within FRESH_LATENCY_MS of being sent
        "fresh_fps_total": round(sum(fresh(r) for r in reports), 2),
        "sent_fps_total": round(sum(r["sent"] / r["seconds"] for r in reports), 2),
        "marked_fraction": round(sum(r["marked"] for r in reports) / max(1, sum(r["received"] for r in reports)), 3),
        "latency_p50_ms": bc.percentile(lat, 50),
        "latency_p95_ms": bc.percentile(lat, 95),
        "latency_max_ms": max(lat) if lat else None,
        "cpu_percent": cpu,
        "niceness": niceness(groups),
        "server_stats": server_rates(name, stats0, stats1, window_s),
        "client_rx_queue_max": [r["rx_queue_max"] for r in reports],
    }


def niceness(groups: dict[str, list[int]]) -> dict[str, list[int]]:
    import psutil

    out: dict[str, list[int]] = {}
    for k in ("server", "workers"):
        for pid in groups.get(k, [])[:MAX_POOL_STREAMS]:
            with contextlib.suppress(psutil.NoSuchProcess):
                out.setdefault(k, []).append(psutil.Process(pid).nice())
    return out


def server_rates(name: str, s0: dict[str, Any], s1: dict[str, Any], run_s: float) -> dict[str, Any]:
    """What the server did in the window: where frames went."""
    if name == "fastrtc":
        calls = {k: round((s1["calls"][k] - s0["calls"].get(k, 0)) / run_s, 2) for k in s1["calls"]}
        return {"handler_calls_per_s": calls, "queued_frames_at_end": s1["queued_frames"],
                "rx_queues_at_end": s1.get("rx_queues"), "loop_lag": s1.get("loop_lag")}
    out: dict[str, Any] = {"loop_lag": s1.get("loop_lag")}
    for sid, a in s1["sessions"].items():
        b = s0["sessions"].get(sid)
        if b is None:
            continue

        def rate(side: str, key: str, a: dict[str, Any] = a, b: dict[str, Any] = b) -> float | None:
            if not a.get(side) or not b.get(side):
                return None
            return round((a[side][key] - b[side][key]) / run_s, 2)

        out[sid] = {
            "gateway_decoded_fps": round((a["frames_in"] - b["frames_in"]) / run_s, 2),
            "gateway_skipped_decoded_fps": round((a.get("frames_skipped_in", 0) - b.get("frames_skipped_in", 0)) / run_s, 2),
            "worker_took_fps": None if rate("worker_channel", "video_received") is None else round(rate("worker_channel", "video_received") - rate("worker_channel", "video_superseded"), 2),  # type: ignore[operator]
            "worker_superseded_fps": rate("worker_channel", "video_superseded"),
            "worker_results_fps": rate("worker_channel", "video_sent"),
            "gateway_to_encoder_fps": round((a["frames_out"] - b["frames_out"]) / run_s, 2),
            "gateway_out_superseded_fps": rate("gateway_channel", "video_superseded"),
            "gateway_in_dropped_fps": rate("gateway_channel", "video_dropped"),
            "gateway_rx_queues_at_end": a.get("rx_queues"),
        }
    return out


def start_profiles(server: Server, groups: dict[str, list[int]], run_s: float, n: int, stream_id: str) -> list[subprocess.Popen[bytes]]:
    """py-spy the server process (and the first worker) for the window, as collapsed stacks."""
    targets = [("server", groups["server"][0])]
    if groups.get("workers"):
        targets.append(("worker", groups["workers"][0]))
    spies = []
    for label, pid in targets:
        out = bc.results_path(f"e2e-profile-{server.name}-{stream_id}-n{n}-{label}.txt")
        spies.append(subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--duration", str(int(run_s)), "--rate", "200",
             "--format", "raw", "--threads", "--nonblocking", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
    return spies


# --- report -------------------------------------------------------------------------------------


def plot(results: list[dict[str, Any]], path: Any, busy_ms: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4.2), gridspec_kw={"width_ratios": [1.2, 1.2, 0.8]})
    names = list(dict.fromkeys(r["server"] for r in results))  # "rtcpool", or one per codec ("rtcpool h264")
    palette = ["tab:blue", "tab:green", "tab:purple"]
    colors = {name: "tab:orange" if name == "fastrtc" else palette[i % len(palette)] for i, name in enumerate(names)}
    for name in names:
        rows = sorted((r for r in results if r["server"] == name and r["handler"] == "busy"), key=lambda r: r["streams"])
        if not rows:
            continue
        ns = [r["streams"] for r in rows]
        ax1.plot(ns, [r["fps_total"] for r in rows], "o-", color=colors[name], label=f"{name} delivered")
        ax1.plot(ns, [r["sent_fps_total"] for r in rows], ":", color=colors[name], alpha=0.6, label=f"{name} sent")
        ax2.plot(ns, [r["latency_p50_ms"] for r in rows], "o-", color=colors[name], label=f"{name} p50")
        ax2.plot(ns, [r["latency_p95_ms"] for r in rows], "s--", color=colors[name], label=f"{name} p95")
    ax1.set_xlabel("streams")
    ax1.set_ylabel("frames/s delivered back (total)")
    ax1.set_title(f"{busy_ms:.0f} ms GIL handler, 640x480 @ {FPS:.0f} fps per stream")
    ax1.set_xticks(sorted({r["streams"] for r in results}))
    ax1.legend(fontsize=8)
    ax2.set_yscale("log")
    ax2.axhline(TARGET_P95_MS, color="grey", lw=0.8, ls=":")
    ax2.set_xlabel("streams")
    ax2.set_ylabel("latency, ms (painted counter, log scale)")
    ax2.set_title("client -> handler -> client latency")
    ax2.set_xticks(sorted({r["streams"] for r in results}))
    ax2.legend(fontsize=8)
    noop = [r for r in results if r["handler"] == "noop"]
    xs = range(len(noop))
    ax3.bar([x - 0.2 for x in xs], [r["latency_p50_ms"] or 0 for r in noop], 0.4, label="p50", color=[colors[r["server"]] for r in noop])
    ax3.bar([x + 0.2 for x in xs], [r["latency_p95_ms"] or 0 for r in noop], 0.4, label="p95", color=[colors[r["server"]] for r in noop], alpha=0.5)
    ax3.set_xticks(list(xs), [r["server"] for r in noop])
    ax3.set_ylabel("latency, ms")
    ax3.set_title("no-op handler, 1 stream")
    ax3.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table_rows(results: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    headers = [
        "server", "handler", "streams", "fps/stream", "total fps", f"fps <= {FRESH_LATENCY_MS / 1000:.0f} s old", "p50 ms", "p95 ms",
        "server proc CPU%", "workers CPU%", "ray CPU%", "clients CPU%", "others CPU%", "machine CPU%",
    ]
    rows = []
    for r in results:
        cpu = r["cpu_percent"]
        per = r["fps_per_stream"]
        rows.append([
            r["server"], r["handler"], r["streams"],
            f"{min(per):.1f}" if len(per) == 1 else f"{min(per):.1f}-{max(per):.1f}",
            f"{r['fps_total']:.1f}", f"{r['fresh_fps_total']:.1f}",
            bc.fmt(r["latency_p50_ms"], 0), bc.fmt(r["latency_p95_ms"], 0),
            bc.fmt(cpu.get("server"), 0), bc.fmt(cpu.get("workers"), 0), bc.fmt(cpu.get("ray"), 0),
            bc.fmt(cpu.get("clients"), 0), bc.fmt(cpu.get("others"), 0), bc.fmt(cpu.get("machine"), 0),
        ])
    return headers, rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"streams {QUICK_STREAM_COUNTS}, {QUICK_RUN_S:.0f} s per configuration")
    ap.add_argument("--busy-ms", type=float, default=BUSY_MS, help="GIL-holding work per frame, ms")
    ap.add_argument("--only", choices=("rtcpool", "fastrtc"), help="benchmark one server only")
    ap.add_argument("--worker-niceness", type=int, metavar="N",
                    help="start rtcpool's Ray workers at this nice value (Ray's default: 15, i.e. below every normal process)")
    ap.add_argument("--live-source", action="store_true",
                    help="clients encode their VP8 live, frame by frame (default: replay a pre-encoded cycle, so the load generator leaves the cores to the servers)")
    ap.add_argument("--static", action="store_true",
                    help="the replayed picture stands still (before issue 22's runs; default: it moves and carries sensor noise, as a webcam's)")
    ap.add_argument("--codec", default="vp8",
                    help="video codecs for rtcpool, comma-separated, one pass each (vp8, h264; default vp8); the clients offer that codec alone. fastrtc runs VP8")
    ap.add_argument("--profile", action="store_true", help="py-spy the server (and a worker) at the largest N (needs py-spy)")
    ap.add_argument("--serve-rtcpool", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--busy-iters", type=int, help="loop turns per frame (default: what --busy-ms takes here)")
    ap.add_argument("--fixed-rate", action="store_true",
                    help="size --busy-ms at bench_common.ITERS_PER_MS loop turns/ms instead of timing the loop here first (the default: this VM's Python speed differs between machines by up to 3x)")
    args = ap.parse_args(argv)
    if args.serve_rtcpool:
        serve_rtcpool(args.serve_rtcpool, args.busy_iters)
        return 0

    codecs = [c.strip() for c in args.codec.split(",") if c.strip()]
    if not codecs or any(c not in ("vp8", "h264") for c in codecs):
        ap.error("--codec: a comma-separated list of vp8, h264")
    counts = QUICK_STREAM_COUNTS if args.quick else STREAM_COUNTS
    replay = 0 if args.live_source else REPLAY_CYCLE_FRAMES
    run_s = QUICK_RUN_S if args.quick else RUN_S
    warmup_s = QUICK_WARMUP_S if args.quick else WARMUP_S
    quiet_wait_s = QUICK_QUIET_WAIT_MAX_S if args.quick else QUIET_WAIT_MAX_S
    calibrate = not args.fixed_rate
    if calibrate and not args.busy_iters:
        bc.wait_quiet(QUIET_THRESHOLD_PCT, quiet_wait_s)
    iters = args.busy_iters or bc.busy_iters(args.busy_ms, calibrate)
    how = "calibrated here" if calibrate and not args.busy_iters else f"at {bc.ITERS_PER_MS} turns/ms"
    print(f"busy handler: {iters} loop turns ~ {args.busy_ms:.0f} ms ({how})", flush=True)

    servers = [s for s in ("rtcpool", "fastrtc") if args.only in (None, s)]
    # (server process, codec, the rows' label): one label per codec when several are run
    passes = [(s, c, s if len(codecs) == 1 else f"{s} {c}") for s in servers for c in (codecs if s == "rtcpool" else ["vp8"])]
    clients = Clients(max(counts))
    results: list[dict[str, Any]] = []
    startup: dict[str, float] = {}
    try:
        for name, codec, label in passes:
            server = start_rtcpool(iters, args.worker_niceness) if name == "rtcpool" else start_fastrtc(iters)
            try:
                startup[label] = round(server.wait_ready(), 1)
                print(f"{label} server up in {startup[label]} s (pid {server.proc.pid})", flush=True)
                plan = [("noop", 1)] + [("busy", n) for n in counts]
                for stream_id, n in plan:
                    profile = args.profile and stream_id == "busy" and n == max(counts)
                    r = run_config(server, clients, stream_id, n, run_s, warmup_s, quiet_wait_s, profile, replay, codec, not args.static)
                    r["server"], r["codec"] = label, codec
                    results.append(r)
                    cpu = {k: round(v) for k, v in r["cpu_percent"].items()}
                    print(f"  {name:7s} {stream_id:4s} N={n}: {r['fps_total']:6.1f} fps total {r['fps_per_stream']}, "
                          f"latency p50 {bc.fmt(r['latency_p50_ms'], 0)} ms p95 {bc.fmt(r['latency_p95_ms'], 0)} ms, cpu {cpu}", flush=True)
                    time.sleep(SETTLE_S)
            finally:
                server.stop()
    finally:
        clients.close()

    headers, rows = table_rows(results)
    print()
    print(f"bench_e2e: {FRAME_SIZE[0]}x{FRAME_SIZE[1]} {'/'.join(codecs)} @ {FPS:.0f} fps per stream over loopback WebRTC; busy = {args.busy_ms:.0f} ms "
          f"GIL-holding frame function; {run_s:.0f} s per row; CPU% of one core (machine: {os.cpu_count()} cores = {100 * (os.cpu_count() or 1)}%)")
    print(bc.table(headers, rows))
    print(f"Each row: {run_s:.0f} s in {WINDOWS} windows, the quietest ones pooled (others = CPU% of processes outside the "
          f"benchmark; 100 = one core). rtcpool's Ray workers ran at nice {args.worker_niceness if args.worker_niceness is not None else '15 (Ray default)'}.")

    def pick(server: str, handler: str, n: int) -> dict[str, Any] | None:
        return next((r for r in results if r["server"] == server and r["handler"] == handler and r["streams"] == n), None)

    checks: dict[str, Any] = {}
    nmax = max(counts)
    first = next((label for name, _, label in passes if name == "rtcpool"), "rtcpool")
    rp, fp = pick(first, "busy", nmax), pick("fastrtc", "busy", nmax)
    rn, fn = pick(first, "noop", 1), pick("fastrtc", "noop", 1)
    vp8, h264 = pick("rtcpool vp8", "busy", nmax), pick("rtcpool h264", "busy", nmax)
    if vp8 and h264 and vp8["latency_p95_ms"] is not None and h264["latency_p95_ms"] is not None:
        # issue 22: H.264 no worse than VP8 with the busy handler (within the run's noise)
        checks[f"h264 vs vp8 (N={nmax}, busy): total fps {h264['fps_total']:.1f} vs {vp8['fps_total']:.1f}, "
               f"p95 {h264['latency_p95_ms']:.0f} vs {vp8['latency_p95_ms']:.0f} ms"] = (
            h264["fps_total"] >= NO_WORSE * vp8["fps_total"] and h264["latency_p95_ms"] <= vp8["latency_p95_ms"] / NO_WORSE)
    if rp and fp and fp["fps_total"]:
        checks[f"rtcpool/fastrtc total fps (N={nmax}) >= {TARGET_FPS_RATIO}x: {rp['fps_total'] / fp['fps_total']:.2f}x"] = rp["fps_total"] / fp["fps_total"] >= TARGET_FPS_RATIO
    if rp and rp["latency_p95_ms"] is not None:
        checks[f"rtcpool p95 (N={nmax}) <= {TARGET_P95_MS:.0f} ms: {rp['latency_p95_ms']:.0f} ms"] = rp["latency_p95_ms"] <= TARGET_P95_MS
    if rn and fn and rn["latency_p50_ms"] is not None and fn["latency_p50_ms"] is not None:
        extra = rn["latency_p50_ms"] - fn["latency_p50_ms"]
        checks[f"no-op N=1 p50: rtcpool - fastrtc <= {TARGET_NOOP_EXTRA_MS:.0f} ms: {extra:+.1f} ms"] = extra <= TARGET_NOOP_EXTRA_MS
    print()
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}")

    out = bc.write_json(RESULT_JSON, {
        "benchmark": "bench_e2e",
        "quick": args.quick,
        "settings": {
            "fps_per_stream": FPS, "frame_size": FRAME_SIZE, "busy_ms": args.busy_ms, "busy_iters": iters,
            "run_s": run_s, "warmup_s": warmup_s, "stream_counts": counts, "server_startup_s": startup,
            "ray_worker_niceness": args.worker_niceness if args.worker_niceness is not None else "ray default (15)",
            "client_source": "live encoding" if args.live_source else f"replayed pre-encoded cycle of {REPLAY_CYCLE_FRAMES} frames",
            "picture": "still" if args.static else "moving, with sensor noise",
            "codecs": codecs,
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
