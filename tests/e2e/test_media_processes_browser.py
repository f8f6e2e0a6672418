"""The Gradio page with ``gateway.processes: 2`` in headless Debian Chromium (issue 10).

One Gradio app (written by this module, run in its own process joining the test session's
Ray) has one WebRTC component whose handler inverts the picture, ``concurrency_limit=2``;
its config override ``RTCPOOL_GATEWAY__PROCESSES=2`` starts two media processes beside the
app's process. Two tabs of one Chromium stream at once:

* both show inverted video (pixels of the fake camera's picture, inverted);
* the two sessions are on the two media processes (``media_pid`` of GET /webrtc/sessions),
  neither in the app's own process;
* kill -9 of tab 1's media process (issue 21): tab 1 shows "reconnecting…" within 10 s,
  then streams inverted video again by itself, on the same session (its webrtc_id, its
  slot: no new lease, no hang-up posted), now on the other media process; tab 2 never
  notices (it paints frames throughout and never leaves "streaming"); the dead process is
  replaced; then kill -9 of tab 2's worker: tab 2 streams on (frames painted, inverted,
  never another state, no error), told once that its handler restarted;
* a resume the server refuses (the page's session key tampered with before the kill: 403)
  ends tab 1's session as a lost connection, the text the page always showed for it;
* Stop while reconnecting stops the page and hangs up; a resume that reaches the server
  only after the hang-up is hung up again, and the slot is freed.

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
PAGE_ENDS_S = 10.0  # issue 10: the page shows that the connection is lost within this of the kill
SLOT_BACK_S = 5.0  # issue 10: a dead media process's slots come back within this
# issue 21: the page streams again within this of showing "reconnecting…": its resume window
# (webrtc.js RESUME_WINDOW_MS, 15 s), which bounds every attempt, plus the new connection's
# first frames on 2 busy cores
RESUMED_S = 25.0
# a refused resume: the page ends within this of showing "reconnecting…" (one attempt,
# answered 403 at once, or after the server's wait for the scheduler to see the death, 5 s)
REFUSED_ENDS_S = 15.0
# a session whose resume was refused is held by its lease until the server's grace
# (gateway.resume_grace_s, 10 s by default) is over, then freed as any dead process's
GRACE_S = 10.0
RECONNECTING = "reconnecting…"  # webrtc.js RECONNECTING_TEXT
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


# the component's states and (outside "streaming", whose text counts down) status texts, in
# order, with the time (s) since this ran: a state shown for a moment is still seen
WATCH_STATUS_JS = """(scope) => {
  const root = document.querySelector(scope + ' .rtc-root');
  const status = root.querySelector('.rtc-status');
  const t0 = performance.now();
  window.mpStatus = [];
  const note = () => {
    const state = root.dataset.state;
    const text = state === 'streaming' ? '' : status.textContent;
    const last = window.mpStatus[window.mpStatus.length - 1];
    if (!last || last[1] !== state || last[2] !== text) {
      window.mpStatus.push([((performance.now() - t0) / 1000).toFixed(1), state, text]);
    }
  };
  note();
  new MutationObserver(note).observe(root, {
    subtree: true, childList: true, characterData: true, attributes: true, attributeFilter: ['data-state'],
  });
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


def webrtc_id(page: Any) -> str:
    return str(
        page.evaluate("(s) => document.querySelector(s + ' .rtc-root').dataset.webrtcId", SEL)
    )


def statuses(page: Any) -> list[list[str]]:
    """What WATCH_STATUS_JS saw: [seconds, state, status text] each."""
    return list(page.evaluate("window.mpStatus || []"))


def record_signalling(page: Any) -> dict[str, list[Any]]:
    """The page's hang-ups (POST /webrtc/close) and resume offers (POST /webrtc/offer with a
    session_key) from now on, and their HTTP statuses."""
    log: dict[str, list[Any]] = {"close": [], "resume": [], "resume_status": [], "close_status": []}

    def is_resume(request: Any) -> bool:
        return request.url.endswith("/webrtc/offer") and "session_key" in (request.post_data or "")

    def on_request(request: Any) -> None:
        if request.method != "POST":
            return
        if request.url.endswith("/webrtc/close"):
            log["close"].append(request.url)
        elif is_resume(request):
            log["resume"].append(request.url)

    def on_response(response: Any) -> None:
        if response.request.method != "POST":
            return
        if is_resume(response.request):
            log["resume_status"].append(response.status)
        elif response.url.endswith("/webrtc/close"):
            log["close_status"].append(response.status)

    page.on("request", on_request)
    page.on("response", on_response)
    return log


def test_two_tabs_on_two_media_processes_and_a_killed_one_resumes_its_tab(
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
        victim, worker = row["media_pid"], row["worker_pid"]
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

        session_id = webrtc_id(first)
        pcs_before = len(ui.pc_states(first))
        signalling = record_signalling(first)
        ui.count_frames(second, SEL, "mpFrames")
        for tab in (first, second):
            tab.evaluate(WATCH_STATUS_JS, SEL)
        first.evaluate(WATCH_PC_JS)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()

        # tab 1's page notices by itself (the dead process tells it nothing) and reconnects
        noticed = ui.wait_for(lambda: ui.state(first, SEL) != "streaming", PAGE_ENDS_S)
        noticed_after = time.monotonic() - killed_at
        assert noticed and noticed_after < PAGE_ENDS_S, (
            f"tab 1 still says {ui.status(first, SEL)!r} {noticed_after:.1f} s after the kill; "
            f"its peer connection went through {first.evaluate('window.mpStates')}"
        )
        if ui.state(first, SEL) == "reconnecting":
            first.screenshot(path=str(artifacts / "mp-tab1-reconnecting.png"))
        back = ui.wait_for(
            lambda: ui.state(first, SEL) not in ("reconnecting", "connecting"), RESUMED_S
        )
        back_after = time.monotonic() - killed_at
        seen = statuses(first)
        assert ["reconnecting", RECONNECTING] in [r[1:] for r in seen], (
            f"tab 1 never showed {RECONNECTING!r}: {seen}"
        )
        assert back and ui.state(first, SEL) == "streaming", (
            f"tab 1 did not resume: {ui.status(first, SEL)!r} {back_after:.1f} s after the kill; "
            f"it went through {seen}, messages {ui.messages(first, SEL)}, "
            f"resume offers answered {signalling['resume_status']}"
        )
        # the processed video again: fresh frames, inverted
        assert ui.wait_for(lambda: inverted(first), VIDEO_TIMEOUT_S), (
            "tab 1 streams again but does not show inverted video"
        )
        # counted in the foreground: Chromium paints a background tab's video rarely (tab 1
        # was opened first, tab 2 is in front)
        first.bring_to_front()
        ui.count_frames(first, SEL, "mpFramesResumed")
        time.sleep(STREAMING_ON_S)
        painted = first.evaluate("window.mpFramesResumed")
        assert painted >= MIN_FRAMES_ON, (
            f"tab 1 painted {painted} frames in {STREAMING_ON_S} s after it resumed"
        )
        assert inverted(first), "tab 1 no longer shows inverted video"
        first.screenshot(path=str(artifacts / "mp-tab1-resumed.png"))

        # the same session, on a new peer connection, the old one closed without a hang-up
        assert webrtc_id(first) == session_id
        assert signalling["close"] == [], f"tab 1 hung up while resuming: {signalling}"
        assert signalling["resume"], f"no resume offer: {signalling}"
        pcs = ui.pc_states(first)
        assert len(pcs) > pcs_before and pcs[-1][1] == "connected", pcs
        assert all(state == "closed" for _, state in pcs[:-1]), pcs
        assert ui.errors(first, SEL) == [], ui.messages(first, SEL)
        # on the live media process, its slot kept (two leases throughout, no third), its worker
        # (and so its handler) the same
        sessions = ui.live_sessions(mp_app.url, STREAM_ID)
        assert victim not in {s["media_pid"] for s in sessions}, sessions
        assert worker in {s["worker_pid"] for s in sessions}, (worker, sessions)
        assert len(sessions) == 2 and leases(namespace) == 2, (sessions, leases(namespace))

        # tab 2 streamed on through it all: new frames painted, never another state
        second.bring_to_front()
        before = second.evaluate("window.mpFrames")
        time.sleep(STREAMING_ON_S)
        painted = second.evaluate("window.mpFrames") - before
        assert painted >= MIN_FRAMES_ON, (
            f"tab 2 painted {painted} frames in {STREAMING_ON_S} s after tab 1 resumed"
        )
        assert [r[1] for r in statuses(second)] == ["streaming"], statuses(second)
        assert inverted(second), "tab 2 no longer shows inverted video"
        second.screenshot(path=str(artifacts / "mp-tab2-after-kill.png"))

        # the dead process is replaced
        replaced = ui.wait_for(
            lambda: len(now := media_pids(namespace)) == 2 and victim not in now and now, REPLACED_S
        )
        assert replaced, f"the media process was not replaced: {media_pids(namespace)}"
        print(
            f"tab 1 noticed the loss {noticed_after:.1f} s after the kill and streamed again "
            f"{back_after:.1f} s after it ({len(signalling['resume'])} resume offer(s), answered "
            f"{signalling['resume_status']}); media {pids} -> {replaced}"
        )

        # kill tab 2's worker: its page streams on, told once that the handler restarted,
        # never an error or another state (docs/failover.md)
        [row2] = [s for s in ui.live_sessions(mp_app.url, STREAM_ID) if s["worker_pid"] != worker]
        worker2 = row2["worker_pid"]
        told_before = len(ui.messages(second, SEL))
        os.kill(worker2, signal.SIGKILL)
        restarted = ui.wait_for(
            lambda: any("restarted" in m for m in ui.messages(second, SEL)[told_before:]), RESUMED_S
        )
        assert restarted, f"tab 2 was not told its handler restarted: {ui.messages(second, SEL)}"
        new_workers = {s["worker_pid"] for s in ui.live_sessions(mp_app.url, STREAM_ID)}
        assert worker2 not in new_workers and len(new_workers) == 2, new_workers
        before = second.evaluate("window.mpFrames")
        time.sleep(STREAMING_ON_S)
        painted = second.evaluate("window.mpFrames") - before
        assert painted >= MIN_FRAMES_ON, f"tab 2 painted {painted} frames in {STREAMING_ON_S} s after its worker was killed"
        assert inverted(second), "tab 2 no longer shows inverted video after its worker was killed"
        assert [r[1] for r in statuses(second)] == ["streaming"], statuses(second)
        assert ui.errors(second, SEL) == [], ui.messages(second, SEL)
        assert leases(namespace) == 2
        second.screenshot(path=str(artifacts / "mp-tab2-after-worker-kill.png"))

        ui.stop_and_check_released(first, f"{SEL} .rtc-root")
        ui.stop_and_check_released(second, f"{SEL} .rtc-root")
    assert ui.wait_for(lambda: leases(namespace) == 0, SLOT_BACK_S)


def test_a_refused_resume_ends_the_tab_as_a_lost_connection(
    playwright_driver: Any, mp_app: App, face_y4m: Path, artifacts: Path, namespace: str
) -> None:
    """The server refuses a resume whose key is not the session's (403): the page gives up at
    once and shows what it showed before issue 21 for a lost connection."""
    pids = ui.wait_for(
        lambda: len(media_pids(namespace)) == 2 and media_pids(namespace), REPLACED_S
    )
    assert pids, f"two media processes expected: {scheduler_status(namespace)['media']}"
    with chromium(playwright_driver, f"--use-file-for-fake-video-capture={face_y4m}") as (_, ctx):
        page = ctx.new_page()
        open_app(page, mp_app.url)
        start(page)
        assert ui.wait_for(lambda: inverted(page), VIDEO_TIMEOUT_S), "no inverted video"
        [row] = ui.live_sessions(mp_app.url, STREAM_ID)
        victim = row["media_pid"]

        # the page's copy of the key, as a stale or forged one would be: the server's stays
        page.evaluate(
            "(id) => { window.__rtcpool.streams[id].session().key = 'not-the-session-key'; }",
            STREAM_ID,
        )
        signalling = record_signalling(page)
        page.evaluate(WATCH_STATUS_JS, SEL)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()

        noticed = ui.wait_for(lambda: ui.state(page, SEL) != "streaming", PAGE_ENDS_S)
        assert noticed, f"still {ui.status(page, SEL)!r} {PAGE_ENDS_S} s after the kill"
        ended = ui.wait_for(
            lambda: ui.state(page, SEL) not in ("reconnecting", "connecting", "streaming"),
            REFUSED_ENDS_S,
        )
        ended_after = time.monotonic() - killed_at
        seen = statuses(page)
        assert ended, f"still {ui.status(page, SEL)!r}: {seen}, {signalling}"
        assert ["reconnecting", RECONNECTING] in [r[1:] for r in seen], seen
        assert ui.state(page, SEL) == "error", ui.status(page, SEL)
        assert ui.status(page, SEL) == "error — lost the connection to the server"
        assert "error: lost the connection to the server" in ui.messages(page, SEL)
        # refused (403), and no attempt after that (those before it may have been answered 409
        # while the server waited for the scheduler to see the process die)
        answered = signalling["resume_status"]
        assert answered and answered[-1] == 403 and 403 not in answered[:-1], signalling
        assert not ui.has_video(page, SEL), "the ended session's video is still shown"
        pcs = ui.pc_states(page)
        assert all(state == "closed" for _, state in pcs), pcs
        page.screenshot(path=str(artifacts / "mp-refused-resume-ended.png"))
        print(f"the page ended {ended_after:.1f} s after the kill; it went through {seen}")

    # the session is gone for good: its slot comes back once the server's grace is over
    assert ui.wait_for(lambda: leases(namespace) == 0, GRACE_S + SLOT_BACK_S), leases(namespace)
    assert ui.live_sessions(mp_app.url, STREAM_ID) == []


def test_stop_while_reconnecting_ends_the_session_for_good(
    playwright_driver: Any, mp_app: App, face_y4m: Path, artifacts: Path, namespace: str
) -> None:
    """Stop pressed while the page reconnects (its resume offer held back on its way, so the
    page stays there): the page stops, hangs up, and a resume that reaches the server after
    the hang-up brings nothing back; the slot is freed."""
    pids = ui.wait_for(
        lambda: len(media_pids(namespace)) == 2 and media_pids(namespace), REPLACED_S
    )
    assert pids, f"two media processes expected: {scheduler_status(namespace)['media']}"
    with chromium(playwright_driver, f"--use-file-for-fake-video-capture={face_y4m}") as (_, ctx):
        page = ctx.new_page()
        open_app(page, mp_app.url)
        start(page)
        assert ui.wait_for(lambda: inverted(page), VIDEO_TIMEOUT_S), "no inverted video"
        [row] = ui.live_sessions(mp_app.url, STREAM_ID)
        held: list[Any] = []

        def hold_resumes(route: Any) -> None:
            if "session_key" in (route.request.post_data or ""):
                held.append(route)  # answered after Stop, below
            else:
                route.continue_()

        page.route("**/webrtc/offer", hold_resumes)
        signalling = record_signalling(page)
        os.kill(row["media_pid"], signal.SIGKILL)

        reconnecting = ui.wait_for(lambda: ui.state(page, SEL) == "reconnecting", PAGE_ENDS_S)
        assert reconnecting, f"{ui.status(page, SEL)!r} {PAGE_ENDS_S} s after the kill"
        assert ui.status(page, SEL) == RECONNECTING
        assert page.locator(f"{SEL} .rtc-button-label").text_content() == "Stop"
        # (Playwright's sync API runs route and request handlers only inside its own calls)
        assert ui.wait_for(lambda: ui.state(page, SEL) and held, PAGE_ENDS_S), "no resume offer"
        page.screenshot(path=str(artifacts / "mp-reconnecting-before-stop.png"))

        page.click(f"{SEL} .rtc-button")
        stopped_at = time.monotonic()
        assert ui.state(page, SEL) == "stopped", ui.status(page, SEL)
        assert ui.wait_for(lambda: ui.state(page, SEL) and signalling["close"], PAGE_ENDS_S), (
            "Stop posted no hang-up"
        )
        for route in held:
            route.continue_()  # the resume reaches the server after the hang-up
        time.sleep(STREAMING_ON_S)
        assert ui.state(page, SEL) == "stopped", ui.status(page, SEL)
        assert all(state == "closed" for _, state in ui.pc_states(page)), ui.pc_states(page)
        assert not ui.has_video(page, SEL)
        assert (
            page.evaluate("(s) => document.querySelector(s + ' .rtc-local').srcObject", SEL) is None
        )
        page.screenshot(path=str(artifacts / "mp-stopped-while-reconnecting.png"))

    assert ui.wait_for(lambda: leases(namespace) == 0, GRACE_S + SLOT_BACK_S), leases(namespace)
    assert ui.live_sessions(mp_app.url, STREAM_ID) == []
    print(
        f"slot free {time.monotonic() - stopped_at:.1f} s after Stop; "
        f"resume answered {signalling['resume_status']}, hang-ups {signalling['close_status']}"
    )
