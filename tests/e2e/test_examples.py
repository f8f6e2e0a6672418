"""Every example under examples/ in headless Chromium, one app subprocess each.

Each test gets ``python examples/<name>/app.py`` of its own, joined to the session's Ray
(conftest's ``run_app``; the next test's app starts while a test runs: ``AppPrefetcher``),
opens it in a Chromium of its own whose fake camera/microphone play what the example needs,
and checks what a person would: reply audio arrives and is not silence, the transcript
fills with words that were said, processed video is the filter's (flip, edges,
cartoon: compared in pixels with the example's own function), a server-side clip plays and
ends with its file, a second tab is told the server is full, and Stop stops (the server
lists the session no more, well before its own timeouts). Each writes a screenshot to
artifacts/example-<name>.png.
"""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.e2e import page as ui
from tests.e2e.conftest import REPO, App, AppPrefetcher, chromium_page, face_picture, run_app
from tests.echo import find_echo
from tests.speech import composed_wav

pytestmark = pytest.mark.browser

EXAMPLES = REPO / "examples"
STREAM_START_TIMEOUT_S = 120.0  # a cold pool may start a worker (which imports Gradio) first
REPLY_TIMEOUT_S = 40.0  # utterance + pause detection + reply playing, on a slow box
UTTERANCE = "hello, this is a test of the echo"
UTTERANCE_WORDS = {"hello", "this", "test", "echo"}  # the utterance's words PocketSphinx may hear
PAUSE_S = 3.0  # silence after the utterance: ReplyOnPause needs a pause to reply
LEAD_IN_S = 0.5  # silence before the utterance
MIN_REPLY_ENERGY = 1e-3  # inbound totalAudioEnergy of an audible reply (a -60 dBFS floor: ~1e-6/s)
MIN_REPLY_SAMPLES = 48_000  # one second of received audio at 48 kHz


def start_stream(page: Any, url: str | None, button: str | None = None) -> None:
    """Open ``url`` (None: stay on the page) and click the component's Start button, or the
    app's own ``button`` (a stream's ``trigger=``)."""
    if url is not None:
        page.goto(url)
    if button is None:
        page.click(".rtc-button")
    else:
        page.get_by_role("button", name=button, exact=True).click()
    ui.wait_streaming(page, timeout=STREAM_START_TIMEOUT_S)


def stop_stream(page: Any) -> None:
    """The Stop button stops: the page says so, and the server ends the session at once."""
    ui.stop_and_check_released(page)


@pytest.fixture(scope="module")
def examples(request: pytest.FixtureRequest, artifacts: Path, app_ray: str) -> Iterator[AppPrefetcher]:
    """examples/<name>/app.py served, joined to the session's Ray, one fresh app per test,
    the next selected test's app starting while a test runs (AppPrefetcher)."""
    order = [
        marker.args[0]
        for item in request.session.items
        if getattr(item, "module", None) is request.module and (marker := item.get_closest_marker("example"))
    ]
    prefetcher = AppPrefetcher(
        order, lambda name: run_app(EXAMPLES / name / "app.py", artifacts / f"example-{name}.log", ray_address=app_ray)
    )
    try:
        yield prefetcher
    finally:
        prefetcher.close()


@pytest.fixture
def app(request: pytest.FixtureRequest, examples: AppPrefetcher) -> Iterator[App]:
    """The app of the test's ``@pytest.mark.example(name)``, serving; stopped after the test."""
    marker = request.node.get_closest_marker("example")
    assert marker is not None, "a test of an example app names it: @pytest.mark.example(name)"
    with examples.app(marker.args[0]) as served:
        yield served


@pytest.fixture(scope="module")
def speech_then_pause() -> Path:
    return composed_wav([LEAD_IN_S, UTTERANCE, PAUSE_S])


