"""`rtcpool serve APP` of every shape an app file comes in, each in a process of its own,
reached over HTTP; and a file with nothing to serve. One starts the embedded local Ray of
its own; the others join the test session's Ray (as a deployment's ``ray.address`` does),
each in a namespace of its own, which spares each ~8 s of Ray start-up.

Shapes: a FastAPI app with a Gateway mounted and no ``__main__`` block; a Gateway alone; a
Stream object; a Gradio Blocks that never calls launch(); an app that serves itself in its
``__main__`` block (served once, not again when it returns). Each is stopped with SIGINT, as
a terminal's Ctrl-C does, and must exit 0 after closing its gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from runtime.cli import EXIT_NOTHING_TO_SERVE
from runtime.clients.webrtc import Client
from runtime.front.ray_start import is_loopback
from tests.cluster.cluster import end_tree, process_tree, tail
from tests.conftest import free_port, joining_ray

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
SERVING_S = 120.0  # python + aiortc (+ Gradio) + a local ray.init, on 2 busy cores
STOP_S = 60.0  # SIGINT -> sessions closed, gateway closed, Ray shut down, process gone
FIRST_FRAME_S = 60.0  # offer -> a worker started (prewarm 0) -> the first processed frame
POLL_S = 0.25

HANDLER = """
import numpy as np


def invert(frame: np.ndarray) -> np.ndarray:
    return 255 - frame
"""

FASTAPI_APP = HANDLER + """
from fastapi import FastAPI

from runtime.front.gateway import Gateway

gateway = Gateway()
gateway.add_stream(invert, event_id="fastapi-invert")
app = FastAPI()
gateway.mount(app)
"""

GATEWAY_APP = HANDLER + """
from runtime.front.gateway import Gateway

gateway = Gateway()
gateway.add_stream(invert, event_id="gateway-invert")
"""

STREAM_APP = HANDLER + """
from runtime.stream import Stream

stream = Stream(invert, mode="send-receive", modality="video", stream_id="stream-invert", concurrency_limit=2)
"""

GRADIO_APP = HANDLER + """
import gradio as gr

from gradio_ext import WebRTC

with gr.Blocks() as demo:
    video = WebRTC(label="Stream", mode="send-receive", modality="video")
    video.stream(fn=invert, inputs=[video], outputs=[video])
"""

SELF_SERVING_APP = HANDLER + """
import uvicorn
from fastapi import FastAPI

from runtime.config import load_config
from runtime.stream import Stream

config = load_config()
stream = Stream(invert, stream_id="self-served", config=config)
app = stream.app

if __name__ == "__main__":
    print("SERVING MYSELF", flush=True)
    uvicorn.run(app, host=config.gateway.host, port=config.gateway.port, log_level="warning")
"""

NOTHING_APP = """
SETTING = 1


def helper():
    return SETTING
"""


@dataclass
class Served:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def streams(self) -> list[str]:
        resp = httpx.get(f"{self.url}/webrtc/streams", timeout=10)
        assert resp.status_code == 200, resp.text
        return [s["stream_id"] for s in resp.json()["streams"]]

    def stop(self) -> int:
        """Ctrl-C; the exit status."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(STOP_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"serve did not stop on SIGINT within {STOP_S} s:\n{tail(self.log)}") from None


def serve_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RTCPOOL_", "RAY_ADDRESS"))}
    return {
        **env,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONPATH": str(REPO),
        **extra,
    }


