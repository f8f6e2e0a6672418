"""The hostile-client suite: an app started as an operator would start it on the open
internet (``rtcpool serve app.py`` with ``gateway.auth.mode: join_token`` and loopback *not*
exempt from the per-address limits), attacked by each module's tests, and checked at the end
of each module: it still serves, a fresh session with a good token streams (pixels
checked), and nothing of the attacks is left (sessions, leases, shared memory).

One app process per module (`hostile_app`): an app start costs 15-20 s on 2 cores.
A test that needs a differently configured app starts its own with ``start_hostile_app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from runtime.clients.webrtc import Client
from runtime.guard.auth import JOIN_SECRET_ENV, mint_join_token
from tests.app_process import start_app
from tests.cluster.cluster import end_tree, process_tree, tail
from tests.conftest import wait_until

FIRST_FRAME_S = 60.0
SETTLE_S = 40.0  # the attacks' sessions ended, leases back, segments gone
STOP_S = 60.0  # SIGINT -> the app's process gone
SECRET_BYTES = 32
SETTLE_FRAMES_S = 1.0
MAX_MEAN_ERROR = 30.0  # per channel level, of 255: inverted vs not is ~100

VIDEO_STREAM = "video"  # inverts frames: the fresh session's pixels prove it streams
AUDIO_STREAM = "audio"  # echoes audio: WebSocket and phone sessions

HOSTILE_APP = f"""
import numpy as np

from runtime.stream import Stream


def invert(frame: np.ndarray) -> np.ndarray:
    return 255 - frame


def echo(audio: tuple[int, np.ndarray]):
    yield audio


video = Stream(invert, stream_id="{VIDEO_STREAM}", concurrency_limit=4)
audio = Stream(echo, stream_id="{AUDIO_STREAM}", mode="send-receive", modality="audio", concurrency_limit=4, gateway=video.gateway)
"""

# the operator's environment: join tokens, no loopback exemption from the per-address limits
HOSTILE_ENV = {
    "RTCPOOL_GATEWAY__AUTH__MODE": "join_token",
    "RTCPOOL_GATEWAY__LIMITS__EXEMPT_LOOPBACK": "false",
}


@dataclass
class HostileApp:
    """An app under attack: its process, URL, log and join-token secret."""

    process: Any
    url: str
    log: Path
    secret: bytes
    segments_at_start: set[str] = field(default_factory=set)

    def token(self, stream_id: str | None = None, ttl_s: float = 600.0) -> str:
        return mint_join_token(self.secret, stream_id=stream_id, ttl_s=ttl_s)

    def auth(self, stream_id: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(stream_id)}"}

    def tree_segments(self) -> set[str]:
        """rtcpool shared-memory segments created by any process of the app's tree."""
        pids = {p.pid for p in process_tree(self.process.pid)}
        return {n for n in os.listdir("/dev/shm") if n.startswith("rtcpool-") and _creator(n) in pids}

    def tail(self) -> str:
        return tail(self.log)


def _creator(name: str) -> int | None:
    parts = name.split("-")
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None


def start_hostile_app(tmp_path: Path, app_ray: str, source: str = HOSTILE_APP, **env: str) -> HostileApp:
    secret = secrets.token_bytes(SECRET_BYTES)
    environ = {**HOSTILE_ENV, JOIN_SECRET_ENV: secret.hex(), **env}
    process, url, log = start_app(tmp_path, source, app_ray, **environ)
    app = HostileApp(process, url, log, secret.hex().encode())
    app.segments_at_start = app.tree_segments()
    return app


def stop_hostile_app(app: HostileApp) -> None:
    with contextlib.suppress(ProcessLookupError):
        app.process.send_signal(signal.SIGINT)
    with contextlib.suppress(Exception):
        app.process.wait(STOP_S)
    end_tree(app.process.pid, signal.SIGKILL, 10)


async def fresh_session_streams(app: HostileApp) -> None:
    """A new client with a good token gets its own frames back inverted."""
    client = Client(app.url, stream_id=VIDEO_STREAM, token=app.token(VIDEO_STREAM), fps=15, size=(160, 120))
    try:
        await client.connect()
        await asyncio.wait_for(client.first_frame.wait(), FIRST_FRAME_S)
        await asyncio.sleep(SETTLE_FRAMES_S)  # past the first key frame's lower quality
        frame = client.frames[-1].astype(np.int16)
        assert client.source is not None
        # below the counter marks: the picture sent, inverted (VP8 twice: a loose tolerance)
        sent = client.source.base.astype(np.int16)
        rows = slice(frame.shape[0] // 4, frame.shape[0])
        error = float(np.abs(frame[rows] - (255 - sent[rows])).mean())
        assert error < MAX_MEAN_ERROR, f"the fresh session's frames are not the inverted picture (mean error {error:.1f})"
        await client.post("close")
    finally:
        await client.close()


def assert_still_serves_and_nothing_leaked(app: HostileApp) -> None:
    """The end of every hostile module: alive, ready, no session left, no segment left,
    and a fresh session streams."""
    assert app.process.poll() is None, f"the app died under attack:\n{app.tail()}"
    assert httpx.get(f"{app.url}/webrtc/ready", timeout=10).status_code == 200
    headers = app.auth()
    assert wait_until(lambda: httpx.get(f"{app.url}/webrtc/sessions", headers=headers, timeout=10).json() == [], SETTLE_S, 0.5), (
        "sessions left after the attacks: " + httpx.get(f"{app.url}/webrtc/sessions", headers=headers, timeout=10).text
    )
    assert wait_until(lambda: app.tree_segments() <= app.segments_at_start, SETTLE_S, 0.5), (
        f"shared memory left: {sorted(app.tree_segments() - app.segments_at_start)}"
    )
    asyncio.run(fresh_session_streams(app))


@pytest.fixture(scope="module")
def hostile_app(tmp_path_factory: pytest.TempPathFactory, app_ray: str) -> Iterator[HostileApp]:
    """The module's app under attack; after the module's tests: still serves, nothing leaked."""
    app = start_hostile_app(tmp_path_factory.mktemp("hostile"), app_ray)
    try:
        yield app
        assert_still_serves_and_nothing_leaked(app)
    finally:
        stop_hostile_app(app)