# The transcription example decodes each 1 s chunk on its own, wherever the chunk grid cuts
# the speech (where it falls is the stream's start, not the test's to choose). Measured here
# over 30 grid offsets: a sentence cut in 1 s pieces gave no word of it back for 1 offset in
# 5; these two short words, which PocketSphinx's model gets right alone, ~1.5 s apart (so of
# two in a row one always lies inside a chunk), gave at least two back in 8 chunks for every one.
CHUNKED_WORDS = ("yes", "three")
CHUNKED_GAP_S = 0.8
CHUNKED_REPEATS = 5


@pytest.fixture(scope="module")
def chunkable_words() -> Path:
    parts: list[str | float] = []
    for _ in range(CHUNKED_REPEATS):
        for word in CHUNKED_WORDS:
            parts += [word, CHUNKED_GAP_S]
    return composed_wav(parts)


# --- 1. ReplyOnPause echo ---------------------------------------------------------------------


@pytest.mark.example("reply_on_pause_echo")
def test_reply_on_pause_echo_plays_the_utterance_back(
    playwright_driver: Any, speech_then_pause: Path, artifacts: Path, app: App
) -> None:
    with chromium_page(playwright_driver, microphone=speech_then_pause) as page:
        start_stream(page, app.url)
        audio = lambda: ui.inbound_audio(page)  # noqa: E731
        # audible, and a whole second of it: the counters are read while the reply plays, so
        # the first audible reading may come a fraction of a second into it (CI-found)
        heard = ui.wait_for(
            lambda: (a := audio()) and a["energy"] >= MIN_REPLY_ENERGY and a["samples"] >= MIN_REPLY_SAMPLES and a,
            REPLY_TIMEOUT_S,
        )
        assert heard, f"no second of audible reply within {REPLY_TIMEOUT_S} s: {audio()}\n{app.log_tail()}"
        page.screenshot(path=str(artifacts / "example-reply_on_pause_echo.png"))
        # the seed's component has no label: no (empty) label badge either
        assert page.locator('label[data-testid="block-label"]').count() == 0
        stop_stream(page)
        # the same Gradio app answers fastrtc's WebSocket clients, with the same handler
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # Playwright's loop runs in this thread
            said, heard = pool.submit(lambda: asyncio.run(websocket_echo(app.url))).result()
        echo = find_echo(heard, said, rate=WS_OUT_RATE)
        assert not echo.problems(), f"the WebSocket echo: {echo}\n{app.log_tail()}"


WS_IN_RATE, WS_OUT_RATE = 48_000, 24_000  # ReplyOnPause's default input and output rates


async def websocket_echo(url: str) -> tuple[np.ndarray, np.ndarray]:
    """The utterance through /websocket/offer as mu-law; (what was said as the reply should
    carry it: 24 kHz through mu-law, what came back)."""
    from runtime.clients.websocket import WebSocketClient
    from runtime.media import mulaw
    from tests.speech import speech
    from workers.audio import resample

    said = speech(UTTERANCE, WS_IN_RATE)
    loud = np.nonzero(np.abs(said) > 0.02)[0]
    voiced = said[loud[0] : loud[-1] + 1]
    expected = mulaw.decode(mulaw.encode((resample(voiced, WS_IN_RATE, WS_OUT_RATE) * 32767).astype(np.int16)))
    async with WebSocketClient(url, rate=WS_IN_RATE) as client:
        await client.play_silence(LEAD_IN_S)
        await client.play(said)
        await client.play_silence(PAUSE_S)
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        # until the whole reply is in, not until as many samples came as it has: what comes
        # back may start with a lead (CI-found: the last piece was cut off by the hang-up)
        while find_echo(client.received_audio(), expected, rate=WS_OUT_RATE).problems() and time.monotonic() < deadline:
            await client.play_silence(0.5)
        heard = client.received_audio()
    return expected, heard


# --- 2. AdditionalOutputs transcript ------------------------------------------------------------

BOT_MESSAGES_JS = """() => Array.from(document.querySelectorAll('[data-testid="bot"]'))
  .map(e => e.textContent.trim()).filter(t => t)"""