@contextlib.contextmanager
def serving(tmp_path: Path, source: str, **env: str) -> Iterator[Served]:
    app = tmp_path / "app.py"
    app.write_text(source)
    port = free_port()
    log = tmp_path / "serve.log"
    cmd = [
        sys.executable, "-m", "runtime.cli", "serve", str(app),
        "--port", str(port),
        "--ice-host-address", "127.0.0.1",
        "--set", "pool.prewarm=0",  # no worker until an offer: these tests are about serving
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            cmd, cwd=REPO, env=serve_env(**env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    served = Served(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + SERVING_S
        while True:
            if process.poll() is not None:
                raise AssertionError(f"serve exited with {process.returncode}:\n{tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{served.url}/webrtc/streams", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"serve did not answer in {SERVING_S} s:\n{tail(log)}")
            time.sleep(POLL_S)
        yield served
    finally:
        end_tree(process.pid, signal.SIGKILL, STOP_S)  # whatever a failed test left running


@pytest.mark.parametrize(
    ("source", "stream_id"),
    [(FASTAPI_APP, "fastapi-invert"), (GATEWAY_APP, "gateway-invert")],
    ids=["fastapi-app-without-main", "gateway-alone"],
)
def test_serve_starts_the_gateway_of_an_app_that_does_not_serve_itself(tmp_path, source, stream_id, app_ray):
    with serving(tmp_path, source, **joining_ray(app_ray, "serve")) as served:
        assert served.streams() == [stream_id]
        assert served.stop() == 0, tail(served.log)


def listeners(pid: int) -> list[tuple[str, int, str, str, int]]:
    """Every socket of ``pid``'s process tree that takes connections (TCP LISTEN) or
    datagrams (a bound UDP socket): (process name, pid, tcp|udp, address, port)."""
    found = []
    for proc in process_tree(pid):
        with contextlib.suppress(psutil.Error):
            name = proc.name()
            for conn in proc.net_connections(kind="inet"):
                udp = conn.type == socket.SOCK_DGRAM
                if conn.status == psutil.CONN_LISTEN or (udp and conn.laddr):
                    found.append((name, proc.pid, "udp" if udp else "tcp", conn.laddr.ip, conn.laddr.port))
    return found


def assert_nothing_listens_beyond_loopback(pid: int) -> None:
    found = listeners(pid)
    assert any(name == "gcs_server" for name, *_ in found), f"the tree's Ray was not seen: {found}"
    off = [f"{name} {p} {proto} {ip}:{port}" for name, p, proto, ip, port in found if not is_loopback(ip)]
    assert off == [], f"listening beyond loopback: {off}"


@pytest.mark.slow
async def test_serve_runs_a_stream_object_end_to_end_on_a_ray_of_its_own(tmp_path):
    # RAY_ADDRESS names nothing: the embedded default must start a Ray of its own, not join it
    with serving(tmp_path, STREAM_APP, RAY_ADDRESS=f"127.0.0.1:{free_port()}") as served:
        assert served.streams() == ["stream-invert"]
        # issue 20 item 1: its Ray runs with auth off, so nothing of the app's tree (GCS,
        # raylet, agents, core workers, the media processes) may listen beyond loopback
        assert_nothing_listens_beyond_loopback(served.process.pid)
        client = Client(served.url, stream_id="stream-invert")
        try:
            await client.connect()
            await asyncio.wait_for(client.first_frame.wait(), FIRST_FRAME_S)
            # with a worker up (its gRPC server and its TCP frame listener) and a session's ICE
            # sockets, which bind the configured ice_host_addresses: 127.0.0.1 here
            assert_nothing_listens_beyond_loopback(served.process.pid)
        finally:
            await client.close()
        assert served.stop() == 0, tail(served.log)
    text = served.log.read_text(errors="replace")
    assert "Started a local Ray instance" in text, "the embedded default did not start its own Ray"


def test_serve_launches_a_gradio_blocks_that_never_calls_launch(tmp_path, app_ray):
    with serving(tmp_path, GRADIO_APP, **joining_ray(app_ray, "serve")) as served:
        [stream_id] = served.streams()
        assert httpx.get(served.url, timeout=10).status_code == 200, "the Gradio page"
        assert stream_id
        assert served.stop() == 0, tail(served.log)


def test_an_app_that_serves_itself_is_served_once(tmp_path, app_ray):
    with serving(tmp_path, SELF_SERVING_APP, **joining_ray(app_ray, "serve")) as served:
        assert served.streams() == ["self-served"]
        assert served.stop() == 0, tail(served.log)
        # when its own uvicorn.run returned, serve did not start it a second time
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{served.url}/webrtc/streams", timeout=2)
    assert served.log.read_text(errors="replace").count("SERVING MYSELF") == 1


@pytest.mark.slow  # over 2 s: out of the quick subset
def test_an_app_with_nothing_to_serve_is_an_error(tmp_path):
    app = tmp_path / "nothing.py"
    app.write_text(NOTHING_APP)
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "serve", str(app)],
        cwd=REPO,
        env=serve_env(),
        capture_output=True,
        text=True,
        timeout=SERVING_S,
    )
    assert result.returncode == EXIT_NOTHING_TO_SERVE, result.stderr
    assert f"{app} leaves nothing to serve" in result.stderr
    assert "Stream(handler" in result.stderr, "the error says what to write"
