"""The waiting room (issue 13): how fast a freed slot reaches the next user in line, and what
a waiting user costs the gateway.

The server is this file run with ``--serve PORT``, in a process of its own (so its CPU is
measured apart from the clients'): a gateway on 127.0.0.1 with a local Ray, two stream
events serving the same cheap handler (invert) from pre-warmed workers, each with
``concurrency_limit=2``:

* ``line``: ``time_limit=5`` s: the server ends each session 5 s after its media starts
  (``end_stream`` on the data channel, the peer connection closed 0.5 s later).
* ``hold``: a long time limit (so the line has ETAs that tick down, as on a real stream)
  that no session here reaches.

The server records, on the shared monotonic clock (CLOCK_MONOTONIC is one clock for every
process of this machine), when each session began to close (its session_end log line, at
the start of Session.aclose) and when its lease went back to the scheduler (the release
call in MediaEngine.session_ended), and serves them on GET /bench/ends; GET /bench/status
gives the scheduler's view of both lines and the front's followed tickets.

**Run A, handover.** 20 clients (runtime/clients/webrtc.py, 320x240 at 15 fps, replaying a
pre-encoded cycle) join ``line`` one after another, each once its offer is answered (with
a session or a place); each stays until the server ends its session at the time limit and
then closes its peer connection, as the browser component does on ``end_stream``. The
first two stream at once, the other 18 wait. The k-th admission of the line (the admitted
view's ``turn``) is the slot of the k-th session to give its lease back; for each queued
client, from the end of that session: ``slot freed -> first frame`` (the holder's session
closing on the server -> the new user's first processed frame decoded at the client) and
the stages in between: the server closing the holder's session, the scheduler's admission
reaching the client over its updates stream, the offer posted again and answered, ICE/DTLS
and the first frame through the worker. ETA: the 202's ``eta_s`` vs the wait until admitted.

**Run B, cost of waiting.** Two clients hold ``hold``'s two slots; then 100 waiting users
join its line the way a browser waits (an offer answered 202, one updates stream,
GET /webrtc/queue, read until the end; no peer connection on the server): the CPU% (100 =
one core) of the gateway process, the scheduler actor, the workers and Ray's other
processes over a window with 100 waiting, against the same window with none waiting before
they join and after they leave; the gateway's RSS before and with them. Then all leave
(POST /webrtc/queue/leave) and the line is checked empty (scheduler status, the front's
followed tickets, every updates stream ended with ``gone/left``).

Before measuring, the script waits for a running test suite (``pgrep -f pytest``) to end
(up to 30 min) and for the machine to be quiet.

    python scripts/bench_queue.py           # ~4 min
    python scripts/bench_queue.py --quick   # ~2 min: 8 clients, 30 waiting, shorter windows

Prints a Markdown table and writes bench-results/bench_queue.json and bench_queue.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
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

LOOPBACK = "127.0.0.1"
LINE, HOLD = "line", "hold"  # the stream events (see the module docstring)
LIMIT = 2  # concurrency_limit of both, and pre-warmed workers per stream
TIME_LIMIT_S = 5.0  # line's time limit
HOLD_TIME_LIMIT_S = 3600.0  # hold's: known (the line has ETAs), never reached here
USERS = 20  # Run A clients (the first LIMIT stream at once, the rest wait)
QUICK_USERS = 8
WAITERS = 100  # Run B waiting users
QUICK_WAITERS = 30
FRAME_SIZE = (320, 240)  # W, H each client sends
FPS = 15.0
# Run B's two slot holders stream small and slow: their media is the baseline the waiting
# users' cost is read against, and a cheaper baseline has less noise to read it through
HOLD_SIZE = (160, 120)
HOLD_FPS = 5.0
REPLAY_FRAMES = 150  # the clients' pre-encoded cycle (10 s at 15 fps), encoded once per run
WINDOW_S = 20.0  # Run B: each measured window
QUICK_WINDOW_S = 8.0
SETTLE_S = 3.0  # Run B: after a change (holders streaming, waiters in, waiters out), before a window
RSS_CYCLES = 3  # Run B: more join-and-leave cycles of the same size, the RSS read after each
JOIN_PARTS = 4  # Run B's joins are measured in this many equal parts: the cost of a join vs the line's length
TARGET_P95_S = 1.0  # slot freed -> next session's first processed frame, p95 (issue 13)
SERVER_START_TIMEOUT_S = 180.0  # Ray start + both pools warm
SERVER_STOP_TIMEOUT_S = 30.0
RAY_SETTLE_PCT = 15.0  # after the server is ready, wait until its processes are this quiet (100 = one core)
RAY_SETTLE_MAX_S = 60.0  # Ray's dashboard and agents keep a core busy for a while after start
RAY_SAMPLE_S = 1.0
JOIN_TIMEOUT_S = 30.0  # a client's offer is answered (place or session) by then
FIRST_FRAME_TIMEOUT_S = 60.0
SESSION_END_TIMEOUT_S = TIME_LIMIT_S + 30.0  # first frame -> the server's end_stream
RUN_A_TIMEOUT_S = 600.0
ENDS_TIMEOUT_S = 15.0  # the last sessions of run A given back on the server by then
ENDS_POLL_S = 0.5
LINE_EMPTY_TIMEOUT_S = 20.0  # Run B: every waiter gone -> the line and the follower empty
LINE_POLL_S = 0.5  # ... looked at this often
POLL_S = 0.05  # client-side waits on a condition
HTTP_TIMEOUT_S = 30.0
INVERTED_TOLERANCE = 12  # mean level: a returned frame is the inverse of the sent one within this
TEST_SUITE_WAIT_MAX_S = 1800.0  # a running pytest is waited for this long at most
TEST_SUITE_POLL_S = 60.0
QUIET_THRESHOLD_PCT = 40.0  # the machine (all processes) this idle before a run (100 = one core)
QUIET_WAIT_MAX_S = 60.0
PROFILE_MAX_S = 120  # --profile: py-spy over the gateway while the waiting users join, at most this long
PROFILE_ATTACH_S = 1.0  # py-spy's start-up before the first join
PROFILE_STOP_TIMEOUT_S = 15.0
RESULT_JSON = "bench_queue.json"
RESULT_PNG = "bench_queue.png"


def invert(frame: np.ndarray) -> np.ndarray:
    return 255 - frame


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


# --- the server (this file, run with --serve PORT) --------------------------------------------


class EndLog(logging.Handler):
    """Notes, on the monotonic clock, when each session began to close: its session_end log
    line is written at the start of Session.aclose (before the worker's close, the peer
    connection's and the release)."""

    def __init__(self, ends: dict[str, dict[str, Any]]) -> None:
        super().__init__(logging.INFO)
        self.ends = ends

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "rtcpool", None)
        if isinstance(fields, dict) and fields.get("event") == "session_end":
            self.ends.setdefault(fields["webrtc_id"], {}).update(
                closing_at=time.monotonic(), reason=fields.get("reason"), stream=fields.get("stream")
            )


