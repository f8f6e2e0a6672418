"""The face-detection demo in headless Chromium: a real page, camera, peer connection,
gateway, Ray worker and detector, with the fake camera filming a real face.

One app process serves the module, with two deployment overrides (rtcpool's config, set
through the environment): one session at a time with the queue off, so the "server full"
path can be seen (the queue has its own tests: test_queue_browser.py), and a time limit
short enough to wait out.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.e2e import page as ui
from tests.e2e.conftest import REPO, App, face_picture, run_app

pytestmark = pytest.mark.browser

FACE_APP = REPO / "examples" / "face_detection" / "app.py"
STREAM_ID = "stream-0"  # the demo's only stream
TIME_LIMIT_S = 30  # long enough for the face test's steps on a slow box, short enough to wait out
STREAM_START_TIMEOUT_S = 120.0  # a cold pool may start a worker (which imports Gradio) first
FRAMES_WINDOW_S = 20.0
MIN_FRAMES = 20  # processed frames the page must show within FRAMES_WINDOW_S
SLIDER_TIMEOUT_S = 20.0  # a slider move reaches the worker and shows in the video by then
RELEASE_TIMEOUT_S = 30.0  # a stopped session's slot is free again by then
MIN_BOX_PIXELS = 400  # box-coloured pixels around the face: the 4 px box is ~1800 before VP8
MAX_STRAY_PIXELS = 60  # box-coloured pixels that VP8 may invent where no box is drawn
FACE_MARGIN = 0.35  # the region searched for the box: the face grown by this much per side


@pytest.fixture(scope="module")
def face_app(artifacts: Path, app_ray: str) -> Iterator[App]:
    env = {
        f"RTCPOOL_STREAMS__{STREAM_ID}__CONCURRENCY_LIMIT": "1",
        f"RTCPOOL_STREAMS__{STREAM_ID}__TIME_LIMIT": str(TIME_LIMIT_S),
        f"RTCPOOL_STREAMS__{STREAM_ID}__QUEUE": "false",
    }
    with run_app(FACE_APP, artifacts / "browser-face-demo.log", env, ray_address=app_ray) as app:
        yield app


def face_region() -> tuple[slice, slice]:
    """Rows and columns around the face in the camera picture, found independently of the
    demo (scikit-image's cascade with its own merging), grown by FACE_MARGIN."""
    from skimage.data import lbp_frontal_face_cascade_filename
    from skimage.feature import Cascade

    gray = cv2.cvtColor(face_picture(), cv2.COLOR_RGB2GRAY)
    found = Cascade(lbp_frontal_face_cascade_filename()).detect_multi_scale(
        img=gray,
        scale_factor=1.2,
        step_ratio=1,
        min_size=(40, 40),
        max_size=gray.shape,
        min_neighbor_number=4,
    )
    face = max(found, key=lambda d: d["width"] * d["height"])
    grow_r, grow_c = int(face["height"] * FACE_MARGIN), int(face["width"] * FACE_MARGIN)
    rows = slice(max(0, face["r"] - grow_r), face["r"] + face["height"] + grow_r)
    cols = slice(max(0, face["c"] - grow_c), face["c"] + face["width"] + grow_c)
    return rows, cols


def box_pixels(rgb: np.ndarray) -> np.ndarray:
    """Where the demo's box colour (pure green) is, with room for VP8's colour error."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return (g >= 150) & (r <= 110) & (b <= 110)


def start_stream(page: Any, url: str) -> None:
    page.goto(url)
    page.click(".rtc-button")
    ui.wait_streaming(page, timeout=STREAM_START_TIMEOUT_S)


def test_face_demo_boxes_the_face_and_follows_the_slider(
    face_app: App, new_page: Any, artifacts: Path
) -> None:
    page = new_page()
    start_stream(page, face_app.url)
    # inside the demo's gr.Group: the group's thin border, no thick frame of the component's own
    border = page.evaluate(
        "() => getComputedStyle(document.querySelector('.rtc-root').closest('.block')).borderTopWidth"
    )
    assert border in ("0px", "1px"), border
    ui.count_frames(page, name="rtcFrames")
    frames = ui.wait_for(lambda: page.evaluate("window.rtcFrames") > MIN_FRAMES, FRAMES_WINDOW_S)
    assert frames, (
        f"only {page.evaluate('window.rtcFrames')} processed frames in {FRAMES_WINDOW_S} s"
    )
    assert "s left" in ui.status(page), "the time limit countdown is not shown"
    # gateway.video_codecs' default: H.264 both ways (constrained baseline or baseline, mode 1)
    codecs = ui.wait_for(lambda: len(c := ui.video_codecs(page)) == 2 and c, FRAMES_WINDOW_S)
    assert codecs and {k: v.split()[0] for k, v in codecs.items()} == {"inbound-rtp": "video/H264", "outbound-rtp": "video/H264"}, codecs
    assert all("packetization-mode=1" in v and "profile-level-id=42" in v for v in codecs.values()), codecs

    rows, cols = face_region()
    remote = ui.grab(page)
    camera = ui.grab(page, ".rtc-local")
    assert remote.shape == camera.shape == (480, 640, 3)
    boxed = int(box_pixels(remote)[rows, cols].sum())
    assert boxed >= MIN_BOX_PIXELS, (
        f"no detection box around the face ({boxed} box-coloured pixels)"
    )
    assert box_pixels(camera).sum() <= MAX_STRAY_PIXELS, (
        "the raw camera picture already has the box colour"
    )
    page.screenshot(path=str(artifacts / "browser-face-demo.png"))

    # the threshold slider reaches the worker while it streams: at 1.0 no face qualifies
    page.locator("input[type=range]").fill("1")
    gone = ui.wait_for(
        lambda: box_pixels(ui.grab(page))[rows, cols].sum() <= MAX_STRAY_PIXELS,
        SLIDER_TIMEOUT_S,
    )
    assert gone, "boxes are still drawn after the confidence threshold went to 1.0"
    page.locator("input[type=range]").fill("0.3")
    back = ui.wait_for(
        lambda: box_pixels(ui.grab(page))[rows, cols].sum() >= MIN_BOX_PIXELS,
        SLIDER_TIMEOUT_S,
    )
    assert back, "boxes did not come back at threshold 0.3"

    ui.stop_and_check_released(page)


def test_full_server_says_retry_then_admits_after_stop(face_app: App, new_page: Any) -> None:
    first, second = new_page(), new_page()
    start_stream(first, face_app.url)
    second.goto(face_app.url)
    second.click(".rtc-button")
    second.wait_for_function(
        "() => document.querySelector('.rtc-root').dataset.state === 'full'", timeout=30_000
    )
    assert re.fullmatch(r"server full — retry in \d+ s", ui.status(second))

    ui.stop_and_check_released(first)  # frees the only slot

    def admitted() -> bool:
        if ui.state(second) in ("idle", "stopped", "error"):
            second.click(".rtc-button")
        return ui.state(second) == "streaming"

    assert ui.wait_for(admitted, RELEASE_TIMEOUT_S), ui.status(second)
    ui.stop_and_check_released(second)


# The time bar's width (percent of the time limit left), sampled ten times a second while
# the stream runs, and once more when it has ended.
SAMPLE_BAR_JS = """() => {
  const root = document.querySelector('.rtc-root');
  const fill = root.querySelector('.rtc-timebar-fill');
  window.rtcBar = [];
  const timer = setInterval(() => {
    window.rtcBar.push(parseFloat(fill.style.width));
    if (root.dataset.state !== 'streaming') clearInterval(timer);
  }, 100);
}"""
BAR_FULL_PCT = 90.0  # the first sample, taken as the stream starts
BAR_STEP_PCT = 1.0  # a sample may read this much above the one before (rounding), no more


def test_time_limit_bar_runs_down_to_zero_then_the_stream_closes(face_app: App, new_page: Any) -> None:
    page = new_page()
    start_stream(page, face_app.url)
    assert page.is_visible(".rtc-timebar")
    page.evaluate(SAMPLE_BAR_JS)
    page.wait_for_function(
        "() => document.querySelector('.rtc-root').dataset.state !== 'streaming'",
        timeout=(TIME_LIMIT_S + 30) * 1000,
    )
    assert ui.state(page) == "stopped"
    assert f"time limit of {TIME_LIMIT_S} s reached" in ui.status(page)
    page.wait_for_function("() => window.rtcBar.length && window.rtcBar[window.rtcBar.length - 1] === 0")
    widths = page.evaluate("() => window.rtcBar")
    assert widths[0] >= BAR_FULL_PCT, widths[:5]
    assert all(b <= a + BAR_STEP_PCT for a, b in zip(widths, widths[1:], strict=False)), (
        "the time bar went back up"
    )
    # it reached zero, and stays there, shown, once the server has ended the stream
    assert widths[-1] == 0.0
    assert page.is_visible(".rtc-timebar")
    assert ui.released(face_app.url, STREAM_ID), ui.live_sessions(face_app.url, STREAM_ID)
