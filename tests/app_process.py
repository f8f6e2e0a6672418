"""An app file run in a process of its own (`rtcpool serve APP`, or `python APP` for an app
that serves itself, such as a Gradio `launch()`), joining the test session's Ray in a
namespace of its own, so that its scheduler and workers are its alone and die with it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.cluster.cluster import end_tree, tail
from tests.conftest import free_port, joining_ray

REPO = Path(__file__).resolve().parents[1]
SERVING_S = 120.0  # python + aiortc (+ Gradio) + joining Ray, on 2 busy cores
POLL_S = 0.25


def start_app(
    tmp_path: Path, source: str, app_ray: str, *, serve: bool = True, sigint_ignored: bool = False, **env: str
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Start the app, wait until GET /webrtc/ready answers 200; (process, url, log path).
    The app's port is in APP_PORT (for a file that launches itself); `rtcpool drain` looks
    in tmp_path/run. ``sigint_ignored``: the app inherits SIGINT ignored, as a shell script's
    ``python app.py &`` does (and many container entrypoints). The caller ends the process
    (end_tree)."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("RTCPOOL_", "RAY_ADDRESS"))}
    environ.update(
        joining_ray(app_ray, "app"),
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        GRADIO_ANALYTICS_ENABLED="False",
        PYTHONPATH=str(REPO),
        APP_PORT=str(port),
        RTCPOOL_GATEWAY__ICE_HOST_ADDRESSES="[127.0.0.1]",
        RTCPOOL_RUN_DIR=str(tmp_path / "run"),
    )
    environ.update(env)
    app = tmp_path / "app.py"
    app.write_text(source)
    log = tmp_path / "app.log"
    cmd = [sys.executable, "-m", "runtime.cli", "serve", str(app), "--port", str(port)] if serve else [sys.executable, str(app)]
    if sigint_ignored:  # the shell's way: ignored before exec, and exec keeps it ignored
        cmd = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *cmd]
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, cwd=REPO, env=environ, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_serving(process, f"{url}/webrtc/ready", log, SERVING_S)
    return process, url, log


def wait_serving(process: subprocess.Popen[bytes], probe: str, log: Path, timeout_s: float) -> None:
    """Until GET ``probe`` answers 200; the log's tail if the process exits first or the
    time runs out (then the process tree is killed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise AssertionError(f"the app exited with {process.returncode}:\n{tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(probe, timeout=5).status_code == 200:
                return
        if time.monotonic() > deadline:
            end_tree(process.pid, signal.SIGKILL, 10)
            raise AssertionError(f"the app did not answer {probe} in {timeout_s} s:\n{tail(log)}")
        time.sleep(POLL_S)