def serve(port: int, max_queue: int) -> None:
    import ray
    import uvicorn
    from fastapi import FastAPI

    from runtime.config_loader import load_config
    from runtime.front.gateway import Gateway

    ends: dict[str, dict[str, Any]] = {}
    rtc_log = logging.getLogger("rtcpool")
    rtc_log.setLevel(logging.INFO)
    rtc_log.addHandler(EndLog(ends))
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    rtc_log.addHandler(stderr)

    config = load_config(overrides={
        "gateway": {"ice_host_addresses": [LOOPBACK], "ice_servers": []},
        "pool": {"prewarm": LIMIT},
    })
    gw = Gateway(config)
    gw.add_stream(invert, event_id=LINE, concurrency_limit=LIMIT, time_limit=TIME_LIMIT_S, max_queue=max_queue)
    gw.add_stream(invert, event_id=HOLD, concurrency_limit=LIMIT, time_limit=HOLD_TIME_LIMIT_S, max_queue=max_queue)
    gw.start()
    gw.wait_warm()

    # the lease going back: MediaEngine.session_ended ends with the scheduler's release call
    engine = gw.engine
    session_ended = engine.session_ended

    async def timed_session_ended(session: Any) -> None:
        rec = ends.setdefault(session.webrtc_id, {})
        rec.update(
            stream=session.event.event_id,
            created_at=session.created_at,
            connected_at=session.connected_at,
            media_since=session.media_since,
            first_output_at=session.first_output_at,
            release_at=time.monotonic(),
        )
        await session_ended(session)
        rec["released_at"] = time.monotonic()

    engine.session_ended = timed_session_ended  # type: ignore[method-assign]

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        await gw.aclose(drop_pools=True)

    app = FastAPI(lifespan=lifespan)
    gw.mount(app)

    @app.get("/bench/ends")
    async def bench_ends() -> dict[str, Any]:
        return {"ends": [{"webrtc_id": k, **v} for k, v in ends.items()]}

    @app.get("/bench/status")
    async def bench_status() -> dict[str, Any]:
        status = (await asyncio.wait_for(gw.scheduler.status.remote(), HTTP_TIMEOUT_S)).to_json()
        keys = ("limit", "leases", "queue", "admitted", "idle", "expected_session_s")
        return {
            "pid": os.getpid(),
            "events": {eid: {k: e.get(k) for k in keys} for eid, e in status["events"].items()},
            "tickets": status["tickets"],
            "followed": gw.queue.followed,
            "sessions": len(gw.sessions),
        }

    try:
        uvicorn.run(app, host=LOOPBACK, port=port, loop="uvloop", log_level="warning")
    finally:
        ray.shutdown()


