"""fastrtc's WebSocket audio endpoint as the peer rtcpool's is compared to (scripts/bench_voice.py).

Runs inside fastrtc's own venv (bench-results/fastrtc-venv, ``pip install fastrtc[vad]``,
made by bench_common.ensure_fastrtc_venv), never in rtcpool's: it imports fastrtc, not
rtcpool. Serves ``Stream(ReplyOnPause(tone_reply), modality="audio", mode="send-receive",
concurrency_limit=N)`` on a FastAPI app through ``Stream.mount``, which adds fastrtc's
``/websocket/offer``: the client says ``start`` (websocket_id), then sends ``media`` messages
of base64 mu-law at the handler's input_sample_rate (fastrtc resamples only in phone
mode), and hears each reply item as one mu-law message at the handler's output_sample_rate.
The reply is the tone bench_voice.py's rtcpool handler yields (same length, pitch, level,
rate, passed on the command line).

fastrtc's ReplyOnPause loads Silero VAD from the Hugging Face hub at first use
(``hf_hub_download("freddyaboulton/silero-vad", "silero_vad.onnx")``), which this machine
cannot reach. ``--vad-model PATH`` points fastrtc's loader at a local copy of the same
model generation instead (Silero VAD v4: inputs input, sr, h, c; bench_common takes it from
a PyPI wheel); fastrtc's own VAD code then runs unchanged. Without it, this server fails the
way fastrtc does offline.

``--idle-emit-fix``: fastrtc 0.0.34's WebSocketHandler polls ``emit()`` in a loop (in a thread,
via anyio) and queues every result, so an idle ReplyOnPause, whose ``emit()`` returns None
at once, fills the queue with thousands of Nones a second for a sender that takes one per
20 ms; the receive thread's ``clear_queue()`` on a pause then races the emit thread and can
throw the reply away with the Nones (upstream: gradio-app/fastrtc pull request 430, "Fix
websocket emit-queue starvation when emit() returns None", open). This option applies
that pull request's change (on None: sleep 20 ms, queue nothing), to tell the transport
from the bug.

``--offline INPUTS.npz OUT.json`` serves nothing: it feeds each input of the npz (int16
mono at ``--rate``, as the clients send it) frame by frame through the same handler, with
no transport, and writes the sample positions at which each reply's first item comes out
(the algorithm's own floor, as bench_voice.offline_reply_samples does for rtcpool's).

    bench-results/fastrtc-venv/bin/python scripts/fastrtc_voice_server.py --port 8124 \\
        --concurrency 4 --vad-model bench-results/silero_vad_v4.onnx
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fastrtc_server import LAG_PROBE_S, LOOPBACK, OFFLINE_ENV  # noqa: E402

FRAME_S = 0.02  # s per media message the clients send (and per --offline step)
DEFAULT_RATE = 48_000  # Hz: fastrtc's ReplyOnPause input_sample_rate, and the reply's rate
DEFAULT_REPLY_S = 0.3  # s of tone per reply (bench_voice.REPLY_S)
DEFAULT_REPLY_HZ = 440.0
DEFAULT_AMPLITUDE = 0.3  # of full scale
IDLE_EMIT_BACKOFF_S = 0.02  # --idle-emit-fix: the wait after an emit() that had nothing (the pull request's)


def use_vad_model(path: str) -> None:
    """fastrtc's Silero loader reads ``path`` instead of downloading from the hub."""
    from fastrtc.pause_detection import silero

    silero.SileroVADModel.download_model = staticmethod(lambda: path)  # type: ignore[method-assign]


def apply_idle_emit_fix() -> None:
    """fastrtc pull request 430's change to WebSocketHandler._emit_to_queue: an emit() that
    returns None is not queued, and the loop waits IDLE_EMIT_BACKOFF_S before the next."""
    from anyio.to_thread import run_sync
    from fastrtc.tracks import AsyncStreamHandler
    from fastrtc.websocket import WebSocketHandler

    async def _emit_to_queue(self: Any) -> None:
        try:
            while not self.quit.is_set():
                if isinstance(self.stream_handler, AsyncStreamHandler):
                    output = await self.stream_handler.emit()
                else:
                    output = await run_sync(self.emit_with_context)
                if output is None:
                    await asyncio.sleep(IDLE_EMIT_BACKOFF_S)
                    continue
                self.queue.put_nowait(output)
        except asyncio.CancelledError:
            pass
        except Exception:  # as fastrtc's own loop: print, and the socket stays up
            traceback.print_exc()

    WebSocketHandler._emit_to_queue = _emit_to_queue  # type: ignore[method-assign]


