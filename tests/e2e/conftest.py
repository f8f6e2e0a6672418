"""Browser fixtures: a demo app in its own process (with its own local Ray), Debian's
Chromium driven by Playwright, and a fake camera that films a real face.

Chromium is never downloaded: the tests use Debian's /usr/bin/chromium (scripts/setup.sh installs it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest

from runtime.constants import MEDIA_INACTIVITY_TIMEOUT_S
from tests.conftest import free_port, joining_ray

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
APP_START_TIMEOUT_S = 120.0  # Ray start + Gradio import on 2 cores
APP_STOP_TIMEOUT_S = 20.0  # after SIGINT: Gradio closes, Ray shuts its processes down
POLL_INTERVAL_S = 0.5
CAMERA_SIZE = (640, 480)  # width, height of the fake camera
CAMERA_FPS = 20  # Chromium's fake camera rate
CAMERA_LOOP_FRAMES = 20  # the file loops; one second of the same picture
BROWSER_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--allow-loopback-in-peer-connection",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def face_picture() -> np.ndarray:
    """scikit-image's bundled astronaut photograph (a real face), RGB, camera-sized."""
    import cv2
    from skimage.data import astronaut

    return cv2.resize(astronaut(), CAMERA_SIZE, interpolation=cv2.INTER_AREA)


def write_y4m(path: Path, rgb: np.ndarray, frames: int, fps: int) -> None:
    """A YUV4MPEG2 (4:2:0) file of ``frames`` copies of ``rgb``, for Chromium's fake camera."""
    import cv2

    height, width = rgb.shape[:2]
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes()
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n")
            f.write(i420)


@pytest.fixture(scope="session")
def face_y4m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("camera") / "astronaut.y4m"
    write_y4m(path, face_picture(), CAMERA_LOOP_FRAMES, CAMERA_FPS)
    return path


@pytest.fixture(scope="module")  # Playwright's sync API holds the main thread's loop: let go after the module
def browser(face_y4m: Path) -> Iterator[Any]:
    # a skipped browser test checks nothing: scripts/setup.sh --test installs Debian's chromium
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run scripts/setup.sh --test (apt-get install chromium)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[*BROWSER_ARGS, f"--use-file-for-fake-video-capture={face_y4m}"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[[], Any]]:
    """Pages in a fresh browser context each, closed after the test; they record their
    peer connections (RECORD_PEER_CONNECTIONS_JS)."""
    contexts: list[Any] = []

    def open_page() -> Any:
        context = browser.new_context(viewport={"width": 1000, "height": 900})
        context.add_init_script(RECORD_PEER_CONNECTIONS_JS)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


@dataclass
class App:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def stop_process_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGINT the app's process group (Gradio closes, Ray stops its processes), then kill
    whatever is left of the tree: Ray puts some workers in process groups of their own."""
    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    _, alive = psutil.wait_procs(tree, timeout=APP_STOP_TIMEOUT_S)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(APP_STOP_TIMEOUT_S)


@contextlib.contextmanager
def run_app(
    script: Path, log: Path, env: dict[str, str] | None = None, *, ray_address: str | None = None
) -> Iterator[App]:
    """Run an example app as ``python <script>`` on a free loopback port until it serves.

    With ``ray_address`` the app joins that Ray (``joining_ray``); without, it starts a
    local Ray of its own."""
    port = free_port()
    joined = {} if ray_address is None else joining_ray(ray_address)
    full_env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "RTCPOOL_GATEWAY__ICE_HOST_ADDRESSES": "[127.0.0.1]",
        "RAY_AUTH_MODE": "disabled",
        **joined,
        **(env or {}),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(script)],
            cwd=REPO,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    app = App(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + APP_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{script.name} exited with {process.returncode}:\n{app.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{app.url}/webrtc/streams", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{script.name} did not serve within {APP_START_TIMEOUT_S} s:\n{app.log_tail()}"
                )
            time.sleep(POLL_INTERVAL_S)
        yield app
    finally:
        stop_process_tree(process)


# --- helpers for tests/e2e/test_examples.py: one Chromium per fake-device set-up ----------

# Records every RTCPeerConnection the page makes, and the configuration it was made with,
# so a test can read pc.getStats() without touching the component's JavaScript.
RECORD_PEER_CONNECTIONS_JS = """(() => {
  const Native = window.RTCPeerConnection;
  window.__rtcPeerConnections = [];
  window.__rtcPeerConnectionConfigs = [];
  window.RTCPeerConnection = function (...args) {
    const pc = new Native(...args);
    window.__rtcPeerConnections.push(pc);
    window.__rtcPeerConnectionConfigs.push(args[0] === undefined ? null : JSON.parse(JSON.stringify(args[0])));
    return pc;
  };
  window.RTCPeerConnection.prototype = Native.prototype;
})();"""

# A page's Stop posts /webrtc/close: the server must list no session of the stream by then,
# well inside the media-inactivity timeout that would otherwise end it (this is what proves
# the hang-up did it), on a busy 2-core box.
STOP_RELEASE_S = 6.0
assert STOP_RELEASE_S < MEDIA_INACTIVITY_TIMEOUT_S


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = POLL_INTERVAL_S / 2) -> Any:
    """Poll ``predicate`` until it is truthy or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def live_sessions(url: str, event_id: str | None = None) -> list[dict[str, Any]]:
    """The app's live sessions (GET /webrtc/sessions), of one stream event if given."""
    listed = httpx.get(f"{url}/webrtc/sessions", timeout=10).json()
    return [s for s in listed if event_id is None or s["event_id"] == event_id]


