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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
CONNECT_TIMEOUT_S = 60.0
STATS_TIMEOUT_S = 15.0
QUIET_PCT = 60.0  # machine CPU% (100 = one core) under which the run starts ...
QUIET_WAIT_S = 60.0  # ... waiting at most this long for other work on the box to calm down
RESULT_JSON = "bench_voice.json"
RESULT_PNG = "bench_voice.png"


def tone_reply(audio: tuple[int, np.ndarray]):
    """The reply function: a short tone, at once."""
    t = np.arange(int(REPLY_S * AUDIO_RATE)) / AUDIO_RATE
    yield (AUDIO_RATE, (REPLY_AMPLITUDE * 32767 * np.sin(2 * np.pi * REPLY_HZ * t)).astype(np.int16)[None, :])


AIORTC_AUDIO_PREFETCH = 4  # frames aiortc's RTCRtpReceiver holds back per audio stream, by default
CLIENT_AUDIO_PREFETCH = 1  # the clients stand in for browsers, whose adaptive buffer is small on loopback


# --- the server (this file, run with --serve PORT) ----------------------------------------------


def serve(port: int, sessions: int, prefetch: int | None) -> None:
    import ray
    import uvicorn
    from fastapi import FastAPI

    from runtime import session as session_mod
    from runtime.config import load_config
    from runtime.gateway import Gateway
    from workers.reply_on_pause import ReplyOnPause

    stamps: dict[str, list[tuple[str, float]]] = {}  # webrtc_id -> [(event, monotonic)]

    # instrument this process only: messages from the worker, and reply audio reaching the FIFO
    orig_send_client = session_mod.Session.send_client
    orig_push = session_mod.WorkerAudioTrack.push

    def send_client(self: Any, type_: str, data: Any) -> None:
        if type_ == "log":
            stamps.setdefault(self.webrtc_id, []).append((str(data), time.monotonic()))
        orig_send_client(self, type_, data)

    def push(self: Any, header: Any, samples: Any) -> None:
        if not self._fifo:  # reply audio after silence: the start of a burst
            stamps.setdefault(self._session.webrtc_id, []).append(("audio_push", time.monotonic()))
        orig_push(self, header, samples)

    session_mod.Session.send_client = send_client  # type: ignore[method-assign]
    session_mod.WorkerAudioTrack.push = push  # type: ignore[method-assign]

    gateway_cfg: dict[str, Any] = {"ice_host_addresses": [LOOPBACK], "ice_servers": []}
    if prefetch is not None:
        gateway_cfg["audio_jitter_prefetch"] = prefetch
    config = load_config(overrides={"gateway": gateway_cfg, "pool": {"prewarm": sessions}})
    gw = Gateway(config)
    gw.add_stream(ReplyOnPause(tone_reply), event_id=EVENT_ID, modality="audio", concurrency_limit=sessions)
    gw.start()
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

    try:
        uvicorn.run(app, host=LOOPBACK, port=port, loop="uvloop", log_level="warning")
    finally:
        ray.shutdown()


class Server:
    def __init__(self, port: int, sessions: int, prefetch: int | None) -> None:
        self.url = f"http://{LOOPBACK}:{port}"
        self.log_path = bc.results_path("voice-server.log")
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", str(port), "--sessions", str(sessions)]
        if prefetch is not None:
            cmd += ["--jitter-prefetch", str(prefetch)]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)

    def wait_ready(self) -> None:
        import httpx

        t0 = time.monotonic()
        while time.monotonic() - t0 < SERVER_START_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/bench/stamps", timeout=STATS_TIMEOUT_S).status_code == 200:
                    return
            time.sleep(0.3)
        raise TimeoutError(f"server not up within {SERVER_START_TIMEOUT_S} s; see {self.log_path}")

    def stamps(self) -> dict[str, list[tuple[str, float]]]:
        import httpx

        return httpx.get(self.url + "/bench/stamps", timeout=STATS_TIMEOUT_S).json()["stamps"]

    def stop(self) -> None:
        bc.stop_server(self.proc, SERVER_STOP_TIMEOUT_S)
        self._log.close()


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
    from workers.reply_on_pause import ReplyOnPause

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


# --- clients --------------------------------------------------------------------------------------


async def run_clients(url: str, inputs: list[Any]) -> list[dict[str, Any]]:
    from runtime.client import Client

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


def first_after(stamps: list[tuple[str, float]], name: str, t: float, window: float) -> float | None:
    hits = [ts for n, ts in stamps if n == name and t <= ts <= t + window]
    return min(hits) if hits else None


