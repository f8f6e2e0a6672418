"""Failover under repeated kills (issue 21): N sessions stream while their workers and media
processes are killed (SIGKILL) at random; per kill, how long the affected sessions went
without a processed frame, whether any session was lost, how many clients resumed.

The server is this file run with ``--serve PORT``, in a process of its own: a gateway on
127.0.0.1 with a fresh local Ray (``RAY_AUTH_MODE=disabled``), ``gateway.processes: 2``
(two media processes, the app's process keeps signalling), one video stream whose handler
inverts each frame, ``pool.prewarm`` idle workers kept ready for the replacements
(``--prewarm``, default 2), ``concurrency_limit`` = N + prewarm (``--limit``): a stream's
pool never holds more workers than its concurrency_limit, idle ones included, so with the
limit at N and N sessions streaming no worker is pre-warmed and every failover waits for a
cold worker start (measured with ``--limit N``). And ``pool.max_restarts`` raised to
``--max-restarts`` (default 1000): a session may draw several worker kills within the
default 60 s restart window here, and the policy that ends such a session is not what this
measures (tests/media/test_failover.py tests it). GET /bench/targets gives the media
processes' pids and which of them holds each session (the front's MediaSupervisor).

The handler paints its worker's pid (mod 4096, three flat grey base-16 digits, as
tests/media/test_resume.py paints its count) into every frame, and writes the pid to a
file named after the session (``get_current_context().webrtc_id``) the first time it serves
it: so the bench knows each session's worker pid, and which worker made each frame the
client decodes. N clients (runtime/clients/webrtc.py, ``auto_resume=True``, 320x240 at
15 fps: ``--size``, ``--fps``) connect one after another and stream; each frame's arrival
time (monotonic) and painted pid are noted as it is decoded. The clients encode live, as a
browser does, and so answer the server's keyframe requests: a replaying client (``--replay
N``, the other benchmarks' cheap load) has a keyframe only at the start of its N-frame
cycle, and a resumed peer connection's new decoder waits for it (up to 10 s at N=150,
which a first run here measured as gap).

Then for ``--seconds`` (default 120) a kill every ``--every`` s (default 8, jittered by
+-JITTER): the kind follows ``--mix`` (the share of media-process kills, default 0.5:
worker, media, worker, ...). A kill waits until the deployment has healed from the last one
(every live session had a frame within HEALED_FRAME_S and is not resuming, its worker's pid
is alive, both media processes are up), at most HEAL_WAIT_MAX_S; the wait is recorded.

* worker: a random live session's worker (its pid from the handler's file) gets SIGKILL.
  The media process asks the scheduler for a fresh worker on the same lease; the same
  peer connection streams on. Gap = kill -> the first frame decoded at the client that a
  different worker painted (frames the old worker made before it died, still in flight,
  do not count).
* media: one of the media processes holding at least one session (random) gets SIGKILL;
  its sessions' clients notice the silence (AUTO_RESUME_SILENCE_S = 2 s) and re-offer with
  their key; the front places them on the live media process, which takes their worker
  over. Gap = kill -> the first frame decoded on the client's new peer connection (frames
  the dead process sent before it died, decoded just after the kill, do not count).

Per affected session the JSON also has the longest interval between two decoded frames
from 1 s before the kill to 1 s after the gap ended ("longest inter-frame"), the resumes
and "handler restarted" warnings the client saw, and for the sessions the kill did not hit,
their longest inter-frame interval over the same span (collateral). A session is lost if
its client ends (``client.ended``: end_stream, a failed resume) or has no new frame within
LOST_AFTER_S of a kill that hit it; the run waits for the last kill's sessions to recover
(at most LOST_AFTER_S) before it ends. The server's side of each kill goes to the JSON too,
from its log and the pid files: when the media process logged the new worker's "took
over", when the client's resume or new peer connection reached it, and when the new
worker's handler was first called for the session.

Before measuring, the script waits for a running test suite (``pgrep -f pytest``, at most
30 min; ``--no-wait`` skips that) and for a quiet machine. Every pid killed is checked to be
a ``ray::Worker`` or ``MediaProcess`` below this run's server process first.

    python scripts/bench_failover.py                   # ~3 min: 4 sessions, 120 s of kills
    python scripts/bench_failover.py --seconds 30      # a short run
    python scripts/bench_failover.py --mix 0           # worker kills only

Prints a Markdown table and writes bench-results/bench_failover.json, bench_failover.png
and the server's log, bench-results/failover-server.log.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import logging
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
# this checkout's code, not whichever the venv's editable install points at (the server, its
# Ray workers and the clients must run one version: PYTHONPATH reaches the server's workers)
sys.path.insert(0, str(SCRIPTS.parent))

import bench_common as bc  # noqa: E402
import bench_queue as bq  # noqa: E402  (free_port, wait_for_test_suite)

LOOPBACK = "127.0.0.1"
STREAM_ID = "failover"
SESSIONS = 4  # concurrent sessions (--sessions)
MEDIA_PROCESSES = 2  # gateway.processes (--processes)
PREWARM = 2  # pool.prewarm: idle workers kept ready for replacements (--prewarm)
MAX_RESTARTS = 1000  # pool.max_restarts (--max-restarts): the restart policy out of the way
FRAME_SIZE = (320, 240)  # W, H each client sends (--size)
FPS = 15.0  # frames/s each client sends (--fps)
REPLAY_FRAMES = 0  # --replay: 0 = the clients encode live (keyframes on request; see the docstring)
STALL_S = 0.5  # inter-frame intervals longer than this go to the JSON, per session
RUN_S = 120.0  # the kill phase (--seconds)
EVERY_S = 8.0  # mean time between two kills (--every)
JITTER = 0.25  # each interval is EVERY_S x uniform(1 - JITTER, 1 + JITTER)
MEDIA_SHARE = 0.5  # share of kills aimed at a media process (--mix); the rest at a worker
WARMUP_S = 5.0  # streaming after the last session came up, before the first kill
HEALED_FRAME_S = 1.0  # healed: every live session had a frame this recently ...
HEAL_WAIT_MAX_S = 30.0  # ... a kill waits for that at most this long (then kills anyway)
LOST_AFTER_S = 30.0  # a session hit by a kill with no new frame by then is lost
AROUND_S = 1.0  # the longest inter-frame interval is looked for this far either side of a gap
POLL_S = 0.05  # the bench's watch loop: resumes, pid files, health
TARGETS_POLL_S = 0.5  # GET /bench/targets at most this often (and right before a media kill)
SESSION_UP_TIMEOUT_S = 60.0  # a client's offer answered and its first frame back
TARGET_WORKER_P95_S = 1.0  # issue 21's targets on this machine: worker failover gap p95 ...
TARGET_MEDIA_P95_S = 3.0  # ... media-process resume gap p95
SERVER_START_TIMEOUT_S = 240.0  # Ray start, both media processes, the pool warm
SERVER_STOP_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 10.0
QUIET_THRESHOLD_PCT = 40.0  # the machine this idle before the run (100 = one core) ...
QUIET_WAIT_MAX_S = 60.0  # ... waited for at most this long
WORKER_TITLE = "ray::Worker"  # process titles of what may be killed (checked before each kill)
MEDIA_TITLE = "MediaProcess"
# the worker's pid painted into each frame: three base-16 digits, each a flat grey block
# (VP8 keeps a flat block's level within a few steps; a digit's band is 16 levels)
TAG_DIGITS = 3
TAG_BAND = 16
TAG_MOD = TAG_BAND**TAG_DIGITS
TAG_ROWS = slice(100, 140)
TAG_INSET = 8  # read each block's inner part only (its edges ring)
TRACE_MATCH_S = 15.0  # a server log line belongs to the last kill before it, if within this
# the server log's lines about the sessions (local wall-clock time first)
LOG_TIME = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"
LOG_TAKEOVER = LOG_TIME + r" INFO rtcpool\.session: session (\w+): worker pid (\d+) took over.* after ([\d.]+) s"
LOG_RESUMED = LOG_TIME + r" INFO rtcpool\.engine: session (\w+) resumed here"
LOG_PEER = LOG_TIME + r" INFO rtcpool\.session: session (\w+): the client's new peer connection replaced"
RESULT_JSON = "bench_failover.json"
RESULT_PNG = "bench_failover.png"
SERVER_LOG = "failover-server.log"


# --- the handler (runs in the workers) -----------------------------------------------------------


def tag_columns(i: int) -> slice:
    return slice(40 + 50 * i, 80 + 50 * i)


def paint_tag(frame: np.ndarray, tag: int) -> None:
    for i in range(TAG_DIGITS):
        digit = (tag // TAG_BAND ** (TAG_DIGITS - 1 - i)) % TAG_BAND
        frame[TAG_ROWS, tag_columns(i)] = digit * TAG_BAND + TAG_BAND // 2


def read_tag(frame: np.ndarray) -> int | None:
    if frame.shape[0] < TAG_ROWS.stop or frame.shape[1] < tag_columns(TAG_DIGITS - 1).stop:
        return None
    tag = 0
    for i in range(TAG_DIGITS):
        cols = tag_columns(i)
        block = frame[TAG_ROWS.start + TAG_INSET : TAG_ROWS.stop - TAG_INSET, cols.start + TAG_INSET : cols.stop - TAG_INSET]
        tag = tag * TAG_BAND + min(TAG_BAND - 1, int(float(block.mean())) // TAG_BAND)
    return tag


class TaggedInvert:
    """Inverts each frame and paints its worker's pid into it; the first call for a session
    in a worker writes ``<pids_dir>/<webrtc_id>`` = the pid (a replacement writes its own)."""

    def __init__(self, pids_dir: str) -> None:
        self.pids_dir = pids_dir
        self.reported: set[str] = set()

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        out = 255 - frame
        pid = os.getpid()
        paint_tag(out, pid % TAG_MOD)
        # the worker's own package, imported before any session: runtime.stream (the same
        # function for apps) costs a fresh worker ~1-2 s of imports on its first call, which
        # a first run here measured as failover gap
        from workers import get_current_context

        webrtc_id = get_current_context().webrtc_id
        if webrtc_id not in self.reported:
            self.reported.add(webrtc_id)
            path = os.path.join(self.pids_dir, webrtc_id)
            with open(path + ".tmp", "w") as f:
                f.write(str(pid))
            os.replace(path + ".tmp", path)
        return out


# --- the server (this file, run with --serve PORT) --------------------------------------------


def serve(args: argparse.Namespace) -> None:
    import ray
    import uvicorn
    from fastapi import FastAPI

    from runtime.config_loader import load_config
    from runtime.front.gateway import Gateway

    rtc_log = logging.getLogger("rtcpool")
    rtc_log.setLevel(logging.INFO)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    rtc_log.addHandler(stderr)

    config = load_config(overrides={
        "gateway": {"ice_host_addresses": [LOOPBACK], "ice_servers": [], "processes": args.processes},
        "pool": {"prewarm": args.prewarm, "max_restarts": args.max_restarts},
    })  # fmt: skip
    gw = Gateway(config)
    gw.add_stream(TaggedInvert(args.pids_dir), event_id=STREAM_ID, concurrency_limit=args.limit, queue=False)
    gw.start()
    gw.wait_warm()

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        await gw.aclose(drop_pools=True)

    app = FastAPI(lifespan=lifespan)
    gw.mount(app)

    @app.get("/bench/targets")
    async def bench_targets() -> dict[str, Any]:
        sup = gw.supervisor
        return {
            "placed": {wid: slot.load.pid for wid, slot in list(sup.placed.items())},
            "media": [slot.load.pid for slot in list(sup.slots)],
        }

    try:
        uvicorn.run(app, host=LOOPBACK, port=args.serve, loop="uvloop", log_level="warning")
    finally:
        ray.shutdown()


class Server:
    def __init__(self, args: argparse.Namespace, pids_dir: str) -> None:
        port = bq.free_port()
        self.url = f"http://{LOOPBACK}:{port}"
        self.log_path = bc.results_path(SERVER_LOG)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        cmd = [
            sys.executable, str(Path(__file__).resolve()), "--serve", str(port), "--pids-dir", pids_dir,
            "--sessions", str(args.sessions), "--processes", str(args.processes), "--prewarm", str(args.prewarm),
            "--max-restarts", str(args.max_restarts), "--limit", str(args.limit),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(bc.ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=bc.ROOT, env=env)

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

    def stop(self) -> None:
        bc.stop_server(self.proc, SERVER_STOP_TIMEOUT_S)
        self._log.close()


def ours(server_pid: int, pid: int, title: str) -> bool:
    """``pid`` is below this run's server and its process title names ``title``: safe to kill."""
    import psutil

    if pid not in bc.descendants(server_pid):
        return False
    try:
        cmd = " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    head = cmd.split(" ", 1)[0]
    return head.startswith(WORKER_TITLE) if title == WORKER_TITLE else title in head


