"""The Gradio page with ``gateway.processes: 2`` in headless Debian Chromium (issue 10).

One Gradio app (written by this module, run in its own process joining the test session's
Ray) has one WebRTC component whose handler inverts the picture, ``concurrency_limit=2``;
its config override ``RTCPOOL_GATEWAY__PROCESSES=2`` starts two media processes beside the
app's process. Two tabs of one Chromium stream at once:

* both show inverted video (pixels of the fake camera's picture, inverted);
* the two sessions are on the two media processes (``media_pid`` of GET /webrtc/sessions),
  neither in the app's own process;
* kill -9 of tab 1's media process: tab 1 shows the session ended (the component's error
  state and text) within 10 s, tab 2 keeps streaming inverted video, the stream's slot
  comes back, the dead process is replaced, and tab 1 streams again on a fresh Start.

Screenshots go to artifacts/mp-*.png.
"""

from __future__ import annotations

import os
import signal
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime import constants as C
from tests.e2e import page as ui
from tests.e2e.conftest import App, chromium, face_picture, run_app

pytestmark = pytest.mark.browser

STREAM_ID = "stream-0"  # the app's only stream
STREAM_START_TIMEOUT_S = 120.0  # a cold pool may start a worker (which imports the app) first
PAGE_LOAD_TIMEOUT_S = 30.0
VIDEO_TIMEOUT_S = 30.0  # processed video shows the handler's effect by then
PAGE_ENDS_S = 10.0  # issue 10: the page shows that the session ended within this of the kill
SLOT_BACK_S = 5.0  # issue 10: a dead media process's slots come back within this
REPLACED_S = 60.0  # a new media process (a Ray actor importing aiortc) on 2 busy cores
STREAMING_ON_S = 3.0  # tab 2 is watched this long after the kill
MIN_FRAMES_ON = 10  # processed frames tab 2 must paint meanwhile (the camera sends 20 fps)

APP = '''
"""Inverted video, two sessions at once (written by tests/e2e/test_media_processes_browser.py)."""

import os

import gradio as gr

from gradio_ext import WebRTC


def invert(frame):
    return 255 - frame


with gr.Blocks() as demo:
    video = WebRTC(label="Inverted", elem_id="invert")
    video.stream(invert, inputs=[video], outputs=[video], concurrency_limit=2, time_limit=300)

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ["GRADIO_SERVER_NAME"],
        server_port=int(os.environ["GRADIO_SERVER_PORT"]),
    )
'''

SEL = "#invert"


# frames the processed video paints, counted by the browser itself

# the states the newest peer connection goes through, with the time (s) since this ran
WATCH_PC_JS = """() => {
  const pc = window.__rtcPeerConnections[window.__rtcPeerConnections.length - 1];
  const t0 = performance.now();
  window.mpStates = [];
  const note = () => window.mpStates.push(
    [((performance.now() - t0) / 1000).toFixed(1), pc.connectionState, pc.iceConnectionState]);
  pc.addEventListener('connectionstatechange', note);
  pc.addEventListener('iceconnectionstatechange', note);
}"""


@pytest.fixture(scope="module")
def namespace() -> str:
    return f"mp-browser-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def mp_app(
    tmp_path_factory: pytest.TempPathFactory, artifacts: Path, app_ray: str, namespace: str
) -> Iterator[App]:
    script = tmp_path_factory.mktemp("mp_app") / "app.py"
    script.write_text(textwrap.dedent(APP))
    # the namespace is this module's (it overrides run_app's own), so the test can read the
    # app's scheduler: its leases (slots) and its media processes
    env = {"RTCPOOL_GATEWAY__PROCESSES": "2", "RTCPOOL_RAY__NAMESPACE": namespace}
    with run_app(script, artifacts / "mp-app.log", env, ray_address=app_ray) as app:
        yield app


def scheduler_status(namespace: str) -> dict[str, Any]:
    import ray

    scheduler = ray.get_actor(C.SCHEDULER_NAME, namespace=namespace)
    return ray.get(scheduler.status.remote(), timeout=10).to_json()


def leases(namespace: str) -> int:
    return scheduler_status(namespace)["events"][STREAM_ID]["leases"]


def media_pids(namespace: str) -> set[int]:
    """The media processes the scheduler watches (not the app's own process)."""
    return {m["pid"] for m in scheduler_status(namespace)["media"] if not m["in_app"]}


def inverted(page: Any) -> bool:
    """The processed video is the camera's picture inverted (closer to it than to the
    picture itself, by far)."""
    if not ui.has_video(page, SEL):
        return False
    camera = face_picture().astype(int)
    frame = ui.grab(page, f"{SEL} .rtc-remote").astype(int)
    if frame.shape != camera.shape:
        return False
    return bool(np.abs(frame - (255 - camera)).mean() < 0.5 * np.abs(frame - camera).mean())


