"""What a person sees and does with the WebRTC component, in headless Debian Chromium.

One Gradio app (written by this module, run in its own process with its own local Ray)
holds four components on one page: two video streams with different handlers (inverted
colours; one colour channel saturated, the channel being a live input), a microphone echo
and a receive-only tone. Each test opens it in a Chromium of its own whose fake devices
play what the test needs, and checks outcomes in pixels and audio levels:

* two components on one page stream at once, each showing its own handler's video; the
  camera preview is mirrored only where ``mirror_webcam`` says so; the snapshot button
  saves the processed frame as a PNG;
* two tabs of one app each get their own session, with their own inputs;
* an audio component is a compact panel (no video area) with ``icon`` on its button; its
  level meter, in ``pulse_color``, follows speech from the fake microphone, stays near
  zero on silence, and follows the incoming audio where there is no microphone;
* the camera and microphone lists are the browser's own, and picking another camera while
  streaming swaps the track (processed video changes) without a new offer;
* without Gradio: a gateway on a plain FastAPI app serves the same client at /webrtc/ui.

Screenshots go to artifacts/ui-*.png.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from tests.e2e import page as ui
from tests.e2e.conftest import App, chromium, face_picture, run_app
from tests.speech import composed_wav

pytestmark = pytest.mark.browser

STREAM_START_TIMEOUT_S = 120.0  # a cold pool may start a worker first
PAGE_LOAD_TIMEOUT_S = 30.0
PREVIEW_BORDER_PX = 4  # the preview's 2 px frame, and a pixel of antialiasing, each side
MIRROR_RATIO = 0.7  # a preview is mirrored when it is this much closer to the mirror image
VIDEO_TIMEOUT_S = 30.0  # processed video shows the handler's effect by then
METER_TIMEOUT_S = 30.0  # the meter reacts to speech or incoming audio by then
CHANNEL_SATURATED = 230  # a channel the tint handler set to 255, after VP8
MIN_SATURATED_SHARE = 0.9  # share of pixels with the tinted channel saturated
MAX_OTHER_SATURATED_SHARE = 0.5  # the camera picture saturates other channels far less
SPEECH_MIN_LEVEL = 0.35  # meter (0..1, linear in dB over 60 dB) on espeak speech peaks
SILENCE_MAX_LEVEL = 0.15  # meter on a -60 dBFS noise floor: about zero
METER_WINDOW_FRAMES = 90  # animation frames per meter reading (~1.5 s at 60 fps)
SILENCE_WINDOWS = 2  # silence is read over this many windows, all below SILENCE_MAX_LEVEL
# Chromium's fake cameras (--use-fake-device-for-media-stream=device-count=3): fake_device_0
# draws a clock text and a pie on green, fake_device_2 plain green (fake_device_1's Y16
# frames are never encoded: it sends nothing). The clock's row tells them apart.
FAKE_CAMERAS = "device-count=3"
CLOCK_ROWS, CLOCK_COLS = slice(20, 70), slice(80, 400)  # at 640x480
CLOCK_MIN_STD = 20.0  # std of the green channel there with the clock (~41 before VP8)
PLAIN_MAX_STD = 8.0  # ... on plain green (0 before VP8)

# stream ids: the app registers its streams in this order
INVERT, TINT, MIC, TONE = "stream-0", "stream-1", "stream-2", "stream-3"

UI_APP = '''
"""Four WebRTC components on one page (written by tests/e2e/test_component_ui.py)."""

import os

import gradio as gr
import numpy as np

from gradio_ext import WebRTC

TONE_RATE = 24_000
TONE_HZ = 440.0
TONE_CHUNK_S = 0.5
TONE_LEVEL = 0.3  # peak, full scale = 1


def invert(frame):
    return 255 - frame


def tint(frame, channel):
    frame[..., int(channel or 0) % 3] = 255
    return frame


def echo(audio):
    return audio


def tone():
    t = np.arange(int(TONE_RATE * TONE_CHUNK_S)) / TONE_RATE
    chunk = (TONE_LEVEL * 32767 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16)[None]
    while True:  # until the user stops or the time limit ends the session
        yield (TONE_RATE, chunk)


with gr.Blocks() as demo:
    with gr.Row():
        inverted = WebRTC(label="Inverted", elem_id="invert", show_download_button=True)
        tinted = WebRTC(label="Tinted", elem_id="tint", mirror_webcam=False)
    channel = gr.Number(label="Channel", value=0, precision=0)
    with gr.Row():
        mic = WebRTC(
            label="Microphone",
            elem_id="mic",
            modality="audio",
            icon=os.environ.get("UI_ICON"),
            icon_button_color="rgb(35, 157, 225)",
            pulse_color="rgb(35, 157, 225)",
        )
        radio = WebRTC(label="Tone", elem_id="tone", mode="receive", modality="audio")
    inverted.stream(invert, inputs=[inverted], outputs=[inverted], concurrency_limit=2, time_limit=120)
    tinted.stream(tint, inputs=[tinted, channel], outputs=[tinted], concurrency_limit=2, time_limit=120)
    mic.stream(echo, inputs=[mic], outputs=[mic], concurrency_limit=2, time_limit=120)
    radio.stream(tone, inputs=None, outputs=[radio], concurrency_limit=2, time_limit=120)

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ["GRADIO_SERVER_NAME"],
        server_port=int(os.environ["GRADIO_SERVER_PORT"]),
    )
'''

FASTAPI_APP = '''
"""A gateway on a plain FastAPI app, no Gradio (written by tests/e2e/test_component_ui.py)."""

import contextlib
import os

import uvicorn
from fastapi import FastAPI

from runtime.front.gateway import Gateway
from workers.handlers import StreamHandler


def invert(frame):
    return 255 - frame


class HangUp(StreamHandler):
    """fastrtc's update_connection: after a second of the microphone, ask the page to close."""

    def __init__(self):
        super().__init__()
        self.heard = 0

    def copy(self):
        return HangUp()

    def receive(self, frame):
        self.heard += frame[1].shape[-1]
        if self.heard >= self.input_sample_rate and not getattr(self, "said", False):
            self.said = True
            self.send_message_sync("closed", "update_connection")

    def emit(self):
        return None