def make_reply(rate: int, seconds: float, hz: float, amplitude: float) -> Any:
    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    tone = (amplitude * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)[None, :]

    def tone_reply(audio: tuple[int, Any]) -> Any:
        """The reply function: a short tone, at once (one parameter: no extra inputs)."""
        yield (rate, tone)

    return tone_reply


def build_app(args: argparse.Namespace) -> Any:
    from fastapi import FastAPI
    from fastrtc import ReplyOnPause, Stream

    reply = make_reply(args.rate, args.reply_s, args.reply_hz, args.amplitude)
    stream = Stream(
        ReplyOnPause(reply, input_sample_rate=args.rate),
        modality="audio",
        mode="send-receive",
        concurrency_limit=args.concurrency,
        verbose=False,
    )
    lag: list[float] = []

    async def probe_lag() -> None:
        """How late the event loop wakes a sleeper (as fastrtc_server.py's probe)."""
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(LAG_PROBE_S)
            lag.append((time.perf_counter() - t0 - LAG_PROBE_S) * 1000.0)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        task = asyncio.get_running_loop().create_task(probe_lag())
        yield
        task.cancel()

    app = FastAPI(lifespan=lifespan)
    stream.mount(app)

    @app.get("/bench/stats")
    async def stats() -> dict[str, Any]:
        s = sorted(lag)
        lag.clear()
        handlers = [h for conns in stream.connections.values() for h in conns]
        return {
            "pid": os.getpid(),
            "connections": len(stream.connections),
            # fastrtc's WebSocketHandler polls emit() in a loop and queues every result, the
            # None of an idle ReplyOnPause too, for a sender that takes one per 20 ms
            "emit_queue": [h.queue.qsize() for h in handlers if hasattr(h, "queue")],
            "loop_lag": {
                "p50_ms": s[len(s) // 2] if s else None,
                "p99_ms": s[min(len(s) - 1, round(0.99 * (len(s) - 1)))] if s else None,
                "max_ms": s[-1] if s else None,
            },
        }

    return app


def offline(args: argparse.Namespace, inputs_path: str, out_path: str) -> None:
    """Reply start positions (samples) of the handler fed each input frame by frame."""
    import numpy as np
    from fastrtc import ReplyOnPause

    logging.getLogger("fastrtc").setLevel(logging.CRITICAL)  # no loop: its log messages go nowhere
    reply = make_reply(args.rate, args.reply_s, args.reply_hz, args.amplitude)
    frame = int(args.rate * FRAME_S)
    out: dict[str, list[int]] = {}
    with np.load(inputs_path) as inputs:
        for key in sorted(inputs.files):
            samples = inputs[key]
            h = ReplyOnPause(reply, input_sample_rate=args.rate)
            h._clear_queue = lambda: None  # no output queue here (a server's WebSocketHandler sets it)
            starts: list[int] = []
            responding = False
            for i in range(0, samples.size - frame + 1, frame):
                h.receive((args.rate, samples[i : i + frame]))
                item = h.emit()
                if item is not None and not responding:  # the first item of a reply
                    starts.append(i + frame)
                responding = item is not None or (h.generator is not None)
            out[key] = starts
    Path(out_path).write_text(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description="fastrtc WebSocket voice server for bench_voice.py")
    ap.add_argument("--port", type=int)
    ap.add_argument("--concurrency", type=int, default=4, help="the Stream's concurrency_limit")
    ap.add_argument("--vad-model", help="a local Silero VAD v4 .onnx for fastrtc's loader (default: fastrtc's hub download)")
    ap.add_argument("--rate", type=int, default=DEFAULT_RATE, help="input_sample_rate, and the reply's sample rate")
    ap.add_argument("--reply-s", type=float, default=DEFAULT_REPLY_S)
    ap.add_argument("--reply-hz", type=float, default=DEFAULT_REPLY_HZ)
    ap.add_argument("--amplitude", type=float, default=DEFAULT_AMPLITUDE)
    ap.add_argument("--idle-emit-fix", action="store_true", help="apply fastrtc pull request 430 (see the docstring)")
    ap.add_argument("--offline", nargs=2, metavar=("INPUTS_NPZ", "OUT_JSON"))
    args = ap.parse_args()
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=getattr(logging, os.environ.get("FASTRTC_BENCH_LOG", "WARNING")))
    if args.vad_model:
        use_vad_model(args.vad_model)
    if args.idle_emit_fix:
        apply_idle_emit_fix()
    if args.offline:
        offline(args, *args.offline)
        return
    if args.port is None:
        ap.error("--port is needed to serve")
    import uvicorn

    uvicorn.run(build_app(args), host=LOOPBACK, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