def open_app(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_function(
        "() => document.querySelector('#invert .rtc-root[data-modality]') !== null",
        timeout=PAGE_LOAD_TIMEOUT_S * 1000,
    )


def start(page: Any) -> None:
    ui.start(page, SEL, STREAM_START_TIMEOUT_S)


def test_two_tabs_on_two_media_processes_and_a_killed_one_ends_only_its_tab(
    playwright_driver: Any, mp_app: App, face_y4m: Path, artifacts: Path, namespace: str
) -> None:
    pids = ui.wait_for(lambda: len(media_pids(namespace)) == 2 and media_pids(namespace), 30)
    assert pids, (
        f"the app did not start two media processes: {scheduler_status(namespace)['media']}"
    )
    assert mp_app.process.pid not in pids

    with chromium(playwright_driver, f"--use-file-for-fake-video-capture={face_y4m}") as (_, ctx):
        first, second = ctx.new_page(), ctx.new_page()
        for tab in (first, second):
            open_app(tab, mp_app.url)

        # tab 1, then tab 2: each session is placed on the least-loaded media process
        start(first)
        assert ui.wait_for(lambda: inverted(first), VIDEO_TIMEOUT_S), (
            "tab 1 does not show inverted video"
        )
        [row] = ui.live_sessions(mp_app.url, STREAM_ID)
        victim = row["media_pid"]
        start(second)
        assert ui.wait_for(lambda: inverted(second), VIDEO_TIMEOUT_S), (
            "tab 2 does not show inverted video"
        )
        on = sorted(s["media_pid"] for s in ui.live_sessions(mp_app.url, STREAM_ID))
        assert on == sorted(pids), (
            f"the two sessions are not on the two media processes: {on}, {pids}"
        )
        assert leases(namespace) == 2
        first.screenshot(path=str(artifacts / "mp-tab1-streaming.png"))
        second.screenshot(path=str(artifacts / "mp-tab2-streaming.png"))

        ui.count_frames(second, SEL, "mpFrames")
        first.evaluate(WATCH_PC_JS)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()

        # tab 1's page says its session ended, by itself: the dead process tells it nothing
        ended = ui.wait_for(lambda: ui.state(first, SEL) != "streaming", PAGE_ENDS_S)
        ended_after = time.monotonic() - killed_at
        assert ended and ended_after < PAGE_ENDS_S, (
            f"tab 1 still says {ui.status(first, SEL)!r} {ended_after:.1f} s after the kill; "
            f"its peer connection went through {first.evaluate('window.mpStates')}"
        )
        assert ui.state(first, SEL) == "error", ui.status(first, SEL)
        status = ui.status(first, SEL)
        assert status == "error — lost the connection to the server", status
        assert "error: lost the connection to the server" in ui.messages(first, SEL)
        pcs = first.evaluate("(window.__rtcPeerConnections || []).map(pc => pc.connectionState)")
        assert pcs[-1] == "closed", pcs
        assert not ui.has_video(first, SEL), "the ended session's video is still shown"
        first.screenshot(path=str(artifacts / "mp-tab1-ended.png"))

        # the slot of the dead process's session is back (the scheduler's doing)
        assert ui.wait_for(lambda: leases(namespace) == 1, SLOT_BACK_S), (
            f"{leases(namespace)} leases {SLOT_BACK_S} s after the kill"
        )
        assert [s["media_pid"] for s in ui.live_sessions(mp_app.url, STREAM_ID)] == [
            p for p in pids if p != victim
        ]

        # tab 2 streams on through the kill: new frames painted, still inverted
        before = second.evaluate("window.mpFrames")
        time.sleep(STREAMING_ON_S)
        painted = second.evaluate("window.mpFrames") - before
        assert painted >= MIN_FRAMES_ON, (
            f"tab 2 painted {painted} frames in {STREAMING_ON_S} s after the kill"
        )
        assert ui.state(second, SEL) == "streaming", ui.status(second, SEL)
        assert inverted(second), "tab 2 no longer shows inverted video"
        second.screenshot(path=str(artifacts / "mp-tab2-after-kill.png"))

        # the dead process is replaced, and tab 1 streams again on a fresh Start
        replaced = ui.wait_for(
            lambda: len(now := media_pids(namespace)) == 2 and victim not in now and now, REPLACED_S
        )
        assert replaced, f"the media process was not replaced: {media_pids(namespace)}"
        start(first)
        assert ui.wait_for(lambda: inverted(first), VIDEO_TIMEOUT_S), "tab 1 does not stream again"
        assert sorted(s["media_pid"] for s in ui.live_sessions(mp_app.url, STREAM_ID)) == sorted(
            replaced
        )
        first.screenshot(path=str(artifacts / "mp-tab1-again.png"))
        print(
            f"tab 1 showed the end {ended_after:.1f} s after the kill; media {pids} -> {replaced}"
        )

        ui.stop_and_check_released(first, f"{SEL} .rtc-root")
        ui.stop_and_check_released(second, f"{SEL} .rtc-root")
    assert ui.wait_for(lambda: leases(namespace) == 0, SLOT_BACK_S)