def released(
    url: str, event_id: str | None = None, left: int = 0, timeout: float = STOP_RELEASE_S
) -> bool:
    """Within ``timeout``, the server lists at most ``left`` live sessions (of ``event_id``)."""
    deadline = time.monotonic() + timeout
    while len(live_sessions(url, event_id)) > left:
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL_S / 5)
    return True


def stop_and_check_released(page: Any, root_selector: str = ".rtc-root") -> None:
    """Click the component's Stop: the page says "stopped", its peer connection is closed,
    and the server ends that session at once (one live session fewer of its stream)."""
    root = page.locator(root_selector).first
    stream_id = root.get_attribute("data-stream-id")
    origin = page.evaluate("() => window.location.origin")
    before = len(live_sessions(origin, stream_id))
    assert before >= 1, f"no live session of {stream_id} before Stop"
    root.locator(".rtc-button").click()
    assert root.get_attribute("data-state") == "stopped", root.locator(".rtc-status").text_content()
    pcs = page.evaluate("(window.__rtcPeerConnections || []).map(pc => pc.connectionState)")
    assert "closed" in pcs, pcs
    assert released(origin, stream_id, left=before - 1), (
        f"{stream_id}: the server still lists {live_sessions(origin, stream_id)} {STOP_RELEASE_S} s after Stop"
    )


@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Any]:
    """Playwright's sync API for the module (it holds the main thread's loop until closed)."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run scripts/setup.sh --test (apt-get install chromium)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


@contextlib.contextmanager
def chromium(
    pw: Any, *extra_args: str, fake_devices: str | None = None
) -> Iterator[tuple[Any, Any]]:
    """A Chromium of its own (Debian's, never downloaded) and a browser context in it whose
    pages record their peer connections. ``fake_devices`` replaces the fake-device switch's
    value (e.g. ``device-count=2``)."""
    args = [*BROWSER_ARGS, "--autoplay-policy=no-user-gesture-required", *extra_args]
    if fake_devices is not None:
        args = [
            f"--use-fake-device-for-media-stream={fake_devices}"
            if a == "--use-fake-device-for-media-stream"
            else a
            for a in args
        ]
    browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=args)
    try:
        context = browser.new_context(viewport={"width": 1200, "height": 1000})
        context.add_init_script(RECORD_PEER_CONNECTIONS_JS)
        yield browser, context
    finally:
        browser.close()


@contextlib.contextmanager
def chromium_page(
    pw: Any,
    camera: Path | None = None,
    microphone: Path | None = None,
    viewport: tuple[int, int] = (1000, 900),
) -> Iterator[Any]:
    """A page in a Chromium of its own, whose fake camera plays ``camera`` (y4m/mjpeg) and
    fake microphone plays ``microphone`` (a WAV; Chromium loops it unless the path ends in
    ``%noloop``). The page records its peer connections in ``window.__rtcPeerConnections``."""
    args = [*BROWSER_ARGS, "--autoplay-policy=no-user-gesture-required"]
    if camera is not None:
        args.append(f"--use-file-for-fake-video-capture={camera}")
    if microphone is not None:
        args.append(f"--use-file-for-fake-audio-capture={microphone}")
    chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=args)
    try:
        context = chromium.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        context.add_init_script(RECORD_PEER_CONNECTIONS_JS)
        yield context.new_page()
    finally:
        chromium.close()
