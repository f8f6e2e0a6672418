"""Browser fixtures: a demo app in its own process (with its own local Ray), Debian's
Chromium driven by Playwright, and a fake camera that films a real face.

Chromium is never downloaded: the tests use Debian's /usr/bin/chromium (scripts/setup.sh installs it).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest

from tests.conftest import free_port, joining_ray
from tests.e2e.page import RECORD_PEER_CONNECTIONS_JS

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
APP_START_TIMEOUT_S = 120.0  # Ray start + Gradio import on 2 cores
APP_STOP_TIMEOUT_S = 20.0  # after SIGINT: Gradio closes, Ray shuts its processes down
TREE_GRACE_S = 3.0  # the app gone, its Ray processes this long to follow before they are killed
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
    # the app itself first: its exit is what shuts its Ray down. Waiting on the whole tree
    # instead ran out the full timeout every time (measured: each teardown took exactly
    # APP_STOP_TIMEOUT_S), held by Ray processes in groups of their own that SIGINT never
    # reached and that only go once the app has gone
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(APP_STOP_TIMEOUT_S)
    _, alive = psutil.wait_procs(tree, timeout=TREE_GRACE_S)
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



class AppPrefetcher:
    """Serves a module's apps one test at a time, starting the next test's app while a
    test uses the current one. An example app takes 15-40 s to start on 2 cores (Gradio
    imported, Ray joined, its scheduler's and inbox's Ray workers started), a sequence of
    mostly single-threaded waits; the test before it mostly waits on real-time audio and
    video. Every test still gets a fresh app of its own, stopped after it.

    ``order``: the names in the order the selected tests ask for them; ``start(name)``:
    a context manager that runs the app (``run_app``). RTCPOOL_E2E_PREFETCH=0 starts each
    app only when its test asks (one process at a time, as before)."""

    def __init__(self, order: Sequence[str], start: Callable[[str], contextlib.AbstractContextManager[App]]) -> None:
        self.order = list(order)
        self._start = start
        self._ahead = os.environ.get("RTCPOOL_E2E_PREFETCH", "1") != "0"
        # one starter thread: the next app starts once the current one serves
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="app-prefetch")
        self._pending: dict[str, concurrent.futures.Future[tuple[contextlib.ExitStack, App]]] = {}

    def _started(self, name: str) -> tuple[contextlib.ExitStack, App]:
        stack = contextlib.ExitStack()
        try:
            return stack, stack.enter_context(self._start(name))
        except BaseException:
            stack.close()
            raise

    def _launch(self, name: str) -> None:
        if name not in self._pending:
            self._pending[name] = self._pool.submit(self._started, name)

    @contextlib.contextmanager
    def app(self, name: str) -> Iterator[App]:
        """``name``'s app, serving, for the ``with`` block; then stopped."""
        self._launch(name)
        if self._ahead and name in self.order:
            following = self.order[self.order.index(name) + 1 :]
            if following:
                self._launch(following[0])
        stack, app = self._pending.pop(name).result(APP_START_TIMEOUT_S * 2)
        with stack:
            yield app

    def close(self) -> None:
        """Stop the apps started for tests that did not run (a test failed before asking)."""
        for future in self._pending.values():
            with contextlib.suppress(Exception):
                future.result(APP_START_TIMEOUT_S * 2)[0].close()
        self._pending.clear()
        self._pool.shutdown(wait=True)


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