class Server:
    def __init__(self, max_queue: int) -> None:
        port = free_port()
        self.url = f"http://{LOOPBACK}:{port}"
        self.log_path = bc.results_path("queue-server.log")
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", str(port), "--max-queue", str(max_queue)]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=bc.ROOT)

    def wait_ready(self) -> float:
        import httpx

        t0 = time.monotonic()
        while time.monotonic() - t0 < SERVER_START_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/webrtc/ready", timeout=5).status_code == 200:
                    return time.monotonic() - t0
            time.sleep(0.3)
        raise TimeoutError(f"server not ready within {SERVER_START_TIMEOUT_S} s; see {self.log_path}")

    def get(self, route: str) -> Any:
        import httpx

        return httpx.get(self.url + route, timeout=HTTP_TIMEOUT_S).json()

    def ends(self, webrtc_ids: list[str]) -> list[dict[str, Any]]:
        """The server's record of session ends, once it has every one of ``webrtc_ids``
        given back (the last ones close END_STREAM_GRACE_S after their clients heard of it)."""
        deadline = time.monotonic() + ENDS_TIMEOUT_S
        while True:
            ends: list[dict[str, Any]] = self.get("/bench/ends")["ends"]
            released = {e["webrtc_id"] for e in ends if e.get("released_at") is not None}
            if set(webrtc_ids) <= released or time.monotonic() > deadline:
                return ends
            time.sleep(ENDS_POLL_S)

    def groups(self) -> dict[str, list[int]]:
        """The server's processes by role: the gateway (uvicorn, signalling, media, the
        queue's follower), the scheduler actor, the worker actors, Ray's other processes."""
        import psutil

        out: dict[str, list[int]] = {"gateway": [self.proc.pid], "scheduler": [], "workers": [], "ray": []}
        for pid in bc.descendants(self.proc.pid):
            try:
                title = " ".join(psutil.Process(pid).cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            role = "scheduler" if title.startswith("ray::Scheduler") else "workers" if title.startswith("ray::Worker") else "ray"
            out[role].append(pid)
        return out

    def rss_mb(self) -> float:
        import psutil

        return round(psutil.Process(self.proc.pid).memory_info().rss / 2**20, 1)

    def settle(self) -> float:
        """Wait until the server's processes are quiet (Ray's own keep busy after start)."""
        deadline = time.monotonic() + RAY_SETTLE_MAX_S
        while True:
            window = bc.CpuWindow({"server": [p for g in self.groups().values() for p in g]})
            time.sleep(RAY_SAMPLE_S)
            busy = window.stop()["server"]
            if busy < RAY_SETTLE_PCT or time.monotonic() > deadline:
                return busy

    def stop(self) -> None:
        bc.stop_server(self.proc, SERVER_STOP_TIMEOUT_S)
        self._log.close()


# --- run A: the handover --------------------------------------------------------------------------


class TimedViews(list):  # type: ignore[type-arg]
    """Client.queue_views that notes when each view arrived (monotonic)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, view: Any) -> None:
        self.times.append(time.monotonic())
        super().append(view)


async def wait_for(pred: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(POLL_S)
    return True


async def one_user(url: str, i: int, placed: asyncio.Event) -> dict[str, Any]:
    from runtime.clients.webrtc import Client

    client = Client(url, stream_id=LINE, fps=FPS, size=FRAME_SIZE, replay=REPLAY_FRAMES)
    views = TimedViews()
    client.queue_views = views
    rec: dict[str, Any] = {"user": i, "webrtc_id": client.webrtc_id, "posted_at": time.monotonic()}

    def on_message(msg: dict[str, Any]) -> None:
        if msg.get("type") == "end_stream" and "end_stream_at" not in rec:
            rec["end_stream_at"] = time.monotonic()
            rec["end_reason"] = (msg.get("data") or {}).get("reason")

    client.on_message.append(on_message)
    connect = asyncio.create_task(client.connect())
    try:
        if not await wait_for(lambda: bool(views) or connect.done(), JOIN_TIMEOUT_S):
            raise TimeoutError(f"user {i}: offer not answered within {JOIN_TIMEOUT_S} s")
        placed.set()
        await connect
        rec["answered_at"] = time.monotonic()
        if views:
            rec["placed_at"], first = views.times[0], views[0]
            rec["placed"] = {k: first.get(k) for k in ("position", "size", "eta_s")}
            k = next(j for j, v in enumerate(views) if v["state"] == "admitted")
            rec["admitted_at"], rec["turn"] = views.times[k], views[k]["turn"]
            rec["updates"] = len(views) - 1
        await asyncio.wait_for(client.first_frame.wait(), FIRST_FRAME_TIMEOUT_S)
        rec["first_frame_at"] = time.monotonic()
        got, sent = client.frames[-1].astype(int), client.source.base.astype(int)  # type: ignore[union-attr]
        rec["inverted"] = bool(abs(got.mean() - (255 - sent).mean()) < INVERTED_TOLERANCE)
        await asyncio.wait_for(client.ended.wait(), SESSION_END_TIMEOUT_S)
        rec["ended_at"] = time.monotonic()
    finally:
        if not connect.done():
            connect.cancel()
        await client.close()  # the browser component closes its peer on end_stream
    return rec


async def run_a(url: str, users: int) -> list[dict[str, Any]]:
    from runtime.clients.webrtc import ReplayVideoTrack

    ReplayVideoTrack(FPS, FRAME_SIZE, cycle=REPLAY_FRAMES).stop()  # encode the cycle before anyone joins
    tasks = []
    for i in range(users):  # one after another: the join order is i
        placed = asyncio.Event()
        tasks.append(asyncio.create_task(one_user(url, i, placed)))
        done, _ = await asyncio.wait([tasks[-1], asyncio.create_task(placed.wait())], timeout=JOIN_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        if tasks[-1] in done and tasks[-1].exception() is not None:
            break
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), RUN_A_TIMEOUT_S)
    errors = [f"user {i}: {r!r}" for i, r in enumerate(results) if isinstance(r, BaseException)]
    if errors:
        raise RuntimeError("; ".join(errors))
    return [r for r in results if isinstance(r, dict)]


def handovers(users: list[dict[str, Any]], ends: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pair the k-th admission with the k-th lease given back: the scheduler admits the
    head of the line in release (Scheduler.release -> _admit), one slot per release."""
    releases = sorted((e for e in ends if e.get("stream") == LINE and e.get("release_at") is not None), key=lambda e: e["release_at"])
    by_id = {u["webrtc_id"]: u for u in users}
    out = []
    for u in sorted((u for u in users if u.get("turn")), key=lambda u: u["turn"]):
        freed = releases[u["turn"] - 1]
        holder = by_id.get(freed["webrtc_id"], {})
        new = next((e for e in ends if e["webrtc_id"] == u["webrtc_id"]), {})
        h = {
            "user": u["user"],
            "turn": u["turn"],
            "freed_by": holder.get("user"),
            # the headline: the holder's session closing on the server -> first frame back
            "freed_to_first_s": u["first_frame_at"] - freed["closing_at"],
            "release_to_first_s": u["first_frame_at"] - freed["release_at"],
            "limit_to_first_s": u["first_frame_at"] - holder["end_stream_at"] if "end_stream_at" in holder else None,
            "admitted_to_first_s": u["first_frame_at"] - u["admitted_at"],
            "stages_s": {
                "close": freed["release_at"] - freed["closing_at"],  # worker close ack, peer close
                "admit": u["admitted_at"] - freed["release_at"],  # release -> the admitted view at the client
                "offer": u["answered_at"] - u["admitted_at"],  # offer again -> answer
                "media": u["first_frame_at"] - u["answered_at"],  # ICE, DTLS, first frame through
            },
            "server_connect_s": (new["connected_at"] - new["created_at"]) if new.get("connected_at") else None,
            "server_first_output_s": (new["first_output_at"] - new["created_at"]) if new.get("first_output_at") else None,
            "eta_s": u["placed"]["eta_s"],
            "waited_s": u["admitted_at"] - u["placed_at"],
            "inverted": u["inverted"],
            "order_ok": freed["release_at"] <= u["admitted_at"] + 0.05,
        }
        h["eta_error_s"] = None if h["eta_s"] is None else h["waited_s"] - h["eta_s"]
        out.append(h)
    return out


def summarize_a(hs: list[dict[str, Any]], users: list[dict[str, Any]]) -> dict[str, Any]:
    def stats(values: list[float]) -> dict[str, float | None]:
        return {"p50": bc.percentile(values, 50), "p95": bc.percentile(values, 95), "max": max(values) if values else None}

    keys = ("freed_to_first_s", "release_to_first_s", "limit_to_first_s", "admitted_to_first_s")
    out: dict[str, Any] = {k: stats([h[k] for h in hs if h[k] is not None]) for k in keys}
    out["stages_s"] = {s: stats([h["stages_s"][s] for h in hs]) for s in ("close", "admit", "offer", "media")}
    errs = [h["eta_error_s"] for h in hs if h["eta_error_s"] is not None]
    out["eta_abs_error_s"] = stats([abs(e) for e in errs])
    out["eta_mean_error_s"] = bc.mean(errs)
    out["queued"] = len(hs)
    out["all_inverted"] = all(u["inverted"] for u in users)
    out["turns_in_join_order"] = [h["user"] for h in hs] == sorted(h["user"] for h in hs)
    out["pairing_ok"] = all(h["order_ok"] for h in hs)
    out["end_reasons"] = sorted({u.get("end_reason") or "?" for u in users})
    p95 = out["freed_to_first_s"]["p95"]
    out["target_met"] = p95 is not None and p95 <= TARGET_P95_S
    return out


# --- run B: the cost of waiting -----------------------------------------------------------------------


async def offer_sdp() -> str:
    """A real aiortc offer (video sendrecv, the "text" channel), its peer closed at once: what
    a waiting browser posted; the server keeps only its ticket."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="sendrecv")
    pc.createDataChannel("text")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


class Waiter:
    """A user waiting as a browser does: its offer answered 202, then one updates stream."""

    def __init__(self, i: int) -> None:
        self.webrtc_id = f"waiter-{i:03d}"
        self.ticket = ""
        self.views: list[dict[str, Any]] = []
        self.task: asyncio.Task[None] | None = None

    async def join(self, http: Any, url: str, sdp: str) -> None:
        import json

        body = {"sdp": sdp, "type": "offer", "webrtc_id": self.webrtc_id, "stream_id": HOLD}
        r = await http.post(f"{url}/webrtc/offer", json=body)
        if r.status_code != 202:
            raise RuntimeError(f"{self.webrtc_id}: offer answered {r.status_code}: {r.text[:200]}")
        self.ticket = r.json()["queue"]["ticket"]
        opened = asyncio.Event()

        async def follow() -> None:
            headers = {"X-Queue-Ticket": self.ticket}
            async with http.stream("GET", f"{url}/webrtc/queue", params={"webrtc_id": self.webrtc_id}, headers=headers) as resp:
                opened.set()
                async for line in resp.aiter_lines():
                    if line.startswith("data: "):
                        self.views.append(json.loads(line[len("data: ") :]))

        self.task = asyncio.create_task(follow())
        await asyncio.wait([self.task, asyncio.create_task(opened.wait())], return_when=asyncio.FIRST_COMPLETED)

    async def leave(self, http: Any, url: str) -> int:
        r = await http.post(f"{url}/webrtc/queue/leave", json={"webrtc_id": self.webrtc_id, "ticket": self.ticket})
        return r.status_code


def window(server: Server, seconds: float) -> dict[str, float]:
    w = bc.CpuWindow(server.groups())
    time.sleep(seconds)
    return w.stop()


async def run_b(server: Server, waiters: int, window_s: float, profile: bool) -> dict[str, Any]:
    import httpx

    from runtime.clients.webrtc import Client

    url = server.url
    loop = asyncio.get_running_loop()

    def hold_line() -> dict[str, Any]:
        s = server.get("/bench/status")
        return {**s["events"][HOLD], "tickets": s["tickets"], "followed": s["followed"]}

    holders = [Client(url, stream_id=HOLD, fps=HOLD_FPS, size=HOLD_SIZE, replay=REPLAY_FRAMES) for _ in range(LIMIT)]
    out: dict[str, Any] = {"waiters": waiters, "window_s": window_s}
    try:
        for c in holders:
            await c.connect()
        await asyncio.wait_for(asyncio.gather(*(c.first_frame.wait() for c in holders)), FIRST_FRAME_TIMEOUT_S)
        await asyncio.sleep(SETTLE_S)
        out["rss_before_mb"] = server.rss_mb()
        out["before"] = await loop.run_in_executor(None, window, server, window_s)
        out["rss_before_end_mb"] = server.rss_mb()  # its drift with nobody waiting

        sdp = await offer_sdp()
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(HTTP_TIMEOUT_S, read=None)) as http:
            line = [Waiter(i) for i in range(waiters)]
            spy = start_profile(server, "join") if profile else []
            join_cpu = bc.CpuWindow(server.groups())
            t0 = time.monotonic()
            part = max(1, -(-waiters // JOIN_PARTS))  # ceil
            out["join_parts"] = []
            for k in range(0, waiters, part):  # one after another, as users arrive
                cpu, p0 = bc.CpuWindow(server.groups()), time.monotonic()
                for w in line[k : k + part]:
                    await w.join(http, url, sdp)
                out["join_parts"].append({"from": k, "to": min(k + part, waiters), "s": time.monotonic() - p0, "cpu": cpu.stop()})
            out["join_s"] = time.monotonic() - t0
            out["join_cpu"] = join_cpu.stop()
            if spy:
                stop_profile(spy)
            if not await wait_for(lambda: all(w.views for w in line), JOIN_TIMEOUT_S):
                raise RuntimeError(f"updates streams not all answered: {sum(1 for w in line if w.views)}/{waiters}")
            seen = await loop.run_in_executor(None, hold_line)
            out["line_with_waiters"] = seen
            out["updates_by_join_end"] = sum(len(w.views) for w in line)
            await asyncio.sleep(SETTLE_S)
            views0 = sum(len(w.views) for w in line)
            out["during"] = await loop.run_in_executor(None, window, server, window_s)
            out["updates_in_window"] = sum(len(w.views) for w in line) - views0
            out["rss_during_mb"] = server.rss_mb()
            out["last_eta_s"] = [w.views[-1].get("eta_s") for w in line[:3]] + [line[-1].views[-1].get("eta_s")]

            statuses = await asyncio.gather(*(w.leave(http, url) for w in line))
            out["leave_statuses"] = sorted(set(statuses))
            await asyncio.wait_for(asyncio.gather(*(w.task for w in line if w.task), return_exceptions=True), LINE_EMPTY_TIMEOUT_S)
            out["last_views"] = sorted({f"{w.views[-1].get('state')}/{w.views[-1].get('reason', '')}" for w in line})
        empty = {"queue": 0, "admitted": 0, "followed": 0}

        def is_empty() -> bool:
            s = hold_line()
            return all(s[k] == v for k, v in empty.items())

        for _ in range(int(LINE_EMPTY_TIMEOUT_S / LINE_POLL_S)):
            if await loop.run_in_executor(None, is_empty):
                break
            await asyncio.sleep(LINE_POLL_S)
        out["line_after_leave"] = await loop.run_in_executor(None, hold_line)
        out["line_empty"] = all(out["line_after_leave"][k] == v for k, v in empty.items())
        await asyncio.sleep(SETTLE_S)
        out["after"] = await loop.run_in_executor(None, window, server, window_s)
        out["rss_after_mb"] = server.rss_mb()
        # more users through the line: a leak grows the RSS each time, a high-water mark does not
        out["rss_after_cycles_mb"] = []
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(HTTP_TIMEOUT_S, read=None)) as http:
            for c in range(1, RSS_CYCLES + 1):
                again = [Waiter(c * waiters + i) for i in range(waiters)]
                for w in again:
                    await w.join(http, url, sdp)
                if not await wait_for(lambda again=again: all(w.views for w in again), JOIN_TIMEOUT_S):
                    raise RuntimeError("updates streams not all answered")
                await asyncio.gather(*(w.leave(http, url) for w in again))
                await asyncio.wait_for(asyncio.gather(*(w.task for w in again if w.task), return_exceptions=True), LINE_EMPTY_TIMEOUT_S)
                await asyncio.sleep(SETTLE_S)
                out["rss_after_cycles_mb"].append(server.rss_mb())
        out["line_after_cycles"] = await loop.run_in_executor(None, hold_line)
    finally:
        for c in holders:
            await c.hang_up()
    n = max(waiters, 1)
    for group in ("gateway", "scheduler", "ray", "workers"):
        idle = (out["before"][group] + out["after"][group]) / 2
        out.setdefault("idle_pct", {})[group] = round(idle, 2)
        out.setdefault("per_waiter_pct", {})[group] = round((out["during"][group] - idle) / n, 4)
    # CPU a join took (offer answered 202, updates stream opened): the join phase's CPU above
    # the idle windows' (the holders' media), in ms per user (% x s x 10 = ms)
    for group in ("gateway", "scheduler"):
        extra = out["join_cpu"][group] - out["idle_pct"][group]
        out[f"join_{group}_ms_each"] = round(10.0 * extra * out["join_s"] / n, 2)
        for jp in out["join_parts"]:
            jp[f"{group}_ms_each"] = round(10.0 * (jp["cpu"][group] - out["idle_pct"][group]) * jp["s"] / max(1, jp["to"] - jp["from"]), 2)
    out["rss_per_waiter_kb"] = round((out["rss_during_mb"] - out["rss_before_mb"]) * 1024 / n, 1)
    return out


def start_profile(server: Server, label: str) -> list[subprocess.Popen[bytes]]:
    """py-spy the gateway and the scheduler (collapsed stacks,
    bench-results/queue-profile-LABEL-ROLE.txt) until stop_profile()."""
    targets = [("gateway", server.proc.pid), *(("scheduler", pid) for pid in server.groups()["scheduler"][:1])]
    spies = []
    for role, pid in targets:
        out = bc.results_path(f"queue-profile-{label}-{role}.txt")
        cmd = ["py-spy", "record", "--pid", str(pid), "--duration", str(PROFILE_MAX_S), "--rate", "200",
               "--format", "raw", "--nonblocking", "--output", str(out)]  # fmt: skip
        spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(PROFILE_ATTACH_S)
    return spies


def stop_profile(spies: list[subprocess.Popen[bytes]]) -> None:
    import signal

    for spy in spies:
        spy.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
    for spy in spies:
        try:
            spy.wait(PROFILE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


# --- waiting for a quiet machine ------------------------------------------------------------------------


def wait_for_test_suite() -> float:
    """Seconds waited for a running pytest (another agent's suite) to finish."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < TEST_SUITE_WAIT_MAX_S:
        found = subprocess.run(["pgrep", "-f", "pytest"], capture_output=True, text=True).stdout.split()
        if not [p for p in found if int(p) != os.getpid()]:
            break
        print(f"a test suite is running (pids {' '.join(found)}): waiting ...", flush=True)
        time.sleep(TEST_SUITE_POLL_S)
    return round(time.monotonic() - t0, 1)


# --- output ---------------------------------------------------------------------------------------


def print_tables(a: dict[str, Any], b: dict[str, Any]) -> str:
    def row(label: str, s: dict[str, Any]) -> list[Any]:
        return [label, *(bc.fmt(s[k], 3) for k in ("p50", "p95", "max"))]

    rows = [
        row("slot freed -> first frame (target p95 <= 1 s)", a["freed_to_first_s"]),
        row("lease released -> first frame", a["release_to_first_s"]),
        row("holder's time limit (end_stream) -> first frame", a["limit_to_first_s"]),
        row("admitted view -> first frame", a["admitted_to_first_s"]),
        row("  stage: holder closing (worker close, peer close)", a["stages_s"]["close"]),
        row("  stage: release -> admitted view at the client", a["stages_s"]["admit"]),
        row("  stage: offer posted again -> answer", a["stages_s"]["offer"]),
        row("  stage: answer -> first processed frame", a["stages_s"]["media"]),
        row("ETA error |waited - 202's eta_s|", a["eta_abs_error_s"]),
    ]
    t1 = bc.table([f"run A: {a['queued']} queued users, seconds", "p50", "p95", "max"], rows)
    groups = ("gateway", "scheduler", "ray", "workers")
    rows2 = [
        [f"{label}", *(bc.fmt(b[k][g], 1) for g in groups), bc.fmt(b[k]["others"], 1)]
        for label, k in (("0 waiting (before)", "before"), (f"{b['waiters']} waiting", "during"), ("0 waiting (after they left)", "after"))
    ]
    rows2.append(["per waiting user", *(bc.fmt(b["per_waiter_pct"][g], 3) for g in groups), "-"])
    t2 = bc.table(["run B: CPU % (100 = one core)", *groups, "others"], rows2)
    rows3 = [
        [f"users {jp['from'] + 1}-{jp['to']} join (line {jp['from']}..{jp['to'] - 1} long)", bc.fmt(jp["gateway_ms_each"], 1), bc.fmt(jp["scheduler_ms_each"], 1), bc.fmt(jp["s"] / max(1, jp["to"] - jp["from"]) * 1000, 1)]
        for jp in b["join_parts"]
    ]
    t3 = bc.table(["run B: one join (202 + updates stream)", "gateway CPU ms", "scheduler CPU ms", "wall ms"], rows3)
    n = max(1, b["waiters"])
    rows4 = [
        ["gateway RSS, MB", f"{b['rss_before_mb']} -> {b['rss_before_end_mb']}", str(b["rss_during_mb"]), " -> ".join(str(v) for v in (b["rss_after_mb"], *b["rss_after_cycles_mb"]))],
        ["updates per waiting user per s", "-", bc.fmt(b["updates_in_window"] / n / b["window_s"], 2), "-"],
    ]
    t4 = bc.table(["run B", "0 waiting (window start -> end)", f"{b['waiters']} waiting", f"after they left (then after {RSS_CYCLES} more join+leave cycles)"], rows4)
    text = "\n\n".join((t1, t2, t3, t4))
    print(text, flush=True)
    return text


def plot(path: Path, hs: list[dict[str, Any]], b: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    xs = np.arange(len(hs))
    bottom = np.zeros(len(hs))
    stages = (
        ("close", "holder closing", "tab:grey"),
        ("admit", "release -> admitted view", "tab:orange"),
        ("offer", "offer again -> answer", "tab:blue"),
        ("media", "answer -> first frame", "tab:green"),
    )
    for key, label, color in stages:
        vals = np.array([h["stages_s"][key] for h in hs])
        ax1.bar(xs, vals, bottom=bottom, color=color, label=label, width=0.7)
        bottom += vals
    ax1.axhline(TARGET_P95_S, color="red", ls="--", lw=1, label=f"target p95 {TARGET_P95_S:.0f} s")
    p95 = bc.percentile([h["freed_to_first_s"] for h in hs], 95)
    if p95 is not None:
        ax1.axhline(p95, color="black", ls=":", lw=1, label=f"measured p95 {p95:.2f} s")
    ax1.set_xticks(xs, [str(h["turn"]) for h in hs], fontsize=8)
    ax1.set_xlabel("queued user (turn)")
    ax1.set_ylabel("seconds")
    ax1.set_title(f"slot freed -> next user's first processed frame\nconcurrency_limit={LIMIT}, time_limit={TIME_LIMIT_S:.0f} s, {len(hs) + LIMIT} users")
    ax1.legend(fontsize=7, loc="upper left")

    labels = ["0 waiting\n(before)", f"{b['waiters']}\nwaiting", "0 waiting\n(after)"]
    keys = ("before", "during", "after")
    gx = np.arange(3)
    width = 0.25
    for j, (g, color) in enumerate((("gateway", "tab:blue"), ("scheduler", "tab:orange"), ("ray", "tab:grey"))):
        ax2.bar(gx + (j - 1) * width, [b[k][g] for k in keys], width, label=g, color=color)
    n = b["waiters"]
    delta = {g: b["during"][g] - b["idle_pct"][g] for g in ("gateway", "scheduler")}
    ax2.set_xticks(gx, labels, fontsize=8)
    ax2.set_ylabel("CPU %, 100 = one core")
    ax2.set_title(
        f"cost of waiting, {LIMIT} slots held: {n} waiting users change\n"
        f"the gateway by {delta['gateway']:+.1f} %, the scheduler by {delta['scheduler']:+.1f} % (vs idle);\n"
        f"gateway RSS {b['rss_per_waiter_kb']:+.0f} KB/user; a join: {b['join_gateway_ms_each']:.0f} ms gateway"
        f" + {b['join_scheduler_ms_each']:.0f} ms scheduler CPU",
        fontsize=8,
    )
    top = max(b[k][g] for k in keys for g in ("gateway", "scheduler", "ray"))
    ax2.set_ylim(0, top * 1.4)
    ax2.legend(fontsize=7, ncol=3, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", type=int, metavar="PORT", help="(internal) run the server on this port")
    ap.add_argument("--max-queue", type=int, default=WAITERS, help="(with --serve) each line's max_queue")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_USERS} clients, {QUICK_WAITERS} waiting, {QUICK_WINDOW_S:.0f} s windows")
    ap.add_argument("--profile", action="store_true", help="py-spy the gateway while the waiting users join (needs py-spy)")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a running test suite or a quiet machine")
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve, args.max_queue)
        return
    users = QUICK_USERS if args.quick else USERS
    waiters = QUICK_WAITERS if args.quick else WAITERS
    window_s = QUICK_WINDOW_S if args.quick else WINDOW_S
    waited = 0.0 if args.no_wait else wait_for_test_suite()
    quiet = bc.wait_quiet(QUIET_THRESHOLD_PCT, 2.0 if args.no_wait else QUIET_WAIT_MAX_S)
    load = os.getloadavg()
    print(f"waited {waited} s for tests; machine {quiet}% busy, load {load[0]:.2f}", flush=True)

    server = Server(max(waiters, users))
    try:
        ready = server.wait_ready()
        settled = server.settle()
        print(f"server ready in {ready:.1f} s; its processes then {settled:.0f}% busy", flush=True)
        users_a = asyncio.run(run_a(server.url, users))
        ends = server.ends([u["webrtc_id"] for u in users_a])
        hs = handovers(users_a, ends)
        a = summarize_a(hs, users_a)
        time.sleep(SETTLE_S)
        b = asyncio.run(run_b(server, waiters, window_s, args.profile))
    finally:
        server.stop()

    text = print_tables(a, b)
    print(
        f"\ntarget p95 <= {TARGET_P95_S} s: {'met' if a['target_met'] else 'MISSED'}; turns in join order: {a['turns_in_join_order']}; "
        f"pairing ok: {a['pairing_ok']}; frames inverted: {a['all_inverted']}; ends: {a['end_reasons']}\n"
        f"run B: line empty after leaving: {b['line_empty']} {b['line_after_leave']}; last views {b['last_views']}; "
        f"RSS {b['rss_before_mb']} -> {b['rss_during_mb']} -> {b['rss_after_mb']} MB; "
        f"join: {b['join_s']:.2f} s for {waiters} ({b['join_gateway_ms_each']} ms gateway, {b['join_scheduler_ms_each']} ms scheduler CPU each; "
        f"by line length: {[(jp['from'], jp['to'], jp['gateway_ms_each'], jp['scheduler_ms_each']) for jp in b['join_parts']]}); "
        f"{b['updates_by_join_end']} updates delivered by the last join; {b['updates_in_window']} in the {window_s:.0f} s window",
        flush=True,
    )
    data = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": bc.machine_info(),
        "load_before": load,
        "quiet_before_pct": quiet,
        "waited_for_tests_s": waited,
        "config": {
            "users": users, "limit": LIMIT, "time_limit_s": TIME_LIMIT_S, "frame_size": FRAME_SIZE, "fps": FPS,
            "waiters": waiters, "window_s": window_s, "target_p95_s": TARGET_P95_S,
        },
        "run_a": {"summary": a, "handovers": hs, "users": users_a, "server_ends": ends},
        "run_b": b,
        "table": text,
    }
    print(f"wrote {bc.write_json(RESULT_JSON, data)}")
    png = bc.results_path(RESULT_PNG)
    plot(png, hs, b)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