@pytest.mark.example("transcript_outputs")
def test_transcript_outputs_fill_the_chatbot(
    playwright_driver: Any, speech_then_pause: Path, artifacts: Path, app: App
) -> None:
    with chromium_page(playwright_driver, microphone=speech_then_pause) as page:
        start_stream(page, app.url)
        said = ui.wait_for(lambda: page.evaluate(BOT_MESSAGES_JS), REPLY_TIMEOUT_S)
        assert said, f"the transcript stayed empty for {REPLY_TIMEOUT_S} s\n{app.log_tail()}"
        # recognised words of the utterance, not the example's "(no words recognised ...)".
        # The fake microphone plays from getUserMedia on, before the stream is up, so the
        # first utterance the handler hears may be its tail (CI: "and so little"); the file
        # loops, and a whole one follows within a loop.
        heard = lambda: [m for m in page.evaluate(BOT_MESSAGES_JS) if words(m) & UTTERANCE_WORDS]  # noqa: E731
        recognised = ui.wait_for(heard, 2 * wav_seconds(speech_then_pause))
        said = page.evaluate(BOT_MESSAGES_JS)
        page.screenshot(path=str(artifacts / "example-transcript_outputs.png"))
        print("transcript:", said)
        assert recognised, f"no word of {UTTERANCE!r} in {said}"
        stop_stream(page)


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


# --- 2b. the voice agent on the built-in speech models ---------------------------------------------

AGENT_UTTERANCE = "i would like a cup of coffee"  # PocketSphinx hears espeak-ng say it word for word
AGENT_WORDS = {"like", "cup", "coffee"}


@pytest.fixture(scope="module")
def agent_speech() -> Path:
    return composed_wav([LEAD_IN_S, AGENT_UTTERANCE, PAUSE_S])


@pytest.mark.example("talk_back")
def test_talk_back_agent_answers_the_browser_and_a_websocket_with_what_it_heard(
    playwright_driver: Any, agent_speech: Path, artifacts: Path, app: App
) -> None:
    with chromium_page(playwright_driver, microphone=agent_speech) as page:
        start_stream(page, app.url)
        # the microphone loops the file and may start mid-utterance: wait for a whole one
        answered = lambda: [m for m in page.evaluate(BOT_MESSAGES_JS) if m.startswith("I heard") and len(words(m) & AGENT_WORDS) >= 2]  # noqa: E731
        said = ui.wait_for(answered, REPLY_TIMEOUT_S + 2 * wav_seconds(agent_speech))
        page.screenshot(path=str(artifacts / "example-talk_back.png"))
        assert said, f"no answer with the words of {AGENT_UTTERANCE!r}: {page.evaluate(BOT_MESSAGES_JS)}\n{app.log_tail()}"
        heard = wait_audible(page, app)  # and the answer was spoken
        assert heard["samples"] >= MIN_REPLY_SAMPLES, heard
        stop_stream(page)
        # the same agent over /websocket/offer: its spoken answer (espeak-ng, then mu-law at
        # 24 kHz) says the words back, as the recogniser hears it at the client
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # Playwright's loop runs in this thread
            rate, reply = pool.submit(lambda: asyncio.run(websocket_turn(app.url, AGENT_UTTERANCE))).result()
        from workers.voice.speech_models import get_stt_model

        text = get_stt_model().stt((rate, reply))
        assert len(words(text) & AGENT_WORDS) >= 2, (text, app.log_tail())


async def websocket_turn(url: str, utterance: str) -> tuple[int, np.ndarray]:
    """One turn over /websocket/offer: the utterance as mu-law, then silence until the reply
    has come and stopped; (the reply's rate, its audio)."""
    from runtime.clients.websocket import WebSocketClient
    from tests.speech import speech

    async with WebSocketClient(url, rate=WS_IN_RATE) as client:
        await client.play_silence(LEAD_IN_S)
        await client.play(speech(utterance, WS_IN_RATE))
        await client.play_silence(PAUSE_S)
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        got = 0
        while time.monotonic() < deadline:
            await client.play_silence(1.0)
            now = len(client.received_audio())
            if got and now == got:  # a second with nothing more: the answer is over
                break
            got = now
        return WS_OUT_RATE, client.received_audio()