gateway = Gateway()
gateway.add_stream(invert, mode="send-receive", modality="video", time_limit=120)
gateway.add_stream(HangUp(), mode="send-receive", modality="audio", time_limit=120)


@contextlib.asynccontextmanager
async def lifespan(app):
    yield
    await gateway.aclose(drop_pools=True)


app = FastAPI(lifespan=lifespan)
gateway.mount(app)

if __name__ == "__main__":
    gateway.start()  # Ray and the stream's pool, before the first user
    uvicorn.run(app, host=os.environ["GRADIO_SERVER_NAME"], port=int(os.environ["GRADIO_SERVER_PORT"]))
'''


# the meter bar's painted scale, once per animation frame, for `frames` frames
METER_JS = """async ([sel, frames]) => {
  const fill = document.querySelector(sel + ' .rtc-meter-fill');
  const levels = [];
  for (let i = 0; i < frames; i++) {
    await new Promise((r) => requestAnimationFrame(r));
    levels.push(new DOMMatrixReadOnly(getComputedStyle(fill).transform).a);
  }
  return levels;
}"""
LABEL_ICONS_JS = """(sels) => sels.map((s) =>
  document.querySelector(s + ' label[data-testid="block-label"] svg path').getAttribute('d'))"""
GRADIO_CODE_ICON = "m31 16l-7 7l-1.41-1.41L28.17 16l-5.58-5.59L24 9l7 7zM1 16l7-7l1.41 1.41L3.83 16l5.58 5.59L8 23l-7-7zm11.42 9.484L17.64 6l1.932.517L14.352 26z"
LABEL_CLEARS_JS = """([sel, part]) => {
  const label = document.querySelector(sel + ' label[data-testid="block-label"]').getBoundingClientRect();
  return label.bottom <= document.querySelector(sel + ' ' + part).getBoundingClientRect().top;
}"""
OPTIONS_JS = """(sel) => Array.from(document.querySelectorAll(sel + ' option'))
  .map((o) => [o.value, o.textContent])"""
DEVICES_JS = """async (kind) => (await navigator.mediaDevices.enumerateDevices())
  .filter((d) => d.kind === kind).map((d) => [d.deviceId, d.label])"""


def open_app(page: Any, url: str, components: int = 4) -> None:
    """Go to ``url`` and wait until every component's client has run (it marks its root)."""
    page.goto(url)
    page.wait_for_function(
        "(n) => document.querySelectorAll('.rtc-root[data-modality]').length === n",
        arg=components,
        timeout=PAGE_LOAD_TIMEOUT_S * 1000,
    )


def start(page: Any, sel: str) -> None:
    """Click the component's Start and wait until it streams."""
    ui.start(page, sel, STREAM_START_TIMEOUT_S)


def stop(page: Any, sel: str) -> None:
    """Click the component's Stop; the server ends that session at once."""
    ui.stop_and_check_released(page, f"{sel} .rtc-root")


def shows(page: Any, sel: str, expected: np.ndarray, other: np.ndarray) -> bool:
    """The component's processed video is ``expected`` (closer to it than to ``other``)."""
    if not ui.has_video(page, sel):
        return False
    frame = ui.grab(page, f"{sel} .rtc-remote").astype(int)
    if frame.shape != expected.shape:
        return False
    return bool(np.abs(frame - expected).mean() < 0.5 * np.abs(frame - other).mean())


def preview_flip(page: Any, sel: str) -> tuple[float, float]:
    """How far the camera preview, as painted on screen, is from the camera picture and
    from its mirror image (mean absolute difference per channel)."""
    shot = ui.decode_png(page.locator(f"{sel} .rtc-local").screenshot()).astype(int)
    inner = shot[PREVIEW_BORDER_PX:-PREVIEW_BORDER_PX, PREVIEW_BORDER_PX:-PREVIEW_BORDER_PX]
    size = (inner.shape[1], inner.shape[0])
    camera = cv2.resize(face_picture(), size, interpolation=cv2.INTER_AREA).astype(int)
    return float(np.abs(inner - camera).mean()), float(np.abs(inner - camera[:, ::-1]).mean())


def tinted_by(page: Any, sel: str, channel: int) -> bool:
    """The processed video has ``channel`` saturated almost everywhere, the others not."""
    if not ui.has_video(page, sel):
        return False
    frame = ui.grab(page, f"{sel} .rtc-remote")
    saturated = (frame >= CHANNEL_SATURATED).mean(axis=(0, 1))
    others = [saturated[c] for c in range(3) if c != channel]
    return bool(
        saturated[channel] >= MIN_SATURATED_SHARE and max(others) <= MAX_OTHER_SATURATED_SHARE
    )


def clock_std(page: Any, sel: str) -> float | None:
    """Spread of the green channel where fake_device_0 draws its clock (None: no video)."""
    if not ui.has_video(page, sel):
        return None
    frame = ui.grab(page, f"{sel} .rtc-remote")
    return float(frame[CLOCK_ROWS, CLOCK_COLS, 1].std())


def meter_levels(page: Any, sel: str, frames: int = METER_WINDOW_FRAMES) -> list[float]:
    return page.evaluate(METER_JS, [sel, frames])


@pytest.fixture(scope="module")
def ui_app(tmp_path_factory: pytest.TempPathFactory, artifacts: Path, app_ray: str) -> Iterator[App]:
    folder = tmp_path_factory.mktemp("ui_app")
    icon = folder / "icon.png"
    picture = np.zeros((64, 64, 3), np.uint8)
    cv2.circle(picture, (32, 32), 28, (255, 255, 255), -1)
    cv2.imwrite(str(icon), picture)
    script = folder / "app.py"
    script.write_text(textwrap.dedent(UI_APP))
    with run_app(script, artifacts / "ui-app.log", {"UI_ICON": str(icon)}, ray_address=app_ray) as app:
        yield app


# --- several components, several tabs -----------------------------------------------------------


def test_two_components_on_one_page_stream_independently(
    playwright_driver: Any, ui_app: App, face_y4m: Path, artifacts: Path
) -> None:
    camera = face_picture().astype(int)
    with chromium(playwright_driver, f"--use-file-for-fake-video-capture={face_y4m}") as (_, ctx):
        page = ctx.new_page()
        open_app(page, ui_app.url)
        start(page, "#invert")
        start(page, "#tint")
        # each shows its own handler's output, at the same time
        assert ui.wait_for(lambda: shows(page, "#invert", 255 - camera, camera), VIDEO_TIMEOUT_S), (
            "the first component does not show inverted video"
        )
        assert not page.is_visible("#invert .rtc-placeholder"), "the prompt covers the video"
        assert ui.wait_for(lambda: tinted_by(page, "#tint", 0), VIDEO_TIMEOUT_S), (
            "the second component does not show its red-tinted video"
        )
        assert shows(page, "#invert", 255 - camera, camera), "the first stream stopped"
        sessions = page.evaluate(
            f"() => [window.__rtcpool.streams['{INVERT}'].session().id, window.__rtcpool.streams['{TINT}'].session().id]"
        )
        assert sessions[0] != sessions[1]
        # the user's own preview is mirrored (the default) unless the component says not
        straight, flipped = preview_flip(page, "#invert")
        assert flipped < MIRROR_RATIO * straight, ("not mirrored", straight, flipped)
        straight, flipped = preview_flip(page, "#tint")
        assert straight < MIRROR_RATIO * flipped, ("mirrored", straight, flipped)
        page.screenshot(path=str(artifacts / "ui-two-components.png"))

        # the snapshot button saves the processed frame on screen as a PNG
        with page.expect_download() as download:
            page.click("#invert .rtc-snapshot")
        saved = artifacts / "ui-snapshot.png"
        download.value.save_as(saved)
        frame = ui.decode_png(saved.read_bytes()).astype(int)
        assert frame.shape == camera.shape
        assert np.abs(frame - (255 - camera)).mean() < 0.5 * np.abs(frame - camera).mean()
        # the tinted component did not ask for one
        assert not page.is_visible("#tint .rtc-snapshot")

        stop(page, "#invert")
        assert ui.state(page, "#tint") == "streaming", "stopping one stopped the other"
        assert ui.wait_for(lambda: tinted_by(page, "#tint", 0), VIDEO_TIMEOUT_S)
        stop(page, "#tint")


def test_two_tabs_each_get_their_own_stream_and_inputs(
    playwright_driver: Any, ui_app: App, face_y4m: Path, artifacts: Path
) -> None:
    with chromium(playwright_driver, f"--use-file-for-fake-video-capture={face_y4m}") as (_, ctx):
        first, second = ctx.new_page(), ctx.new_page()
        for tab in (first, second):
            open_app(tab, ui_app.url)
        second.get_by_label("Channel").fill("2")  # blue, in the second tab only
        start(first, "#tint")
        start(second, "#tint")
        assert ui.wait_for(lambda: tinted_by(first, "#tint", 0), VIDEO_TIMEOUT_S), "first tab"
        assert ui.wait_for(lambda: tinted_by(second, "#tint", 2), VIDEO_TIMEOUT_S), "second tab"
        assert tinted_by(first, "#tint", 0), "the first tab took the second tab's input"
        # the input reaches only its own tab's session, live
        first.get_by_label("Channel").fill("1")
        assert ui.wait_for(lambda: tinted_by(first, "#tint", 1), VIDEO_TIMEOUT_S)
        assert tinted_by(second, "#tint", 2)
        second.screenshot(path=str(artifacts / "ui-second-tab.png"))
        stop(first, "#tint")
        stop(second, "#tint")


# --- the audio level meter ------------------------------------------------------------------------


def test_level_meter_follows_speech_from_the_microphone(
    playwright_driver: Any, ui_app: App, artifacts: Path
) -> None:
    speech = composed_wav([0.3, "one two three four five six seven eight", 0.5])
    with chromium(playwright_driver, f"--use-file-for-fake-audio-capture={speech}") as (_, ctx):
        page = ctx.new_page()
        open_app(page, ui_app.url)
        # a compact audio panel, not an empty video area
        assert not page.is_visible("#mic .rtc-stage")
        assert page.is_visible("#mic .rtc-meter")
        assert page.is_visible("#mic .rtc-icon"), "the icon is not on the button"
        start(page, "#mic")
        # the file loops: speech, then ~1 s of the noise floor. The meter must rise with the
        # speech and fall back in the pause after it
        levels: list[float] = []

        def rose_then_fell() -> bool:
            levels.extend(meter_levels(page, "#mic"))
            rise = next((i for i, v in enumerate(levels) if v >= SPEECH_MIN_LEVEL), None)
            return rise is not None and min(levels[rise:]) <= SILENCE_MAX_LEVEL

        assert ui.wait_for(rose_then_fell, METER_TIMEOUT_S), (
            f"the meter did not follow the speech: {[round(v, 2) for v in levels[::10]]}"
        )
        colour = page.evaluate(
            "() => getComputedStyle(document.querySelector('#mic .rtc-meter-fill')).backgroundColor"
        )
        assert colour == "rgb(35, 157, 225)", "pulse_color does not colour the meter"
        # a picture with the bar up (a few frames' reading, then the screenshot at once)
        ui.wait_for(lambda: meter_levels(page, "#mic", 3)[-1] >= SPEECH_MIN_LEVEL, METER_TIMEOUT_S)
        page.screenshot(path=str(artifacts / "ui-audio-meter.png"))
        stop(page, "#mic")
        assert max(meter_levels(page, "#mic", 2)) == 0, "the meter did not reset on stop"


def test_level_meter_stays_low_on_silence_and_follows_incoming_audio(
    playwright_driver: Any, ui_app: App, artifacts: Path
) -> None:
    silence = composed_wav([3.0])  # the -60 dBFS noise floor only
    with chromium(playwright_driver, f"--use-file-for-fake-audio-capture={silence}") as (_, ctx):
        page = ctx.new_page()
        open_app(page, ui_app.url)
        start(page, "#mic")
        for _ in range(SILENCE_WINDOWS):
            levels = meter_levels(page, "#mic")
            assert max(levels) <= SILENCE_MAX_LEVEL, levels
        stop(page, "#mic")

        # receive-only: no microphone, the meter shows what the server plays
        start(page, "#tone")
        assert (
            page.evaluate("() => document.querySelector('#tone .rtc-meter-label').textContent")
            == "incoming audio"
        )
        heard = ui.wait_for(
            lambda: max(meter_levels(page, "#tone")) >= SPEECH_MIN_LEVEL, METER_TIMEOUT_S
        )
        assert heard, f"the meter does not follow the incoming tone: {meter_levels(page, '#tone')}"
        page.screenshot(path=str(artifacts / "ui-incoming-meter.png"))
        stop(page, "#tone")


# --- devices --------------------------------------------------------------------------------------


def test_device_lists_are_the_browsers_and_switching_camera_keeps_the_session(
    playwright_driver: Any, ui_app: App, artifacts: Path
) -> None:
    with chromium(playwright_driver, fake_devices=FAKE_CAMERAS) as (_, ctx):
        page = ctx.new_page()
        offers: list[str] = []

        def count_offers(request: Any) -> None:
            if request.method == "POST" and request.url.endswith("/webrtc/offer"):
                offers.append(request.url)

        page.on("request", count_offers)
        open_app(page, ui_app.url)
        # idle: the video area says what to do, not a bare black box
        assert page.locator("#invert .rtc-placeholder").inner_text() == "Click Start to share your camera"
        # the label badge shows a camera or a microphone, not gr.HTML's "</>" code icon,
        # and does not cover the top of the component
        icons = page.evaluate(LABEL_ICONS_JS, ["#invert", "#mic"])
        assert len(set(icons)) == 2 and GRADIO_CODE_ICON not in icons, icons
        for sel, part in (("#invert", ".rtc-stage"), ("#mic", ".rtc-audio-panel")):
            assert page.evaluate(LABEL_CLEARS_JS, [sel, part]), f"{sel}: the label covers {part}"
        cameras = page.evaluate(DEVICES_JS, "videoinput")
        mics = page.evaluate(DEVICES_JS, "audioinput")
        assert len(cameras) == 3 and len(mics) >= 1, (cameras, mics)
        page.wait_for_function(
            "(n) => document.querySelectorAll('#invert .rtc-camera option').length === n",
            arg=len(cameras),
        )
        # the lists are the browser's own, in its order, with its labels
        assert page.evaluate(OPTIONS_JS, "#invert .rtc-camera") == cameras
        assert page.evaluate(OPTIONS_JS, "#mic .rtc-mic") == mics
        # a video-only component lists no microphones, a receive-only one nothing
        assert not page.is_visible("#invert .rtc-mic")
        assert not page.is_visible("#tone .rtc-camera") and not page.is_visible("#tone .rtc-mic")
        page.screenshot(path=str(artifacts / "ui-device-lists.png"))

        clock, plain = cameras[0][0], cameras[2][0]
        page.select_option("#invert .rtc-camera", clock)  # picked before Start: used at Start
        start(page, "#invert")
        shown = ui.wait_for(
            lambda: (std := clock_std(page, "#invert")) is not None and std >= CLOCK_MIN_STD,
            VIDEO_TIMEOUT_S,
        )
        assert shown, (
            f"the picked camera's clock is not in the processed video: {clock_std(page, '#invert')}"
        )
        session_id = page.evaluate(f"() => window.__rtcpool.streams['{INVERT}'].session().id")

        page.select_option("#invert .rtc-camera", plain)  # while streaming
        switched = ui.wait_for(
            lambda: (std := clock_std(page, "#invert")) is not None and std <= PLAIN_MAX_STD,
            VIDEO_TIMEOUT_S,
        )
        assert switched, f"the processed video did not switch cameras: {clock_std(page, '#invert')}"
        page.screenshot(path=str(artifacts / "ui-device-switch.png"))
        # the same session, peer connection and worker: the track was replaced in place
        assert ui.state(page, "#invert") == "streaming"
        assert page.evaluate(f"() => window.__rtcpool.streams['{INVERT}'].session().id") == session_id
        assert len(offers) == 1, f"switching cameras renegotiated: {offers}"
        assert page.evaluate("() => window.__rtcPeerConnections.length") == 1
        stop(page, "#invert")


# --- without Gradio -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fastapi_app(tmp_path_factory: pytest.TempPathFactory, artifacts: Path, app_ray: str) -> Iterator[App]:
    script = tmp_path_factory.mktemp("fastapi_app") / "app.py"
    script.write_text(textwrap.dedent(FASTAPI_APP))
    with run_app(script, artifacts / "ui-standalone.log", ray_address=app_ray) as app:
        yield app


def test_standalone_page_streams_without_gradio(
    playwright_driver: Any, fastapi_app: App, face_y4m: Path, artifacts: Path
) -> None:
    camera = face_picture().astype(int)
    missing = httpx.get(f"{fastapi_app.url}/webrtc/ui", params={"stream": "nope"}, timeout=10)
    assert missing.status_code == 404
    assert missing.json()["meta"]["error"] == "unknown_stream"
    with chromium(playwright_driver, f"--use-file-for-fake-video-capture={face_y4m}") as (_, ctx):
        page = ctx.new_page()
        page.goto(f"{fastapi_app.url}/webrtc/ui")
        page.screenshot(path=str(artifacts / "ui-standalone-index.png"))
        page.click("text=stream-0")  # the index links to the stream's page
        page.wait_for_selector(".rtc-root[data-modality]", timeout=PAGE_LOAD_TIMEOUT_S * 1000)
        assert "/webrtc/ui?stream=stream-0" in page.url
        start(page, "body")
        assert ui.wait_for(lambda: shows(page, "body", 255 - camera, camera), VIDEO_TIMEOUT_S), (
            "the standalone page does not show the processed (inverted) video"
        )
        assert page.is_visible(".rtc-timebar"), "the time limit is not shown"
        assert page.evaluate("() => typeof window.gradio_config") == "undefined"
        page.screenshot(path=str(artifacts / "ui-standalone.png"))
        stop(page, "body")


def test_update_connection_closed_from_the_handler_hangs_the_page_up(playwright_driver: Any, fastapi_app: App) -> None:
    with chromium(playwright_driver) as (_, ctx):
        page = ctx.new_page()
        page.goto(f"{fastapi_app.url}/webrtc/ui?stream=stream-1")
        page.wait_for_selector(".rtc-root[data-modality]", timeout=PAGE_LOAD_TIMEOUT_S * 1000)
        start(page, "body")
        closed = ui.wait_for(lambda: ui.state(page, "body") == "stopped", VIDEO_TIMEOUT_S)
        status = ui.status(page, "body")
        assert closed and "the server closed the connection" in status, status
        pcs = page.evaluate("(window.__rtcPeerConnections || []).map(pc => pc.connectionState)")
        assert pcs == [] or "closed" in pcs, pcs
        assert ui.released(fastapi_app.url, "stream-1"), ui.live_sessions(fastapi_app.url, "stream-1")