def alive(pid: int | None) -> bool:
    import psutil

    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --- the clients ------------------------------------------------------------------------------


class TimedFrames(list[Any]):
    """Client.frames that notes each decoded frame's arrival (monotonic) and painted tag."""

    def __init__(self, client: Any) -> None:
        super().__init__()
        self.client = client
        self.times: list[float] = []
        self.tags: list[int | None] = []
        # the client's peer connection then (a resume makes a new one): id() of it
        self.pcs: list[int] = []

    def append(self, frame: Any) -> None:
        self.times.append(time.monotonic())
        self.tags.append(read_tag(frame))
        self.pcs.append(id(self.client.pc))
        super().append(frame)


class Watched:
    """One client and what happened to it: frames, resumes, warnings, its workers' pids."""

    def __init__(self, index: int, url: str, fps: float, size: tuple[int, int], replay: int) -> None:
        from runtime.clients.webrtc import Client

        self.index = index
        self.client = Client(url, stream_id=STREAM_ID, fps=fps, size=size, replay=replay, auto_resume=True, queue=False)
        self.frames = TimedFrames(self.client)
        self.client.frames = self.frames
        self.resume_times: list[float] = []
        self.warnings: list[tuple[float, str]] = []
        self.pids: list[tuple[float, int, float]] = []  # (first seen, worker pid, its file's mtime: epoch)
        self.ended_at: float | None = None
        self.lost_at: float | None = None
        self.client.on_message.append(self._on_message)

    def _on_message(self, msg: dict[str, Any]) -> None:
        if msg.get("type") in ("warning", "error", "end_stream"):
            self.warnings.append((time.monotonic(), f"{msg.get('type')}: {msg.get('message') or msg.get('data')}"))

    @property
    def webrtc_id(self) -> str:
        return self.client.webrtc_id

    @property
    def worker_pid(self) -> int | None:
        return self.pids[-1][1] if self.pids else None

    @property
    def gone(self) -> bool:
        return self.ended_at is not None or self.lost_at is not None

    def watch(self, pids_dir: Path) -> None:
        now = time.monotonic()
        while len(self.resume_times) < self.client.resumes:
            self.resume_times.append(now)
        if self.ended_at is None and self.client.ended.is_set():
            self.ended_at = now
        with contextlib.suppress(OSError, ValueError):
            path = pids_dir / self.webrtc_id
            pid = int(path.read_text())
            if pid != self.worker_pid:
                self.pids.append((now, pid, path.stat().st_mtime))

    def last_frame_at(self) -> float | None:
        return self.frames.times[-1] if self.frames.times else None