# --- 3. the other examples ------------------------------------------------------------------------

AUDIBLE_JS_TIMEOUT_S = 40.0


def wait_audible(page: Any, app: App, timeout: float = AUDIBLE_JS_TIMEOUT_S) -> dict[str, float]:
    """Wait until the page has received audible audio; return its inbound-rtp counters."""
    audio = lambda: ui.inbound_audio(page)  # noqa: E731
    heard = ui.wait_for(lambda: (a := audio()) and a["energy"] >= MIN_REPLY_ENERGY and a, timeout)
    assert heard, f"no audible audio within {timeout} s: {audio()}\n{app.log_tail()}"
    return heard


QUEUED_TIMEOUT_S = 30.0  # the second tab's offer is answered with its place in line by then
ADMIT_TIMEOUT_S = 30.0  # the freed slot takes the second tab by then


@pytest.mark.example("stream_handler_echo")
def test_stream_handler_echo_echoes_and_a_second_tab_waits_in_line_then_streams(
    playwright_driver: Any, speech_then_pause: Path, artifacts: Path, app: App
) -> None:
    # the example's stream has Gradio's default concurrency_limit: one session at a time
    with chromium_page(playwright_driver, microphone=speech_then_pause) as page:
        start_stream(page, app.url)
        wait_audible(page, app)
        page.screenshot(path=str(artifacts / "example-stream_handler_echo.png"))

        # the seed's stream queues (Gradio's default): the second tab waits in line
        second = page.context.new_page()
        second.goto(app.url)
        second.click(".rtc-button")
        second.wait_for_function(
            "() => document.querySelector('.rtc-root').dataset.state === 'queued'",
            timeout=QUEUED_TIMEOUT_S * 1000,
        )
        status = ui.status(second)
        # Gradio's words: place/length, then seconds waited and (once a session length is
        # known: no time limit here) the ETA
        assert re.fullmatch(r"queue: 1/1 \| \d+\.\d(/\d+\.\d)?s", status), status
        second.screenshot(path=str(artifacts / "example-stream_handler_echo-queued.png"))
        assert ui.state(page) == "streaming", "the waiting tab stopped the first one"

        # Stop frees the only slot: the second tab streams by itself, no click (so the
        # stream keeps one live session: the second tab's; its start is the release)
        page.locator(".rtc-button").click()
        assert ui.state(page) == "stopped"
        assert ui.wait_for(lambda: ui.state(second) == "streaming", ADMIT_TIMEOUT_S), ui.status(second)
        stop_stream(second)


@pytest.mark.example("reply_on_stopwords")
def test_reply_on_stopwords_replies_after_computer(playwright_driver: Any, artifacts: Path, app: App) -> None:
    wav = composed_wav([0.5, "computer, what is the weather like today", PAUSE_S])
    with chromium_page(playwright_driver, microphone=wav) as page:
        start_stream(page, app.url)
        turns = ui.wait_for(lambda: page.evaluate(BOT_MESSAGES_JS), REPLY_TIMEOUT_S)
        assert turns and "after 'computer'" in turns[0], f"{turns}\n{app.log_tail()}"
        wait_audible(page, app)
        page.screenshot(path=str(artifacts / "example-reply_on_stopwords.png"))
        stop_stream(page)


@pytest.mark.example("server_audio")
def test_server_audio_plays_the_file_then_ends(playwright_driver: Any, artifacts: Path, app: App) -> None:
    with chromium_page(playwright_driver) as page:
        start_stream(page, app.url, button="Generate")  # the seed's trigger=button.click
        heard = wait_audible(page, app)
        page.screenshot(path=str(artifacts / "example-server_audio.png"))
        # 5 steps of a 1 s chime (the slider's initial value), then the generator ends
        page.wait_for_function(
            "() => document.querySelector('.rtc-root').dataset.state !== 'streaming'",
            timeout=40_000,
        )
        assert ui.state(page) == "stopped", ui.status(page)
        assert heard["samples"] > 0


