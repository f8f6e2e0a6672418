"""SIGTERM drains: no new offers (503 + Retry-After), every live client told, sessions run up
to gateway.drain_timeout_s and are then ended cleanly, the process exits 0 and leaves no
shared memory behind. Under `rtcpool serve` (uvicorn in the main thread) and under a Gradio
app's own `launch()` (uvicorn in Gradio's thread); a second SIGTERM ends at once.

Each app runs in a process of its own that joins the test session's Ray in a namespace of
its own (its scheduler and workers die with it).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from runtime.clients.webrtc import Client
from tests.app_process import REPO, start_app
from tests.cluster.cluster import end_tree, tail
from tests.conftest import async_wait_until, shm_segments

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(400)]

FIRST_FRAME_S = 60.0
DRAIN_S = 8  # the apps' gateway.drain_timeout_s
TOLD_S = 5.0  # SIGTERM -> every client has the warning
EXIT_S = 60.0  # after the drain's deadline: sessions closed, server stopped, process gone
POLL_S = 0.25

HANDLER = """
import numpy as np


def invert(frame: np.ndarray) -> np.ndarray:
    return 255 - frame
"""

STREAM_APP = HANDLER + """
from runtime.stream import Stream

stream = Stream(invert, stream_id="drain", concurrency_limit=3)
"""

GRADIO_APP = HANDLER + """
import os

import gradio as gr

from gradio_ext import WebRTC

with gr.Blocks() as demo:
    video = WebRTC(label="Stream", mode="send-receive", modality="video")
    video.stream(fn=invert, inputs=[video], outputs=[video], concurrency_limit=3)