async def connect_all(url: str, n: int, fps: float, size: tuple[int, int], replay: int) -> list[Watched]:
    from runtime.clients.webrtc import ReplayVideoTrack

    if replay:
        ReplayVideoTrack(fps, size, cycle=replay).stop()  # encode the cycle before anyone joins
    out = []
    for i in range(n):  # one after another, as users arrive
        w = Watched(i, url, fps, size, replay)
        await asyncio.wait_for(w.client.connect(), SESSION_UP_TIMEOUT_S)
        await asyncio.wait_for(w.client.first_frame.wait(), SESSION_UP_TIMEOUT_S)
        out.append(w)
    return out


# --- the kills ---------------------------------------------------------------------------------


class Run:
    def __init__(self, server: Server, pids_dir: Path, args: argparse.Namespace) -> None:
        self.server, self.pids_dir, self.args = server, pids_dir, args
        self.rng = random.Random(args.seed)
        self.watched: list[Watched] = []
        self.kills: list[dict[str, Any]] = []
        self.targets: dict[str, Any] = {"placed": {}, "media": []}
        self._targets_at = 0.0
        self.t0 = 0.0  # monotonic start of the kill phase
        # the bench's own event loop (the clients' too): a watch loop late by more than
        # STALL_S means a client-side stall, not the server's (start, lateness), monotonic
        self.loop_stalls: list[tuple[float, float]] = []
        self._watched_at: float | None = None

    async def refresh_targets(self, http: Any, force: bool = False) -> dict[str, Any]:
        if force or time.monotonic() - self._targets_at > TARGETS_POLL_S:
            self.targets = (await http.get(self.server.url + "/bench/targets")).json()
            self._targets_at = time.monotonic()
        return self.targets

    def watch(self) -> None:
        now = time.monotonic()
        if self._watched_at is not None and now - self._watched_at > POLL_S + STALL_S:
            self.loop_stalls.append((self._watched_at, now - self._watched_at))
        self._watched_at = now
        for w in self.watched:
            w.watch(self.pids_dir)
            if w.lost_at is None and w.ended_at is None:
                # no new frame for LOST_AFTER_S after a kill that hit it
                for k in self.kills:
                    if w.index in k["hit"] and now - k["at"] > LOST_AFTER_S and not self._recovered(w, k):
                        w.lost_at = now
                        break

    @staticmethod
    def _recovered(w: Watched, kill: dict[str, Any]) -> bool:
        """``w`` has had a frame made after ``kill`` (remembered: the watch loop asks often)."""
        done: set[int] = kill.setdefault("recovered", set())
        if w.index not in done and recovery_time(w, kill) is not None:
            done.add(w.index)
        return w.index in done

    def healed(self) -> bool:
        now = time.monotonic()
        live_media = [p for p in self.targets.get("media", []) if alive(p)]
        if len(live_media) < self.args.processes:
            return False
        placed = self.targets.get("placed", {})
        for w in self.watched:
            if w.gone:
                continue
            last = w.last_frame_at()
            if last is None or now - last > HEALED_FRAME_S or w.client.resuming is not None:
                return False
            if not alive(w.worker_pid) or placed.get(w.webrtc_id) not in live_media:
                return False
        return True

    async def kill_phase(self, http: Any) -> None:
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        next_at = t0 + self.interval()
        media_share = self.args.mix
        k = 0
        while True:
            now = time.monotonic()
            if now - t0 >= self.args.seconds:
                break
            self.watch()
            await self.refresh_targets(http)
            if now < next_at:
                await asyncio.sleep(POLL_S)
                continue
            # the kind: media when the running count of media kills falls behind the share
            kind = "media" if int((k + 1) * media_share) > int(k * media_share) else "worker"
            wait_from = now
            while not self.healed() and time.monotonic() - wait_from < HEAL_WAIT_MAX_S:
                await asyncio.sleep(POLL_S)
                self.watch()
                await self.refresh_targets(http)
            healed = self.healed()
            waited = time.monotonic() - wait_from
            if all(w.gone for w in self.watched):
                break
            await self.refresh_targets(http, force=True)
            kill = await loop.run_in_executor(None, self.kill_one, kind)
            if kill is not None:
                kill.update(n=k, healed=healed, heal_wait_s=round(waited, 3), at_s=round(kill["at"] - t0, 3))
                self.kills.append(kill)
                hit = ", ".join(f"session {i}" for i in kill["hit"]) or "no session"
                print(f"  {kill['at_s']:6.1f} s  kill {k}: {kind} pid {kill['pid']} ({hit}); healed {healed} after {waited:.1f} s", flush=True)
                k += 1
            next_at = time.monotonic() + self.interval()
        # the last kill's sessions: recovered or lost
        deadline = time.monotonic() + LOST_AFTER_S + 1.0
        while time.monotonic() < deadline:
            self.watch()
            if all(w.gone or all(self._recovered(w, kl) for kl in self.kills if w.index in kl["hit"]) for w in self.watched):
                break
            await asyncio.sleep(POLL_S)
        await asyncio.sleep(AROUND_S)  # the frames after the last gap (its longest inter-frame interval)
        self.watch()

    def interval(self) -> float:
        return self.args.every * self.rng.uniform(1.0 - JITTER, 1.0 + JITTER)

    def kill_one(self, kind: str) -> dict[str, Any] | None:
        """SIGKILL a worker of a random live session, or a media process holding sessions."""
        server_pid = self.server.proc.pid
        live = [w for w in self.watched if not w.gone]
        if kind == "worker":
            self.rng.shuffle(live)
            for w in live:
                pid = w.worker_pid
                if pid is not None and ours(server_pid, pid, WORKER_TITLE):
                    at, wall = time.monotonic(), time.time()
                    os.kill(pid, signal.SIGKILL)
                    return {"kind": kind, "pid": pid, "at": at, "wall": wall, "hit": [w.index]}
            return None
        placed: dict[str, int] = self.targets.get("placed", {})
        holding = sorted({pid for wid, pid in placed.items() if any(w.webrtc_id == wid for w in live)})
        self.rng.shuffle(holding)
        for pid in holding:
            if ours(server_pid, pid, MEDIA_TITLE):
                hit = [w.index for w in live if placed.get(w.webrtc_id) == pid]
                pcs = {w.index: id(w.client.pc) for w in live}
                at, wall = time.monotonic(), time.time()
                os.kill(pid, signal.SIGKILL)
                return {"kind": kind, "pid": pid, "at": at, "wall": wall, "hit": hit, "pcs": pcs}
        return None