RED_SQUARE_MIN_PX = 5_000  # the clip's square is 120 x 120 px
CLIP_S = 8.0  # examples/server_video writes an 8 s clip
CLIP_END_TIMEOUT_S = CLIP_S + 40.0  # playing it through, on a slow box


@pytest.mark.example("server_video")
def test_server_video_plays_the_clip_in_true_colour_and_ends_with_the_file(
    playwright_driver: Any, artifacts: Path, app: App
) -> None:
    with chromium_page(playwright_driver) as page:
        start_stream(page, app.url)
        page.wait_for_function(
            "() => document.querySelector('.rtc-remote').videoWidth > 0", timeout=30_000
        )
        frame = ui.grab(page)
        r, g, b = (frame[..., i].astype(int) for i in range(3))
        red = int(((r > 180) & (g < 90) & (b < 90)).sum())
        blue = int(((b > 180) & (g < 90) & (r < 90)).sum())
        page.screenshot(path=str(artifacts / "example-server_video.png"))
        assert frame.shape == (480, 640, 3)
        assert red >= RED_SQUARE_MIN_PX and blue < RED_SQUARE_MIN_PX, (red, blue)
        # the seed's generator yields cap.read()'s None at the end of the file and returns:
        # the stream ends by itself, without a handler error
        page.wait_for_function(
            "() => document.querySelector('.rtc-root').dataset.state !== 'streaming'",
            timeout=CLIP_END_TIMEOUT_S * 1000,
        )
        assert ui.state(page) == "stopped", ui.status(page)
        assert not ui.errors(page), ui.errors(page)
        assert ui.released(app.url), ui.live_sessions(app.url)


def shows_flipped(page: Any, camera: np.ndarray) -> bool:
    """The processed video is the camera picture upside down (closer to it than to the raw)."""
    if not page.evaluate("() => document.querySelector('.rtc-remote').videoWidth > 0"):
        return False
    shown = ui.grab(page).astype(int)
    if shown.shape != camera.shape:
        return False
    return bool(np.abs(shown - camera[::-1]).mean() < 0.5 * np.abs(shown - camera).mean())


def example_function(name: str, function: str) -> Callable[..., Any]:
    """``function`` as defined in examples/<name>/app.py, without running the app (which
    would build its Blocks and register its streams in this process)."""
    path = EXAMPLES / name / "app.py"
    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    namespace: dict[str, Any] = {"cv2": cv2, "np": np}
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102 - the repo's own example
    return namespace[function]


def closest(shown: np.ndarray, candidates: dict[str, np.ndarray]) -> tuple[str, float]:
    """The candidate picture ``shown`` is nearest to (mean absolute difference), and how much
    nearer it is than the runner-up (their ratio, < 1)."""
    distance = {k: float(np.abs(shown.astype(int) - c.astype(int)).mean()) for k, c in candidates.items()}
    best, second = sorted(distance, key=distance.get)[:2]  # type: ignore[arg-type]
    return best, distance[best] / distance[second]


CARTOON_MARGIN = 0.7  # the cartoon shown is this much nearer its expected picture than any other


@pytest.mark.example("webcam_filters")
def test_webcam_filters_flip_then_edges_then_cartoon_live(
    playwright_driver: Any, face_y4m: Path, artifacts: Path, app: App
) -> None:
    camera = face_picture().astype(int)
    with chromium_page(playwright_driver, camera=face_y4m) as page:
        start_stream(page, app.url)
        page.wait_for_function(
            "() => document.querySelector('.rtc-remote').videoWidth > 0", timeout=30_000
        )

        assert ui.wait_for(lambda: shows_flipped(page, camera), 20.0), (
            "the processed video is not the camera upside down"
        )
        page.get_by_label("edges").check()

        def edges() -> bool:
            shown = ui.grab(page)
            gray = shown.mean(axis=2)
            # Canny: black almost everywhere, a few percent of white edge pixels
            return gray.mean() < 40 and 0.005 < (gray > 128).mean() < 0.3

        assert ui.wait_for(edges, 20.0), "switching the Radio to 'edges' did not change the stream"
        page.screenshot(path=str(artifacts / "example-webcam_filters.png"))

        # cartoon: the example's own filter run here on the camera picture is what shows,
        # nearer to it than to the camera, its mirror image or its edges
        transform = example_function("webcam_filters", "transform_cv2")
        picture = face_picture()
        candidates = {
            name: transform(picture.copy(), name).astype(np.uint8)
            for name in ("cartoon", "edges", "flip")
        }
        candidates["camera"] = picture
        page.get_by_label("cartoon").check()
        seen: list[tuple[str, float]] = []

        def cartoon() -> bool:
            seen.append(closest(ui.grab(page), candidates))
            return seen[-1][0] == "cartoon" and seen[-1][1] < CARTOON_MARGIN

        assert ui.wait_for(cartoon, 20.0), f"the stream does not show the cartoon filter: {seen[-3:]}"
        page.screenshot(path=str(artifacts / "example-webcam_filters-cartoon.png"))
        stop_stream(page)