def analyse(inputs: list[Any], heard: list[dict[str, Any]], server_stamps: dict[str, list]) -> list[dict[str, Any]]:
    turns = []
    for s, (c, h) in enumerate(zip(inputs, heard, strict=True)):
        offline = offline_reply_samples(c)
        coded = offline_reply_samples(c, opus_roundtrip(c.samples))
        times = np.array(h["times"])
        loud = np.array(h["rms"]) > LOUD_RMS
        gw = [(n, ts) for n, ts in server_stamps.get(h["webrtc_id"], [])]
        for k, end in enumerate(speech_ends(c)):
            t_end = h["started_at"] + end / AUDIO_RATE
            idx = np.flatnonzero(loud & (times > t_end) & (times <= t_end + REPLY_WINDOW_S))
            t_reply = float(times[idx[0]]) if idx.size else None
            algo = [p for p in offline if end < p <= end + REPLY_WINDOW_S * AUDIO_RATE]
            algo_opus = [p for p in coded if end < p <= end + REPLY_WINDOW_S * AUDIO_RATE]

            def rel(t: float | None, t_end: float = t_end) -> float | None:
                return None if t is None else round(t - t_end, 4)

            turns.append({
                "session": s,
                "turn": k,
                "speech_end_s": round(end / AUDIO_RATE, 3),
                "chunk_phase_s": round((end / AUDIO_RATE) % 0.6, 3),
                "latency_s": rel(t_reply),
                "algorithm_clean_s": round((algo[0] - end) / AUDIO_RATE, 4) if algo else None,
                "algorithm_s": round((algo_opus[0] - end) / AUDIO_RATE, 4) if algo_opus else None,
                "gw_pause_detected_s": rel(first_after(gw, "pause_detected", t_end, REPLY_WINDOW_S)),
                "gw_response_starting_s": rel(first_after(gw, "response_starting", t_end, REPLY_WINDOW_S)),
                "gw_audio_push_s": rel(first_after(gw, "audio_push", t_end, REPLY_WINDOW_S)),
                "client_pause_msg_s": rel(first_after(h["log"], "pause_detected", t_end, REPLY_WINDOW_S)),
            })
    return turns


def column(turns: list[dict[str, Any]], key: str) -> list[float]:
    return [t[key] for t in turns if t[key] is not None]


