"""The WebRTC component's events and its session's end, in headless Debian Chromium.

One Gradio app (written by this module, run in its own process with its own local Ray)
holds five components, each stream named with ``api_name``:

* ``sync`` and ``async``: ``rtc_configuration`` functions (sync, async) that count their
  calls and put the count in the configuration: each Start calls them once and the page's
  RTCPeerConnection is made with exactly what they returned. ``sync`` also has a ``tick``
  listener counting ticks into a Number: they come while streaming and stop after Stop.
  ``async`` can be hidden and shown with a Checkbox, which makes Gradio re-render it.
* ``burst``: a receive-only stream whose generator yields a burst of AdditionalOutputs at
  once; ``on_additional_outputs`` appends each to a Chatbot it reads as an input: every
  message shows, in order.
* ``fails``: a frame function that raises: the page shows the handler's error.
* ``slow``: its pool keeps no idle worker (a deployment override of ``streams.slow``), so
  each offer waits for a worker to start: Stop pressed meanwhile still ends the session.

Every Stop is checked on the server too (GET /webrtc/sessions) well inside the timeouts
that would otherwise end a session. Screenshots go to artifacts/events-*.png.
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import page as ui
from tests.e2e.conftest import App, chromium, run_app

pytestmark = pytest.mark.browser

STREAM_START_TIMEOUT_S = 120.0  # a cold pool may start a worker first
PAGE_LOAD_TIMEOUT_S = 30.0
WORKER_START_TIMEOUT_S = 120.0  # the slow stream's offer waits this long at most
BURST = 8  # AdditionalOutputs the burst stream yields back to back
OUTPUTS_TIMEOUT_S = 40.0  # every burst message is on the page by then
ERROR_TIMEOUT_S = 30.0
MIN_TICKS = 3  # ticks counted while streaming (one per 0.5 s)
TICKS_TIMEOUT_S = 30.0
TICK_QUIET_S = 3.0  # after Stop, six tick intervals without a tick
COMPONENTS = 5

EVENTS_APP = '''
"""Five WebRTC components and their events (written by tests/e2e/test_component_events.py)."""

import asyncio
import os

import gradio as gr
import numpy as np

from gradio_ext import AdditionalOutputs, WebRTC

BURST = int(os.environ["BURST"])
calls = {"sync": 0, "async": 0}


def sync_config():
    calls["sync"] += 1
    return {"iceServers": [], "bundlePolicy": "max-bundle", "rtcpool_call": calls["sync"]}


async def async_config():
    calls["async"] += 1
    await asyncio.sleep(0)
    return {"iceServers": [], "bundlePolicy": "max-bundle", "rtcpool_call": calls["async"]}


def identity(frame):
    return frame


def burst():
    for i in range(BURST):
        yield AdditionalOutputs(f"message {i}")
    frame = np.zeros((240, 320, 3), np.uint8)
    while True:  # until the user stops
        yield frame


def fails(frame):
    raise ValueError("the handler failed on purpose")


def append(history, text):
    return [*history, {"role": "assistant", "content": text}]


with gr.Blocks() as demo:
    with gr.Row():
        sync = WebRTC(label="Sync config", elem_id="sync", rtc_configuration=sync_config)
        ticks = gr.Number(label="Ticks", value=0, elem_id="ticks")
    with gr.Row():
        shown = gr.Checkbox(label="Show async", value=True)
        later = WebRTC(label="Async config", elem_id="async", rtc_configuration=async_config)
    with gr.Row():
        bursting = WebRTC(label="Burst", elem_id="burst", mode="receive", modality="video")
        chat = gr.Chatbot(label="Burst messages", elem_id="burst-chat")
    with gr.Row():
        failing = WebRTC(label="Fails", elem_id="fails")
        slow = WebRTC(label="Slow", elem_id="slow")
    sync.stream(identity, inputs=[sync], outputs=[sync], api_name="sync", time_limit=120)
    sync.tick(lambda n: n + 1, inputs=[ticks], outputs=[ticks], queue=False)
    later.stream(identity, inputs=[later], outputs=[later], api_name="async", time_limit=120)
    shown.change(lambda v: gr.update(visible=v), inputs=[shown], outputs=[later])
    bursting.stream(burst, inputs=None, outputs=[bursting], api_name="burst", time_limit=120)
    bursting.on_additional_outputs(
        append, inputs=[chat], outputs=[chat], queue=False, show_progress="hidden"
    )
    failing.stream(fails, inputs=[failing], outputs=[failing], api_name="fails", time_limit=120)
    slow.stream(identity, inputs=[slow], outputs=[slow], api_name="slow", time_limit=120)

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ["GRADIO_SERVER_NAME"],
        server_port=int(os.environ["GRADIO_SERVER_PORT"]),
    )
'''


LAST_CONFIG_JS = """() => {
  const pcs = window.__rtcPeerConnections, configs = window.__rtcPeerConnectionConfigs;
  const pc = pcs[pcs.length - 1];
  return {given: configs[configs.length - 1], bundlePolicy: pc.getConfiguration().bundlePolicy};
}"""
BOT_MESSAGES_JS = """() => Array.from(document.querySelectorAll('#burst-chat [data-testid="bot"]'))
  .map(e => e.textContent.trim()).filter(t => t)"""


@pytest.fixture(scope="module")
def events_app(tmp_path_factory: pytest.TempPathFactory, artifacts: Path, app_ray: str) -> Iterator[App]:
    script = tmp_path_factory.mktemp("events_app") / "app.py"
    script.write_text(textwrap.dedent(EVENTS_APP))
    env = {"BURST": str(BURST), "RTCPOOL_STREAMS__slow__POOL__PREWARM": "0"}
    with run_app(script, artifacts / "events-app.log", env, ray_address=app_ray) as app:
        yield app


@contextlib.contextmanager
def app_page(pw: Any, app: App) -> Iterator[Any]:
    with chromium(pw) as (_, context):
        page = context.new_page()
        page.goto(app.url)
        page.wait_for_function(
            "(n) => document.querySelectorAll('.rtc-root[data-modality]').length === n",
            arg=COMPONENTS,
            timeout=PAGE_LOAD_TIMEOUT_S * 1000,
        )
        yield page


def start(page: Any, sel: str) -> None:
    ui.start(page, sel, STREAM_START_TIMEOUT_S)


def stop(page: Any, sel: str) -> None:
    ui.stop_and_check_released(page, f"{sel} .rtc-root")


# --- rtc_configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize("sel", ["#sync", "#async"])
def test_rtc_configuration_function_runs_once_per_connection_and_reaches_the_browser(
    playwright_driver: Any, events_app: App, sel: str
) -> None:
    with app_page(playwright_driver, events_app) as page:
        made = []
        for _ in range(2):
            start(page, sel)
            made.append(page.evaluate(LAST_CONFIG_JS))
            stop(page, sel)
        first, second = (m["given"] for m in made)
        # exactly what the function returned, whole, for each connection
        assert set(first) == {"iceServers", "bundlePolicy", "rtcpool_call"}, first
        assert second["rtcpool_call"] == first["rtcpool_call"] + 1, (
            f"the function was not called exactly once for the second connection: {made}"
        )
        assert all(m["bundlePolicy"] == "max-bundle" for m in made), made
        assert page.evaluate("() => window.__rtcPeerConnections.length") == 2


# --- tick -------------------------------------------------------------------------------------------


def test_tick_fires_while_streaming_and_stops_after_stop(
    playwright_driver: Any, events_app: App, artifacts: Path
) -> None:
    with app_page(playwright_driver, events_app) as page:
        count = lambda: float(page.locator("#ticks input").input_value())  # noqa: E731
        assert count() == 0
        start(page, "#sync")
        assert ui.wait_for(lambda: count() >= MIN_TICKS, TICKS_TIMEOUT_S), (
            f"only {count()} ticks while streaming\n{events_app.log_tail()}"
        )
        page.screenshot(path=str(artifacts / "events-ticks.png"))
        stop(page, "#sync")
        page.wait_for_timeout(TICK_QUIET_S * 1000 / 3)  # a tick already on its way lands
        after_stop = count()
        page.wait_for_timeout(TICK_QUIET_S * 1000)
        assert count() == after_stop, "ticks went on after Stop"


# --- outputs ----------------------------------------------------------------------------------------


def test_a_burst_of_additional_outputs_shows_complete_and_in_order(
    playwright_driver: Any, events_app: App, artifacts: Path
) -> None:
    expected = [f"message {i}" for i in range(BURST)]
    with app_page(playwright_driver, events_app) as page:
        start(page, "#burst")
        shown = ui.wait_for(
            lambda: (m := page.evaluate(BOT_MESSAGES_JS)) and len(m) >= BURST and m, OUTPUTS_TIMEOUT_S
        )
        assert shown, f"the Chatbot shows {page.evaluate(BOT_MESSAGES_JS)}\n{events_app.log_tail()}"
        # each append read the Chatbot with the one before applied: none lost, none twice,
        # none out of order
        assert shown == expected
        page.screenshot(path=str(artifacts / "events-burst.png"))
        stop(page, "#burst")
        assert page.evaluate(BOT_MESSAGES_JS) == expected


# --- errors ----------------------------------------------------------------------------------------


def test_a_handler_exception_is_shown_on_the_page(
    playwright_driver: Any, events_app: App, artifacts: Path
) -> None:
    errors_js = "() => Array.from(document.querySelectorAll('#fails .rtc-messages .error')).map(e => e.textContent)"
    with app_page(playwright_driver, events_app) as page:
        start(page, "#fails")
        shown = ui.wait_for(lambda: page.evaluate(errors_js), ERROR_TIMEOUT_S)
        assert shown and "the handler failed on purpose" in shown[0], shown
        page.screenshot(path=str(artifacts / "events-handler-error.png"))
        assert ui.state(page, "#fails") == "streaming", "one failing call ended the stream"
        stop(page, "#fails")


# --- hanging up ------------------------------------------------------------------------------------


def test_stop_while_the_answer_is_on_its_way_ends_the_session(
    playwright_driver: Any, events_app: App
) -> None:
    with app_page(playwright_driver, events_app) as page:
        held: list[tuple[Any, Any]] = []

        def hold_answer(route: Any) -> None:
            held.append((route, route.fetch()))  # the server answers; the page waits on

        page.route("**/webrtc/offer", hold_answer)
        page.click("#async .rtc-button")
        assert ui.wait_for(lambda: ui.state(page, "#async") == "connecting" and held, STREAM_START_TIMEOUT_S)
        assert held[0][1].status == 200, held[0][1].text()
        assert len(ui.live_sessions(events_app.url, "async")) == 1, "the server made no session"
        page.click("#async .rtc-button")  # Stop, still connecting
        assert ui.state(page, "#async") == "stopped", ui.status(page, "#async")
        route, answer = held[0]
        with contextlib.suppress(Exception):  # the page aborted the request: too late for it
            route.fulfill(response=answer)
        assert ui.released(events_app.url, "async"), ui.live_sessions(events_app.url, "async")


def test_stop_while_the_offer_is_answered_ends_the_session_once_it_exists(
    playwright_driver: Any, events_app: App
) -> None:
    with app_page(playwright_driver, events_app) as page:
        with page.expect_request("**/webrtc/offer", timeout=STREAM_START_TIMEOUT_S * 1000):
            page.click("#slow .rtc-button")
        # the gateway waits for a worker to start (the stream keeps none idle): Stop now.
        # The hang-up is answered once that session existed and was ended.
        with page.expect_response(
            lambda r: r.url.endswith("/webrtc/close") and r.status == 200,
            timeout=WORKER_START_TIMEOUT_S * 1000,
        ):
            page.click("#slow .rtc-button")
            assert ui.state(page, "#slow") == "stopped"
        assert ui.released(events_app.url, "slow"), ui.live_sessions(events_app.url, "slow")
        page.wait_for_timeout(ui.STOP_RELEASE_S * 1000)  # and no session turns up later
        assert ui.live_sessions(events_app.url, "slow") == []


# --- re-rendering -------------------------------------------------------------------------------


def test_a_re_rendered_component_ends_its_session_and_starts_afresh(
    playwright_driver: Any, events_app: App, artifacts: Path
) -> None:
    with app_page(playwright_driver, events_app) as page:
        mounted = page.evaluate("() => window.__rtcpool.mounted.length")
        start(page, "#async")
        page.evaluate("() => { window.__oldRoot = document.querySelector('#async .rtc-root'); }")
        # hidden, then shown again: Gradio renders the component anew
        page.get_by_label("Show async").uncheck()
        page.get_by_label("Show async").check()
        page.wait_for_function(
            "() => { const r = document.querySelector('#async .rtc-root[data-modality]'); "
            "return r && r !== window.__oldRoot && !window.__oldRoot.isConnected; }",
            timeout=PAGE_LOAD_TIMEOUT_S * 1000,
        )
        # the removed one ended everything it started: its session, its camera
        assert ui.released(events_app.url, "async"), ui.live_sessions(events_app.url, "async")
        assert page.evaluate("() => window.__rtcPeerConnections[0].connectionState") == "closed"
        # one registration per rendered component, the stream's entry is the new one
        assert page.evaluate("() => window.__rtcpool.mounted.length") == mounted
        assert page.evaluate("() => window.__rtcpool.streams['async'].session()") is None
        assert ui.state(page, "#async") == "idle"
        start(page, "#async")
        page.screenshot(path=str(artifacts / "events-rerendered.png"))
        stop(page, "#async")


# The page's first offer gets a 429 that the test releases late, whatever the abort says
# (a refusal that was already on its way when Stop was clicked); later offers are real.
LATE_REFUSAL_JS = """() => {
  const real = window.fetch;
  let held = true;
  window.fetch = (url, options) => {
    if (held && String(url).endsWith('/webrtc/offer')) {
      held = false;
      return new Promise((resolve) => {
        window.__releaseRefusal = () => resolve(new Response(
          JSON.stringify({status: 'failed', meta: {error: 'concurrency_limit_reached', limit: 1}}),
          {status: 429, headers: {'Content-Type': 'application/json', 'Retry-After': '7'}}));
      });
    }
    return real(url, options);
  };
}"""


def test_a_refusal_arriving_after_stop_leaves_the_newer_session_alone(
    playwright_driver: Any, events_app: App
) -> None:
    with app_page(playwright_driver, events_app) as page:
        page.evaluate(LATE_REFUSAL_JS)
        page.click("#sync .rtc-button")
        page.wait_for_function("() => typeof window.__releaseRefusal === 'function'")
        page.click("#sync .rtc-button")  # Stop, the refusal still on its way
        assert ui.state(page, "#sync") == "stopped"
        start(page, "#sync")  # a newer session
        page.evaluate("() => window.__releaseRefusal()")
        page.wait_for_timeout(1000)  # the refusal's handlers have run
        assert ui.state(page, "#sync") == "streaming", ui.status(page, "#sync")
        assert "server full" not in ui.status(page, "#sync")
        stop(page, "#sync")