# --- measuring ------------------------------------------------------------------------------------


def recovery_time(w: Watched, kill: dict[str, Any]) -> float | None:
    """When ``w`` decoded its first frame made after ``kill``: for a worker kill, the first
    one painted by another worker; for a media kill, the first one at all."""
    times, tags, pcs = w.frames.times, w.frames.tags, w.frames.pcs
    start = bisect.bisect_right(times, kill["at"])
    if kill["kind"] == "media":
        # frames the dead process sent before it died, decoded after: not the way back
        old_pc = kill["pcs"][w.index]
        return next((times[i] for i in range(start, len(times)) if pcs[i] != old_pc), None)
    old = kill["pid"] % TAG_MOD
    # a replacement whose pid paints the same tag (1 in TAG_MOD): any frame then
    new_pids = [p for t, p, _ in w.pids if t >= kill["at"] and p != kill["pid"]]
    same_tag = bool(new_pids) and new_pids[0] % TAG_MOD == old
    for i in range(start, len(times)):
        if same_tag or (tags[i] is not None and tags[i] != old):
            return times[i]
    return None


def longest_interval(times: list[float], t_from: float, t_to: float) -> float | None:
    """The longest interval between two consecutive frames that overlaps [t_from, t_to]."""
    lo = max(0, bisect.bisect_left(times, t_from) - 1)
    hi = min(len(times), bisect.bisect_right(times, t_to) + 1)
    span = times[lo:hi]
    if len(span) < 2:
        return None
    return max(b - a for a, b in zip(span, span[1:], strict=False))


