"""A single-process fastrtc server for scripts/bench_e2e.py (the baseline rtcpool is compared to).

Runs inside its own venv (bench-results/fastrtc-venv, ``pip install fastrtc``), never in
rtcpool's: it imports fastrtc, not rtcpool. Serves two fastrtc ``Stream``s on one FastAPI app,
each doing what the rtcpool side does:

* ``/busy/webrtc/offer``: a frame function that holds the GIL for ``--busy-iters`` pure-Python
  loop turns (~15 ms, calibrated by the caller) and returns the frame unchanged;
* ``/noop/webrtc/offer``: the same with no work.

fastrtc's offer body is ``{sdp, type: "offer", webrtc_id}`` (``fastrtc.stream.Body``), the
same one rtcpool answers, so runtime.clients.webrtc talks to both.

Loopback only: aioice's host-address lookup is replaced so ICE offers 127.0.0.1 (what
runtime/media/ice.py does in rtcpool), and the server's RTCPeerConnections get an empty ICE
server list (``server_rtc_configuration``), so no STUN request leaves the machine.

fastrtc calls a frame function only once the stream's inputs are set: a Gradio page does
that with ``set_input`` when it starts streaming; a plain aiortc client cannot. A small task
here does it for every new connection (with no extra inputs), as the page would.

    bench-results/fastrtc-venv/bin/python scripts/fastrtc_server.py --port 8123 --busy-iters 400000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import time
from typing import Any

LOOPBACK = "127.0.0.1"
ARGS_POLL_S = 0.02  # how often new connections are looked for to set their inputs
LAG_PROBE_S = 0.02  # the event-loop lag probe sleeps this long, over and over
STREAM_CONCURRENCY = 16  # fastrtc defaults to 1 concurrent connection per Stream
STREAM_PATHS = ("/busy", "/noop")
# gradio and huggingface_hub phone home at import (analytics, version checks): keep this
# process on loopback
OFFLINE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}


def pin_loopback() -> None:
    """aioice gathers host candidates on every interface except 127.0.0.1: offer exactly it."""
    import aioice.ice

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [LOOPBACK] if use_ipv4 else []

    aioice.ice.get_host_addresses = get_host_addresses


def spin(iters: int) -> int:
    """The same pure-Python loop as scripts/bench_common.spin (this venv cannot import it)."""
    x = 0
    for i in range(iters):
        x += i
    return x


def make_handler(iters: int, calls: list[int]) -> Any:
    def handler(frame: Any) -> Any:
        if iters:
            spin(iters)
        calls[0] += 1
        return frame

    return handler


def receive_queues(pc: Any) -> dict[str, int]:
    """Frames waiting inside aiortc on the receive side (as in bench_e2e.receive_queues)."""
    out = {"to_decode": 0, "decoded": 0}
    for r in pc.getReceivers():
        if r.track is None or r.track.kind != "video":
            continue
        with contextlib.suppress(AttributeError):
            out["to_decode"] += r._RTCRtpReceiver__decoder_queue.qsize()
        with contextlib.suppress(AttributeError):
            out["decoded"] += r.track._queue.qsize()
    return out


def build_app(busy_iters: int) -> Any:
    from fastapi import FastAPI
    from fastrtc import Stream

    calls = {"/busy": [0], "/noop": [0]}
    streams = {
        path: Stream(
            handler=make_handler(busy_iters if path == "/busy" else 0, calls[path]),
            modality="video",
            mode="send-receive",
            concurrency_limit=STREAM_CONCURRENCY,
            server_rtc_configuration={"iceServers": []},
            verbose=False,
        )
        for path in STREAM_PATHS
    }

    lag: list[float] = []

    async def probe_lag() -> None:
        """How late the event loop wakes a sleeper (as bench_e2e.LoopLag)."""
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(LAG_PROBE_S)
            lag.append((time.perf_counter() - t0 - LAG_PROBE_S) * 1000.0)

    def take_lag() -> dict[str, Any]:
        s = sorted(lag)
        lag.clear()
        if not s:
            return {"p50_ms": None, "p99_ms": None, "max_ms": None}
        return {"p50_ms": s[len(s) // 2], "p99_ms": s[min(len(s) - 1, round(0.99 * (len(s) - 1)))], "max_ms": s[-1]}

    async def set_inputs() -> None:
        while True:
            for stream in streams.values():
                for webrtc_id, conns in list(stream.connections.items()):
                    if any(getattr(c, "latest_args", None) == "not_set" for c in conns):
                        stream.set_input(webrtc_id, None)  # latest_args[0]: replaced by the frame
            await asyncio.sleep(ARGS_POLL_S)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        tasks = [asyncio.get_running_loop().create_task(c) for c in (set_inputs(), probe_lag())]
        yield
        for task in tasks:
            task.cancel()

    app = FastAPI(lifespan=lifespan)
    for path, stream in streams.items():
        stream.mount(app, path=path)

    @app.get("/bench/stats")
    async def stats() -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "calls": {p: c[0] for p, c in calls.items()},
            "connections": {p: len(s.connections) for p, s in streams.items()},
            # fastrtc queues every decoded frame for its frame function, without bound
            "queued_frames": {
                p: [q.frame_queue.qsize() for conns in s.connections.values() for q in conns if hasattr(q, "frame_queue")]
                for p, s in streams.items()
            },
            "loop_lag": take_lag(),
            "rx_queues": {p: [receive_queues(pc) for pc in list(s.pcs.values())] for p, s in streams.items()},
        }

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description="fastrtc baseline server for bench_e2e.py")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--busy-iters", type=int, required=True, help="loop turns of the busy handler")
    args = ap.parse_args()
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=getattr(logging, os.environ.get("FASTRTC_BENCH_LOG", "WARNING")))
    pin_loopback()
    import uvicorn

    uvicorn.run(build_app(args.busy_iters), host=LOOPBACK, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