@pytest.mark.example("unified_image")
def test_unified_image_shows_the_filtered_webcam_in_place(
    playwright_driver: Any, face_y4m: Path, artifacts: Path, app: App
) -> None:
    camera = face_picture().astype(int)
    with chromium_page(playwright_driver, camera=face_y4m) as page:
        start_stream(page, app.url)
        assert ui.wait_for(lambda: shows_flipped(page, camera), 30.0), app.log_tail()
        page.screenshot(path=str(artifacts / "example-unified_image.png"))
        stop_stream(page)


@pytest.mark.example("async_stream_handler")
def test_async_stream_handler_parrots_after_the_key_is_entered(
    playwright_driver: Any, speech_then_pause: Path, artifacts: Path, app: App
) -> None:
    with chromium_page(playwright_driver, microphone=speech_then_pause) as page:
        page.goto(app.url)
        assert not page.is_visible(".rtc-button"), "the stream shows before a key is entered"
        page.get_by_label("API Key").fill("any-key")
        page.get_by_label("API Key").press("Enter")
        page.wait_for_selector(".rtc-button", state="visible", timeout=10_000)
        start_stream(page, None)
        wait_audible(page, app)
        page.screenshot(path=str(artifacts / "example-async_stream_handler.png"))
        stop_stream(page)


STATE_STREAM_S = 10.0  # the example's time_limit
TRANSCRIPT_SETTLE_S = 3.0  # after the stream ends, for the last outputs to reach the page


@pytest.mark.example("state_transcription")
def test_state_transcription_fills_the_textbox(
    playwright_driver: Any, chunkable_words: Path, artifacts: Path, app: App
) -> None:
    with chromium_page(playwright_driver, microphone=chunkable_words) as page:
        start_stream(page, app.url)
        box = page.get_by_label("Transcript")
        seen: list[str] = []  # every value the Textbox showed, in order

        def watch() -> bool:
            text = box.input_value()
            if not seen or text != seen[-1]:
                seen.append(text)
            return ui.state(page) != "streaming"

        ui.wait_for(watch, STATE_STREAM_S + REPLY_TIMEOUT_S)  # the time limit ends the stream
        time.sleep(TRANSCRIPT_SETTLE_S)
        watch()
        page.screenshot(path=str(artifacts / "example-state_transcription.png"))
        print("transcripts:", seen)
        errors = ui.errors(page)
        assert not errors, f"the handler raised: {errors}\n{app.log_tail()}"
        assert words(seen[-1]) & set(CHUNKED_WORDS), f"no word of {CHUNKED_WORDS} in {seen}\n{app.log_tail()}"
        # the function returns transcript + next_text and the worker feeds it back: the text
        # only ever grows, chunk by chunk (each value is the one before plus new words)
        shown = [t for t in seen if t]
        assert len(shown) >= 2, f"the transcript never grew across chunks: {seen}"
        assert all(b.startswith(a) for a, b in zip(shown, shown[1:], strict=False)), seen


# --- every example: builds, registers the seed's stream, and a fresh process can load it -------