def measure(run: Run) -> list[dict[str, Any]]:
    out = []
    for n, kill in enumerate(run.kills):
        # the windows below end at the next kill at the latest: its gap is its own
        cap = run.kills[n + 1]["at"] if n + 1 < len(run.kills) else float("inf")
        rec = {k: kill[k] for k in ("n", "kind", "pid", "at_s", "healed", "heal_wait_s")}
        # to read beside the server's log (its lines carry local wall-clock times)
        rec["wall"] = time.strftime("%H:%M:%S", time.localtime(kill["wall"])) + f".{int(kill['wall'] % 1 * 1000):03d}"
        rec["sessions"] = []
        ends = []
        for i in kill["hit"]:
            w = run.watched[i]
            back = recovery_time(w, kill)
            lost = back is None or back - kill["at"] > LOST_AFTER_S or (w.ended_at is not None and w.ended_at <= (back or float("inf")))
            end = back if back is not None else kill["at"] + LOST_AFTER_S
            ends.append(end)
            window_end = min(end + AROUND_S, cap)
            before = [t for t in w.frames.times if t <= kill["at"]]
            tags_before = [tg for t, tg in zip(w.frames.times, w.frames.tags, strict=True) if kill["at"] - AROUND_S <= t <= kill["at"]]
            rec["sessions"].append({
                "session": i,
                "gap_s": None if back is None else round(back - kill["at"], 3),
                "longest_interframe_s": _round(longest_interval(w.frames.times, kill["at"] - AROUND_S, window_end)),
                "last_frame_before_s": round(kill["at"] - before[-1], 3) if before else None,
                "lost": lost,
                "resumes": sum(1 for t in w.resume_times if kill["at"] <= t <= window_end),
                "warnings": [m for t, m in w.warnings if kill["at"] <= t <= window_end],
                # the painted pid read back right (frames of the second before the kill)
                "tag_read_ok": (sum(1 for tg in tags_before if tg == kill["pid"] % TAG_MOD) / len(tags_before))
                if kill["kind"] == "worker" and tags_before else None,
            })  # fmt: skip
        span_end = min((max(ends) if ends else kill["at"]) + AROUND_S, cap)
        others = [w for w in run.watched if w.index not in kill["hit"] and w.ended_at is None]
        coll = [longest_interval(w.frames.times, kill["at"] - AROUND_S, span_end) for w in others]
        rec["collateral_longest_interframe_s"] = _round(max((c for c in coll if c is not None), default=None))
        out.append(rec)
    return out


