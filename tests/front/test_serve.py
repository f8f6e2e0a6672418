"""`rtcpool serve APP` of every shape an app file comes in, each in a process of its own,
reached over HTTP; and a file with nothing to serve. One starts the embedded local Ray of
its own; the others join the test session's Ray (as a deployment's ``ray.address`` does),
each in a namespace of its own, which spares each ~8 s of Ray start-up.

Shapes: a FastAPI app with a Gateway mounted and no ``__main__`` block; a Gateway alone; a
Stream object; a Gradio Blocks that never calls launch(); an app that serves itself in its
``__main__`` block (served once, not again when it returns). Each is stopped with SIGINT, as
a terminal's Ctrl-C does, and must exit 0 after closing its gateway.

And the app's own file (issue 20, item 21): every example loaded the way `serve` loads it
(those with a handler class of their own also as `uvicorn app:app` imports them), each handler
recovered by re-importing the file its spec names, as a worker does; and the seeds' EchoHandler (a StreamHandler holding a queue.Queue, which does not
pickle) served with `rtcpool serve`, echoing a chirp over WebRTC.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from runtime.cli import EXIT_NOTHING_TO_SERVE
from runtime.clients.webrtc import AUDIO_RATE, Client
from runtime.front.ray_start import is_loopback
from tests.app_process import wait_serving
from tests.cluster.cluster import end_tree, process_tree, tail
from tests.conftest import async_wait_until, free_port, joining_ray
from tests.echo import chirp, find_echo

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
SERVING_S = 120.0  # python + aiortc (+ Gradio) + a local ray.init, on 2 busy cores
STOP_S = 60.0  # SIGINT -> sessions closed, gateway closed, Ray shut down, process gone
FIRST_FRAME_S = 60.0  # offer -> a worker started (prewarm 0) -> the first processed frame
EXAMPLES = REPO / "examples"
LOAD_S = 300.0  # Gradio and every example imported, and re-imported after each
RECENT_S = 6.0  # the sent loop (chirp and silence) is 2.5 s long
ECHO_S = 60.0  # from connected to a whole chirp heard back (a worker imports Gradio first)

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

from runtime.config_loader import load_config
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
def serving(tmp_path: Path, source: str | Path, **env: str) -> Iterator[Served]:
    """Serve ``source`` (an app's text, or an app file served where it is)."""
    if isinstance(source, Path):
        app = source
    else:
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
        wait_serving(process, f"{served.url}/webrtc/streams", log, SERVING_S)
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


# --- the app's own file (issue 20, item 21) -----------------------------------------------

# Run as a file (`python runner.py`), so that __main__ is a file that is not the app, as the
# `rtcpool` console script is. Each example is loaded as `rtcpool serve` loads it
# (runtime.cli.run_app_file: the file run as "__main__"; launch() turned off, no Ray), and
# those with a handler class of their own also as `uvicorn app:app` imports them (a module
# named "app"). Every stream's spec is then made
# without its pickle, and the handler recovered from it the way a worker recovers one that
# does not pickle: by re-importing the file the spec names (in this process: a fresh one
# would import Gradio again, ~10 s on a busy box, for nothing the re-import checks).
LOAD_EXAMPLES = r"""
import importlib, json, sys
import gradio as gr
from gradio_ext import serving
from runtime import cli
from workers.process import loader
gr.Blocks.launch = lambda self, *a, **k: None


def main():
    # run_app_file sets sys.argv, as serve does; "uvicorn": the examples whose handler is a
    # class of their own (the others' handlers are functions, whose code knows its file)
    todo, found = {"serve": sys.argv[1:], "uvicorn": []}, []
    for how in ("serve", "uvicorn"):
        for path in todo[how]:
            serving._gateway = None
            if how == "serve":
                cli.run_app_file(path)
            else:
                sys.modules.pop("app", None)
                sys.path.insert(0, path.rsplit("/", 1)[0])
                importlib.import_module("app")
                sys.path.pop(0)
            for e in serving.get_gateway().events.values():
                spec = loader.make_spec(e.handler, e.index)
                spec.blob = None
                try:
                    h = loader.load(spec)
                    loaded = getattr(h, "__name__", type(h).__name__)
                except Exception as exc:
                    loaded = "ERROR " + repr(exc)[:300]
                name = getattr(e.handler, "__name__", type(e.handler).__name__)
                if how == "serve" and type(e.handler).__module__ == "__main__":
                    todo["uvicorn"].append(path)
                found.append({"how": how, "path": path, "app_path": spec.app_path, "name": name, "loaded": loaded})
    print("FOUND=" + json.dumps(found))


if __name__ == "__main__":  # not when a wrong spec names this file for a worker to re-import
    main()
"""


@pytest.mark.slow  # imports Gradio and every example: over 2 s
def test_every_example_is_loaded_from_its_own_file_under_serve_and_uvicorn(tmp_path):
    """Before the fix, a handler class defined in the served file was recorded as living in
    the runner (the `rtcpool` script), and a worker re-importing that registered no stream."""
    apps = sorted(str(p) for p in EXAMPLES.glob("*/app.py"))
    runner = tmp_path / "runner.py"
    runner.write_text(LOAD_EXAMPLES)
    proc = subprocess.run(
        [sys.executable, str(runner), *apps],
        cwd=tmp_path,
        capture_output=True,
        timeout=LOAD_S,
        env=serve_env(),
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    line = [ln for ln in proc.stdout.decode().splitlines() if ln.startswith("FOUND=")][-1]
    found = json.loads(line.removeprefix("FOUND="))
    assert sorted(e["path"] for e in found if e["how"] == "serve") == apps, "one stream per example"
    own_classes = {e["path"] for e in found if e["how"] == "uvicorn"}
    assert str(EXAMPLES / "stream_handler_echo" / "app.py") in own_classes, "the seeds' EchoHandler"
    wrong = [e for e in found if (e["app_path"], e["loaded"]) != (e["path"], e["name"])]
    assert not wrong, wrong


def recent(client: Client) -> np.ndarray:
    """The last RECENT_S of what came back: more than one loop of what is sent."""
    return client.received_audio()[-int(RECENT_S * AUDIO_RATE) :]


async def test_serve_echoes_through_the_seeds_handler_that_holds_a_queue(tmp_path, app_ray):
    """examples/stream_handler_echo: the seed's EchoHandler, defined in the served file,
    holding a queue.Queue (no pickle: the worker re-imports the file). Before the fix every
    offer got 503 no_worker."""
    app = EXAMPLES / "stream_handler_echo" / "app.py"
    sent = np.concatenate([np.zeros(AUDIO_RATE // 2, np.int16), chirp(), np.zeros(AUDIO_RATE // 2, np.int16)])
    with serving(tmp_path, app, **joining_ray(app_ray, "serve")) as served:
        [stream_id] = served.streams()
        client = Client(served.url, modality="audio", audio=sent, audio_loop=True, stream_id=stream_id)
        try:
            await client.connect()
            # looped: whatever the worker's start-up missed comes round again
            heard = await async_wait_until(lambda: not find_echo(recent(client), chirp()).problems(), ECHO_S, 1.0)
            assert heard, f"no echo of the chirp: {find_echo(recent(client), chirp()).problems()}\n{tail(served.log)}"
        finally:
            await client.close()
        assert served.stop() == 0, tail(served.log)