demo.launch(server_name="127.0.0.1", server_port=int(os.environ["APP_PORT"]))
print("LAUNCH RETURNED", flush=True)
"""

# the same Blocks for `rtcpool serve`, which launches it (in the main thread, as above)
GRADIO_BLOCKS = GRADIO_APP[: GRADIO_APP.index("demo.launch(")]


async def test_the_uvicorn_exit_handler_drain_wraps_is_still_there():
    import uvicorn

    # runtime/ops/drain.py wraps Server.handle_exit(sig, frame) and relies on capture_signals
    # installing it for SIGTERM in the main thread
    from runtime.ops import drain

    # a gateway started earlier in this process has wrapped it already: check uvicorn's own
    original = drain._original_handle_exit or uvicorn.Server.handle_exit
    assert list(inspect.signature(original).parameters) == ["self", "sig", "frame"]
    source = inspect.getsource(uvicorn.server.Server.capture_signals)
    assert "self.handle_exit" in source and "raise_signal" in source


async def _offer_status(url: str) -> httpx.Response:
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="sendrecv")
    pc.createDataChannel("text")
    await pc.setLocalDescription(await pc.createOffer())
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            return await http.post(f"{url}/webrtc/offer", json={"type": "offer", "sdp": pc.localDescription.sdp, "webrtc_id": "late-comer"})
    finally:
        await pc.close()


def _told(client: Client) -> bool:
    return any(m.get("type") == "warning" and "restarting" in m.get("message", "") for m in client.messages)


def _ended_by_drain(client: Client) -> bool:
    return any(m.get("type") == "end_stream" and (m.get("data") or {}).get("reason") == "server_draining" for m in client.messages)


@pytest.mark.parametrize("how", ["serve", "gradio-launch"])
async def test_sigterm_drains_live_sessions_then_exits_0(tmp_path, app_ray, how):
    segments = shm_segments()
    # the Gradio app is started as `python app.py &` from a script would start it: SIGINT
    # ignored (issue 20 item 23; under `rtcpool serve` uvicorn takes SIGINT back itself)
    gradio = how == "gradio-launch"
    process, url, log = start_app(
        tmp_path, GRADIO_APP if gradio else STREAM_APP, app_ray, serve=not gradio, sigint_ignored=gradio, RTCPOOL_GATEWAY__DRAIN_TIMEOUT_S=str(DRAIN_S)
    )
    clients = [Client(url, fps=15, size=(160, 120)) for _ in range(2)]
    try:
        for c in clients:
            await c.connect()
        await asyncio.wait_for(asyncio.gather(*(c.first_frame.wait() for c in clients)), FIRST_FRAME_S)
        assert (tmp_path / "run" / f"{process.pid}.json").exists(), "the app did not announce itself to `rtcpool drain`"
        assert _ignores_sigint(process.pid) == gradio, "SIGINT's disposition is not the one the app was started with"
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert await async_wait_until(lambda: all(_told(c) for c in clients), TOLD_S), [c.messages for c in clients]
        # no new users: 503 with Retry-After, and out of the load balancer's rotation
        late = await _offer_status(url)
        assert late.status_code == 503 and late.json()["meta"]["error"] == "draining", late.text
        assert int(late.headers["retry-after"]) > 0
        async with httpx.AsyncClient(timeout=10) as http:
            ready = await http.get(f"{url}/webrtc/ready")
            assert ready.status_code == 503 and ready.json()["problems"] == ["draining"]
            assert (await http.get(f"{url}/webrtc/health")).status_code == 200
        # the live sessions keep streaming while the drain lasts
        counts = [c.report.received for c in clients]
        await asyncio.sleep(1.5)
        assert all(c.report.received > n for c, n in zip(clients, counts, strict=True)), "a session stopped streaming during the drain"
        assert process.poll() is None, "the app exited before its sessions' drain deadline"
        ended = await async_wait_until(lambda: all(_ended_by_drain(c) for c in clients), DRAIN_S + 20)
        assert ended, [c.messages[-3:] for c in clients]
        assert time.monotonic() - sent >= DRAIN_S - 1, "the sessions were ended before the drain deadline"
        code = await asyncio.to_thread(process.wait, EXIT_S)
        assert code == 0, f"exit status {code}:\n{tail(log)}"
    finally:
        for c in clients:
            await c.close()
        end_tree(process.pid, signal.SIGKILL, 10)
    text = log.read_text(errors="replace")
    if how == "gradio-launch":
        assert "LAUNCH RETURNED" in text, "launch() did not return after the drain"
    assert "worker failed" not in text and "Traceback" not in text, tail(log)
    assert shm_segments() <= segments, "shared memory left behind"
    assert not (tmp_path / "run" / f"{process.pid}.json").exists()


async def test_a_second_sigterm_ends_the_sessions_at_once(tmp_path, app_ray):
    segments = shm_segments()
    process, url, log = start_app(tmp_path, STREAM_APP, app_ray, RTCPOOL_GATEWAY__DRAIN_TIMEOUT_S=str(DRAIN_S))
    client = Client(url, fps=15, size=(160, 120))
    try:
        await client.connect()
        await asyncio.wait_for(client.first_frame.wait(), FIRST_FRAME_S)
        process.send_signal(signal.SIGTERM)
        assert await async_wait_until(lambda: _told(client), TOLD_S)
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert await async_wait_until(lambda: _ended_by_drain(client), DRAIN_S - 2), client.messages[-3:]
        assert time.monotonic() - sent < DRAIN_S - 2
        await asyncio.to_thread(process.wait, EXIT_S)
    finally:
        await client.close()
        end_tree(process.pid, signal.SIGKILL, 10)
    assert shm_segments() <= segments, "shared memory left behind"


async def test_rtcpool_drain_drains_this_hosts_gateway_processes(tmp_path, app_ray):
    process, url, log = start_app(tmp_path, STREAM_APP, app_ray, RTCPOOL_GATEWAY__DRAIN_TIMEOUT_S="3")
    client = Client(url, fps=15, size=(160, 120))
    try:
        await client.connect()
        await asyncio.wait_for(client.first_frame.wait(), FIRST_FRAME_S)
        env = {**os.environ, "RTCPOOL_RUN_DIR": str(tmp_path / "run"), "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, "-m", "runtime.cli", "drain", "--wait", str(EXIT_S)]
        done = await asyncio.to_thread(subprocess.run, cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=EXIT_S + 30)
        assert done.returncode == 0, done.stderr
        assert f"draining gateway process {process.pid}" in done.stderr
        assert _told(client) and _ended_by_drain(client), client.messages[-4:]
        assert await asyncio.to_thread(process.wait, 10) == 0, tail(log)
        # nothing left to drain: said so, and still exit 0
        again = await asyncio.to_thread(subprocess.run, cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "no gateway process" in again.stderr
    finally:
        await client.close()
        end_tree(process.pid, signal.SIGKILL, 10)


def _ignores_sigint(pid: int) -> bool:
    """SIGINT is in the process's ignored set (/proc/PID/status SigIgn, a hex mask of bit sig-1)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    return False


async def test_sigterm_ends_a_served_gradio_app_that_inherited_sigint_ignored(tmp_path, app_ray):
    # issue 20 item 23: `python app.py &` in a script (and many container entrypoints) starts
    # the app with SIGINT ignored; the drain must not rely on a SIGINT handler to stop it.
    # Gradio serves from a thread, so nothing takes SIGINT back (uvicorn in the main thread,
    # `rtcpool serve` of a FastAPI app or Stream, installs its own SIGINT handler). A Gradio
    # app's own launch() is drained this way in test_sigterm_drains_live_sessions_then_exits_0
    drain_s = 3
    process, url, log = start_app(tmp_path, GRADIO_BLOCKS, app_ray, sigint_ignored=True, RTCPOOL_GATEWAY__DRAIN_TIMEOUT_S=str(drain_s))
    client = Client(url, fps=15, size=(160, 120))
    try:
        assert _ignores_sigint(process.pid), "the app did not inherit SIGINT ignored"
        await client.connect()
        await asyncio.wait_for(client.first_frame.wait(), FIRST_FRAME_S)
        process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(process.wait, drain_s + EXIT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"SIGTERM did not end the app in {drain_s + EXIT_S} s:\n{tail(log)}") from None
        assert code == 0, f"exit status {code}:\n{tail(log)}"
        assert _ended_by_drain(client), client.messages[-3:]
    finally:
        await client.close()
        end_tree(process.pid, signal.SIGKILL, 10)