def server_timeline(kills: list[dict[str, Any]], run: Run, log_text: str) -> None:
    """Add to each kill what the server says of it, in s after the kill: the media process's
    "took over" (worker kills; and the duration it logged, from its noticing the death), when
    the client's new peer connection or its resume reached the server, and when the new
    worker's handler was first called for the session."""
    ids = {w.webrtc_id: w.index for w in run.watched}
    events: list[tuple[float, str, int, float | None]] = []  # (epoch, what, session, logged duration)
    for what, pattern in (("took_over", LOG_TAKEOVER), ("resumed_here", LOG_RESUMED), ("peer_replaced", LOG_PEER)):
        for m in re.finditer(pattern, log_text):
            if m.group(2) in ids:
                stamp, ms = m.group(1).split(",")
                at = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000.0
                events.append((at, what, ids[m.group(2)], float(m.group(4)) if what == "took_over" else None))
    walls = [k["wall"] for k in run.kills]
    for n, (kill, rec) in enumerate(zip(run.kills, kills, strict=True)):
        until = min(walls[n + 1] if n + 1 < len(walls) else float("inf"), kill["wall"] + TRACE_MATCH_S)
        for s in rec["sessions"]:
            for at, what, i, logged in events:
                if i == s["session"] and kill["wall"] <= at < until:
                    s.setdefault("server", {}).setdefault(f"{what}_after_s", round(at - kill["wall"], 3))
                    if logged is not None:
                        s["server"].setdefault("took_over_logged_s", logged)
            # the new worker's first handler call for the session (its pid file's mtime)
            w = run.watched[s["session"]]
            for _, pid, written in w.pids:
                if pid != kill["pid"] and kill["wall"] <= written < until and kill["kind"] == "worker":
                    s.setdefault("server", {})["new_worker_first_call_after_s"] = round(written - kill["wall"], 3)
                    break