# Runs each example as ``__main__`` (as ``python app.py`` does) with a fresh gateway that
# is never started (no Ray) and launch() turned off, records its streams, then hands every
# handler to one fresh interpreter the way the gateway hands it to a worker
# (workers.process.loader: by value, else by re-importing the app file) and reports what it got.
INSPECT_APPS = r"""
import json, pickle, runpy, subprocess, sys
import gradio as gr
from gradio_ext import serving  # hooks launch() to start the gateway: replace the hook
from workers.process import loader
gr.Blocks.launch = lambda self, *a, **k: None
found, specs = {}, []
for path in sys.argv[1:]:
    serving._gateway = None
    runpy.run_path(path, run_name="__main__")
    events = list(serving.get_gateway().events.values())
    found[path] = [{"mode": e.mode, "modality": e.modality} for e in events]
    specs += [(path, loader.make_spec(e.handler, e.index)) for e in events]
probe = subprocess.run([sys.executable, "-c", sys.stdin.read()], input=pickle.dumps(specs),
                       capture_output=True, timeout=240)
for line in probe.stdout.decode().splitlines():
    path, loaded = line.split(" ", 1)
    found[path][0]["loaded"] = loaded
print("EVENTS=" + json.dumps(found))
"""
LOAD_SPECS = r"""
import pickle, sys
from workers.process import loader
for path, spec in pickle.loads(sys.stdin.buffer.read()):
    try:
        h = loader.load(spec)
        print(path, getattr(h, "__name__", type(h).__name__))
    except Exception as exc:
        print(path, "ERROR", repr(exc)[:300].replace(chr(10), " "))
"""

EXPECTED_STREAMS = {
    # example: (mode, modality, what a worker loads as the handler)
    "reply_on_pause_echo": ("send-receive", "audio", "ReplyOnPause"),
    "transcript_outputs": ("send", "audio", "ReplyOnPause"),
    "stream_handler_echo": ("send-receive", "audio", "EchoHandler"),
    "reply_on_stopwords": ("send-receive", "audio", "ReplyOnStopWords"),
    "server_audio": ("receive", "audio", "generation"),
    "server_video": ("receive", "video", "generation"),
    "webcam_filters": ("send-receive", "video", "transform_cv2"),
    "unified_image": ("send-receive", "video", "transform_cv2"),
    "async_stream_handler": ("send-receive", "audio", "ParrotHandler"),
    "state_transcription": ("send", "audio", "transcribe_handler"),
    "talk_back": ("send-receive", "audio", "ReplyOnPause"),
}


@pytest.fixture(scope="module")
def example_streams() -> dict[str, list[dict[str, str]]]:
    """name -> the streams its app registered, each with what a fresh process loaded."""
    paths = [str(EXAMPLES / name / "app.py") for name in sorted(EXPECTED_STREAMS)]
    proc = subprocess.run(
        [sys.executable, "-c", INSPECT_APPS, *paths],
        cwd=REPO,
        input=LOAD_SPECS.encode(),
        capture_output=True,
        timeout=300,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    line = next(ln for ln in proc.stdout.decode().splitlines() if ln.startswith("EVENTS="))
    return {Path(p).parent.name: v for p, v in json.loads(line.removeprefix("EVENTS=")).items()}


def test_every_example_folder_is_covered() -> None:
    folders = {p.parent.name for p in EXAMPLES.glob("*/app.py")} - {"face_detection"}
    assert folders == set(EXPECTED_STREAMS)
    for name in folders:
        readme = (EXAMPLES / name / "README.md").read_text().strip()
        assert readme and "\n" not in readme, f"{name}/README.md must be one line"


@pytest.mark.parametrize("name", sorted(EXPECTED_STREAMS))
def test_example_registers_its_stream_and_a_worker_can_load_it(
    name: str, example_streams: dict[str, list[dict[str, str]]]
) -> None:
    (event,) = example_streams[name]
    mode, modality, loaded = EXPECTED_STREAMS[name]
    assert (event["mode"], event["modality"], event.get("loaded")) == (mode, modality, loaded)