def plot(turns: list[dict[str, Any]], path: Path, threshold_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ok = [t for t in turns if t["latency_s"] is not None]
    x = np.arange(len(ok))
    parts = [
        ("algorithm (VAD chunking, offline, Opus-coded input)", [t["algorithm_s"] or 0.0 for t in ok]),
        ("input path + VAD run (gw pause msg - algorithm)", [max(0.0, (t["gw_pause_detected_s"] or 0) - (t["algorithm_s"] or 0)) for t in ok]),
        ("worker -> gateway FIFO", [max(0.0, (t["gw_audio_push_s"] or 0) - (t["gw_pause_detected_s"] or 0)) for t in ok]),
        ("FIFO -> client (pacing, Opus, jitter buffer)", [max(0.0, t["latency_s"] - (t["gw_audio_push_s"] or 0)) for t in ok]),
    ]
    bottom = np.zeros(len(ok))
    for label, vals in parts:
        ax.bar(x, np.array(vals) * 1000, bottom=bottom * 1000, label=label)
        bottom += np.array(vals)
    ax.axhline((threshold_s + TARGET_MARGIN_S) * 1000, color="k", ls="--", label=f"target: threshold + {TARGET_MARGIN_S * 1000:.0f} ms")
    ax.set_xticks(x, [f"s{t['session']}t{t['turn']}" for t in ok], rotation=60, fontsize=7)
    ax.set_ylabel("end of speech -> first reply audio (ms)")
    ax.set_title(f"ReplyOnPause turn latency, {SESSIONS} concurrent sessions, default AlgoOptions")
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--sessions", type=int, default=SESSIONS)
    ap.add_argument("--turns", type=int, default=TURNS_PER_SESSION)
    ap.add_argument("--jitter-prefetch", type=int, default=None,
                    help=f"gateway.audio_jitter_prefetch for the server (default: the config's; aiortc's own is {AIORTC_AUDIO_PREFETCH})")
    ap.add_argument("--tag", default="", help="suffix for the result files")
    args = ap.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.sessions, args.jitter_prefetch)
        return

    from workers.vad import AlgoOptions

    algo = AlgoOptions()
    threshold_s = algo.audio_chunk_duration
    target_s = threshold_s + TARGET_MARGIN_S
    inputs = make_inputs(args.sessions, args.turns)
    server = Server(_free_port(), args.sessions, args.jitter_prefetch)
    try:
        server.wait_ready()
        idle_pct = bc.wait_quiet(QUIET_PCT, QUIET_WAIT_S)
        window = bc.CpuWindow({"server": [server.proc.pid, *bc.descendants(server.proc.pid)]})
        heard = asyncio.run(run_clients(server.url, inputs))
        load = window.stop()
        stamps = server.stamps()
    finally:
        server.stop()
    turns = analyse(inputs, heard, stamps)

    lat = column(turns, "latency_s")
    algo_s = column(turns, "algorithm_s")
    algo_clean = column(turns, "algorithm_clean_s")
    overhead = [t["latency_s"] - t["algorithm_s"] for t in turns if t["latency_s"] is not None and t["algorithm_s"] is not None]
    gw_pause = [t["gw_pause_detected_s"] - t["algorithm_s"] for t in turns if t["gw_pause_detected_s"] is not None and t["algorithm_s"] is not None]
    push_after_pause = [t["gw_audio_push_s"] - t["gw_pause_detected_s"] for t in turns if t["gw_audio_push_s"] is not None and t["gw_pause_detected_s"] is not None]
    out_path = [t["latency_s"] - t["gw_audio_push_s"] for t in turns if t["latency_s"] is not None and t["gw_audio_push_s"] is not None]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.0f}"

    rows = [
        [f"s{t['session']}t{t['turn']}", f"{t['chunk_phase_s']:.2f}", ms(t["algorithm_clean_s"]), ms(t["algorithm_s"]), ms(t["gw_pause_detected_s"]),
         ms(t["gw_response_starting_s"]), ms(t["gw_audio_push_s"]), ms(t["latency_s"])]
        for t in turns
    ]
    print(bc.table(["turn", "end mod 0.6 s", "algo clean ms", "algo Opus ms", "gw pause msg ms", "gw fn start ms", "gw FIFO push ms", "client first audio ms"], rows))
    summary = {
        "turns": len(turns),
        "replied": len(lat),
        "latency_p50_ms": _ms(bc.percentile(lat, 50)),
        "latency_p95_ms": _ms(bc.percentile(lat, 95)),
        "algorithm_clean_p50_ms": _ms(bc.percentile(algo_clean, 50)),
        "algorithm_p50_ms": _ms(bc.percentile(algo_s, 50)),
        "algorithm_p95_ms": _ms(bc.percentile(algo_s, 95)),
        "overhead_p50_ms": _ms(bc.percentile(overhead, 50)),
        "overhead_p95_ms": _ms(bc.percentile(overhead, 95)),
        "input_path_and_vad_p50_ms": _ms(bc.percentile(gw_pause, 50)),
        "pause_msg_to_fifo_p50_ms": _ms(bc.percentile(push_after_pause, 50)),
        "fifo_to_client_p50_ms": _ms(bc.percentile(out_path, 50)),
        "fifo_to_client_p95_ms": _ms(bc.percentile(out_path, 95)),
        "machine_cpu_pct_before": idle_pct,
        "machine_cpu_pct_during": load["machine"],
        "server_cpu_pct_during": load["server"],
        "outside_server_cpu_pct_during": load["others"],  # clients (this process) and anything else
        "threshold_ms": threshold_s * 1000,
        "target_p50_ms": target_s * 1000,
    }
    summary["target_met"] = summary["latency_p50_ms"] is not None and summary["latency_p50_ms"] <= summary["target_p50_ms"]
    print()
    print(bc.table(["metric", "value"], [[k, str(v)] for k, v in summary.items()]))
    print()
    print(THRESHOLD_NOTE.format(chunk=threshold_s, st=algo.speech_threshold, target=target_s * 1000))
    json_path = bc.write_json(RESULT_JSON.replace(".json", f"{args.tag}.json"), {
        "machine": bc.machine_info(),
        "sessions": args.sessions,
        "turns_per_session": args.turns,
        "gateway_audio_prefetch": args.jitter_prefetch if args.jitter_prefetch is not None else "config",
        "client_audio_prefetch": CLIENT_AUDIO_PREFETCH,
        "algo_options": vars(algo),
        "summary": summary,
        "turns": turns,
        "client_errors": [h["errors"] for h in heard],
        "threshold_note": THRESHOLD_NOTE.format(chunk=threshold_s, st=algo.speech_threshold, target=target_s * 1000),
    })
    png = bc.results_path(RESULT_PNG.replace(".png", f"{args.tag}.png"))
    plot(turns, png, threshold_s)
    print(f"\nwrote {json_path} and {png}")


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