def _round(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(v, digits)


def summarize(kills: list[dict[str, Any]], watched: list[Watched]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, target in (("worker", TARGET_WORKER_P95_S), ("media", TARGET_MEDIA_P95_S)):
        ks = [k for k in kills if k["kind"] == kind]
        hits = [s for k in ks for s in k["sessions"]]
        gaps = [s["gap_s"] for s in hits if s["gap_s"] is not None and not s["lost"]]
        longest = [s["longest_interframe_s"] for s in hits if s["longest_interframe_s"] is not None and not s["lost"]]
        coll = [k["collateral_longest_interframe_s"] for k in ks if k["collateral_longest_interframe_s"] is not None]
        p95 = bc.percentile(gaps, 95)
        out[kind] = {
            "kills": len(ks),
            "sessions_hit": len(hits),
            "gap_p50_s": bc.percentile(gaps, 50),
            "gap_p95_s": p95,
            "gap_max_s": max(gaps) if gaps else None,
            "longest_interframe_p95_s": bc.percentile(longest, 95),
            "longest_interframe_max_s": max(longest) if longest else None,
            "collateral_longest_interframe_max_s": max(coll) if coll else None,
            "lost": sum(1 for s in hits if s["lost"]),
            "resumes": sum(s["resumes"] for s in hits),
            "restart_warnings": sum(1 for s in hits for m in s["warnings"] if "restarted" in m),
            "not_healed_before": sum(1 for k in ks if not k["healed"]),
            # worker kills: the media process's own "took over after" (detection -> new worker's ready)
            "server_took_over_p50_s": bc.percentile([s["server"]["took_over_logged_s"] for s in hits if "took_over_logged_s" in s.get("server", {})], 50),
            "server_took_over_max_s": max([s["server"]["took_over_logged_s"] for s in hits if "took_over_logged_s" in s.get("server", {})], default=None),
            "target_p95_s": target,
            "target_met": p95 is not None and p95 <= target and not any(s["lost"] for s in hits),
        }
    out["sessions"] = len(watched)
    out["sessions_lost"] = sum(1 for w in watched if w.gone)
    out["resumes_total"] = sum(w.client.resumes for w in watched)
    out["tag_read_ok_min"] = min((s["tag_read_ok"] for k in kills for s in k["sessions"] if s["tag_read_ok"] is not None), default=None)
    return out


# --- output ---------------------------------------------------------------------------------------


def print_table(summary: dict[str, Any]) -> str:
    rows = []
    for kind in ("worker", "media"):
        s = summary[kind]
        rows.append([
            kind, str(s["kills"]), str(s["sessions_hit"]),
            *(bc.fmt(s[k], 2) for k in ("gap_p50_s", "gap_p95_s", "gap_max_s", "longest_interframe_p95_s", "collateral_longest_interframe_max_s")),
            str(s["lost"]), str(s["resumes"]),
            f"p95 <= {s['target_p95_s']:.0f} s: {('met' if s['target_met'] else 'MISSED') if s['kills'] else 'no kills'}",
        ])  # fmt: skip
    text = bc.table(
        ["kill", "kills", "sessions hit", "gap p50 s", "gap p95 s", "gap max s", "longest inter-frame p95 s",
         "others' longest inter-frame max s", "lost", "resumes", "target"],
        rows,
    )  # fmt: skip
    print(text, flush=True)
    return text


def plot(path: Path, kills: list[dict[str, Any]], summary: dict[str, Any], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(13, 4.5))
    colors = {"worker": "tab:blue", "media": "tab:orange"}
    top = max([s["gap_s"] for k in kills for s in k["sessions"] if s["gap_s"] is not None and not s["lost"]] + [TARGET_MEDIA_P95_S]) * 1.25
    for kind in ("worker", "media"):
        xs = [k["at_s"] for k in kills if k["kind"] == kind for s in k["sessions"] if not s["lost"] and s["gap_s"] is not None]
        ys = [s["gap_s"] for k in kills if k["kind"] == kind for s in k["sessions"] if not s["lost"] and s["gap_s"] is not None]
        s = summary[kind]
        ax.scatter(xs, ys, color=colors[kind], s=28, label=f"{kind} killed: gap p95 {bc.fmt(s['gap_p95_s'], 2)} s ({s['kills']} kills, {s['sessions_hit']} sessions hit)")
        lost = [k["at_s"] for k in kills if k["kind"] == kind for s in k["sessions"] if s["lost"]]
        if lost:
            ax.scatter(lost, [top * 0.97] * len(lost), color=colors[kind], marker="x", s=60, label=f"{kind} kill: session lost")
    ax.axhline(TARGET_WORKER_P95_S, color="tab:blue", ls="--", lw=1, label=f"target: worker gap p95 {TARGET_WORKER_P95_S:.0f} s")
    ax.axhline(TARGET_MEDIA_P95_S, color="tab:orange", ls="--", lw=1, label=f"target: media gap p95 {TARGET_MEDIA_P95_S:.0f} s")
    ax.set_ylim(0, top)
    ax.set_xlabel("seconds into the kill phase")
    ax.set_ylabel("kill -> next processed frame, s")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def bench(server: Server, pids_dir: Path, args: argparse.Namespace) -> tuple[Run, float]:
    import httpx

    run = Run(server, pids_dir, args)
    run.watched = await connect_all(server.url, args.sessions, args.fps, args.size, args.replay)
    print(f"{args.sessions} sessions streaming; warming up {WARMUP_S:.0f} s", flush=True)
    busy0, t0 = bc.machine_busy_seconds(), time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as http:
            end = time.monotonic() + WARMUP_S
            while time.monotonic() < end:
                run.watch()
                await run.refresh_targets(http)
                await asyncio.sleep(POLL_S)
            busy0, t0 = bc.machine_busy_seconds(), time.monotonic()
            await run.kill_phase(http)
    finally:
        machine_pct = 100.0 * (bc.machine_busy_seconds() - busy0) / max(1e-9, time.monotonic() - t0)
        for w in run.watched:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(w.client.hang_up(), HTTP_TIMEOUT_S)
    run.t0 = t0
    return run, round(machine_pct, 1)


def size_arg(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", type=int, metavar="PORT", help="(internal) run the server on this port")
    ap.add_argument("--pids-dir", help="(internal, with --serve) where the handler writes its pids")
    ap.add_argument("--sessions", type=int, default=SESSIONS, help=f"concurrent sessions (default {SESSIONS})")
    ap.add_argument("--seconds", type=float, default=RUN_S, help=f"length of the kill phase (default {RUN_S:.0f})")
    ap.add_argument("--every", type=float, default=EVERY_S, help=f"mean seconds between kills, jittered +-{JITTER * 100:.0f}%% (default {EVERY_S:.0f})")
    ap.add_argument("--mix", type=float, default=MEDIA_SHARE, help=f"share of kills aimed at a media process, 0..1 (default {MEDIA_SHARE}: alternate)")
    ap.add_argument("--fps", type=float, default=FPS, help=f"frames/s each client sends (default {FPS:.0f})")
    ap.add_argument("--size", type=size_arg, default=FRAME_SIZE, help="WxH each client sends (default 320x240)")
    ap.add_argument("--replay", type=int, default=REPLAY_FRAMES, help="clients replay a pre-encoded cycle of this many frames (default 0: encode live)")
    ap.add_argument("--processes", type=int, default=MEDIA_PROCESSES, help=f"gateway.processes (default {MEDIA_PROCESSES})")
    ap.add_argument("--prewarm", type=int, default=PREWARM, help=f"pool.prewarm (default {PREWARM})")
    ap.add_argument("--limit", type=int, default=None, help="the stream's concurrency_limit (default: sessions + prewarm)")
    ap.add_argument("--max-restarts", type=int, default=MAX_RESTARTS, help=f"pool.max_restarts (default {MAX_RESTARTS})")
    ap.add_argument("--seed", type=int, default=None, help="random seed of the kill schedule and targets")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a running test suite or a quiet machine")
    args = ap.parse_args(argv)
    if args.limit is None:
        args.limit = args.sessions + args.prewarm
    if args.serve:
        serve(args)
        return
    if not 0.0 <= args.mix <= 1.0:
        ap.error("--mix must be within 0..1")
    if args.size[1] < TAG_ROWS.stop or args.size[0] < tag_columns(TAG_DIGITS - 1).stop:
        ap.error(f"--size must be at least {tag_columns(TAG_DIGITS - 1).stop}x{TAG_ROWS.stop} (the painted pid)")
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    waited = 0.0 if args.no_wait else bq.wait_for_test_suite()
    quiet = bc.wait_quiet(QUIET_THRESHOLD_PCT, 2.0 if args.no_wait else QUIET_WAIT_MAX_S)
    load = os.getloadavg()
    print(f"waited {waited} s for tests; machine {quiet}% busy, load {load[0]:.2f}; seed {args.seed}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        server = Server(args, tmp)
        try:
            ready = server.wait_ready()
            print(f"server ready in {ready:.1f} s (log: {server.log_path})", flush=True)
            run, machine_pct = asyncio.run(bench(server, Path(tmp), args))
        finally:
            server.stop()
    load_after = os.getloadavg()

    kills = measure(run)
    server_timeline(kills, run, server.log_path.read_text(errors="replace"))
    summary = summarize(kills, run.watched)
    text = print_table(summary)
    print(
        f"\nsessions lost: {summary['sessions_lost']} of {summary['sessions']} (goal 0); resumes: {summary['resumes_total']}; "
        f"kills not preceded by a healed deployment: {summary['worker']['not_healed_before'] + summary['media']['not_healed_before']}; "
        f"painted pid read back right: {bc.fmt(summary['tag_read_ok_min'], 2)} (min share per kill); "
        f"bench loop stalls > {STALL_S} s: {len(run.loop_stalls)}; "
        f"worker kills: the media process logged 'took over' after p50 {bc.fmt(summary['worker']['server_took_over_p50_s'], 2)} s "
        f"(max {bc.fmt(summary['worker']['server_took_over_max_s'], 2)} s); "
        f"machine {machine_pct}% busy during the kills (200 = both cores), load {load_after[0]:.2f}",
        flush=True,
    )
    data = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": bc.machine_info(),
        "load_before": load,
        "load_after": load_after,
        "quiet_before_pct": quiet,
        "machine_busy_pct_during": machine_pct,
        "waited_for_tests_s": waited,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "config": {
            "sessions": args.sessions, "seconds": args.seconds, "every_s": args.every, "jitter": JITTER, "mix": args.mix,
            "fps": args.fps, "frame_size": args.size, "processes": args.processes, "prewarm": args.prewarm, "concurrency_limit": args.limit,
            "max_restarts": args.max_restarts, "seed": args.seed, "lost_after_s": LOST_AFTER_S,
            "healed_frame_s": HEALED_FRAME_S, "targets_p95_s": {"worker": TARGET_WORKER_P95_S, "media": TARGET_MEDIA_P95_S},
        },  # fmt: skip
        "summary": summary,
        "kills": kills,
        "sessions": [
            {"session": w.index, "frames": len(w.frames.times), "resumes": w.client.resumes, "worker_pids": [p for _, p, _ in w.pids],
             "ended": w.ended_at is not None, "lost": w.lost_at is not None,
             "warnings": [(round(t - run.t0, 3), m) for t, m in w.warnings],
             "resumed_at_s": [round(t - run.t0, 3) for t in w.resume_times],
             # every interval between two decoded frames longer than STALL_S: (its start, its length), s
             "stalls": [(round(a - run.t0, 3), round(b - a, 3)) for a, b in zip(w.frames.times, w.frames.times[1:], strict=False) if b - a > STALL_S]}
            for w in run.watched
        ],  # fmt: skip
        "bench_loop_stalls": [(round(a - run.t0, 3), round(d, 3)) for a, d in run.loop_stalls],
        "table": text,
    }
    print(f"wrote {bc.write_json(RESULT_JSON, data)}")
    png = bc.results_path(RESULT_PNG)
    title = (
        f"failover: {args.sessions} sessions of {args.size[0]}x{args.size[1]} at {args.fps:.0f} fps, gateway.processes={args.processes}, "
        f"pool.prewarm={args.prewarm}, concurrency_limit={args.limit}; a kill every ~{args.every:.0f} s for {args.seconds:.0f} s\n"
        f"{time.strftime('%Y-%m-%d')}, {bc.machine_info().get('cpus')} cores ({bc.machine_info().get('cpu_model', '?')}); "
        f"sessions lost {summary['sessions_lost']}, resumes {summary['resumes_total']}"
    )
    plot(png, kills, summary, title)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
