"""The WebRTC component as the browser tests read it in a page: its state and status, the
video it shows, the audio it receives, its Start and Stop, and the peer connections the
page made. One copy of every probe the e2e tests share; a test's own probes (a queue's
timings, the level meter, ...) stay in its module.

``scope`` is the CSS selector of the block that holds the component (``"#invert"``);
``""`` reads the page's first component.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import cv2
import httpx
import numpy as np

from runtime.constants import MEDIA_INACTIVITY_TIMEOUT_S

POLL_S = 0.25  # how often a probe is read while waiting for it
RELEASE_POLL_S = 0.1  # how often the session list is read after a Stop
STREAM_START_TIMEOUT_S = 120.0  # a cold pool may start a worker (which imports the app) first

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

STATE_JS = "(scope) => document.querySelector(scope + ' .rtc-root').dataset.state"
STATUS_JS = "(scope) => document.querySelector(scope + ' .rtc-status').textContent"
HAS_VIDEO_JS = "(scope) => document.querySelector(scope + ' .rtc-remote').videoWidth > 0"
MESSAGES_JS = "(scope) => Array.from(document.querySelectorAll(scope + ' .rtc-messages li')).map((li) => li.textContent)"
ERRORS_JS = "(scope) => Array.from(document.querySelectorAll(scope + ' .rtc-messages .error')).map((e) => e.textContent)"
STARTED_JS = "(scope) => ['streaming', 'error', 'full'].includes(document.querySelector(scope + ' .rtc-root').dataset.state)"
PC_STATES_JS = "() => (window.__rtcPeerConnections || []).map((pc) => [pc.signalingState, pc.connectionState])"
GRAB_JS = """(selector) => {
  const video = document.querySelector(selector);
  const canvas = document.createElement('canvas');
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext('2d').drawImage(video, 0, 0);
  return canvas.toDataURL('image/png');
}"""
# frames the processed video paints, counted by the browser itself (window[name])
COUNT_FRAMES_JS = """([scope, name]) => {
  const video = document.querySelector(scope + ' .rtc-remote');
  window[name] = 0;
  const tick = () => { window[name] += 1; video.requestVideoFrameCallback(tick); };
  video.requestVideoFrameCallback(tick);
}"""
# the newest peer connection's inbound audio counters (null once it is closed)
INBOUND_AUDIO_JS = """async () => {
  const pcs = window.__rtcPeerConnections || [];
  const pc = pcs[pcs.length - 1];
  if (!pc || pc.connectionState === 'closed') return null;
  const stats = await pc.getStats();
  for (const s of stats.values()) {
    if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      return {samples: s.totalSamplesReceived || 0, energy: s.totalAudioEnergy || 0,
              level: s.audioLevel || 0};
    }
  }
  return {samples: 0, energy: 0, level: 0};
}"""
# the newest peer connection's video codecs, as getStats() names them per direction
VIDEO_CODECS_JS = """async () => {
  const pcs = window.__rtcPeerConnections || [];
  const pc = pcs[pcs.length - 1];
  if (!pc) return {};
  const stats = await pc.getStats();
  const out = {};
  for (const s of stats.values()) {
    if ((s.type === 'inbound-rtp' || s.type === 'outbound-rtp') && s.kind === 'video' && s.codecId) {
      const codec = stats.get(s.codecId);
      out[s.type] = codec ? codec.mimeType + ' ' + (codec.sdpFmtpLine || '') : '';
    }
  }
  return out;
}"""

# A page's Stop posts /webrtc/close: the server must list no session of the stream by then,
# well inside the media-inactivity timeout that would otherwise end it (this is what proves
# the hang-up did it), on a busy 2-core box.
STOP_RELEASE_S = 6.0
assert STOP_RELEASE_S < MEDIA_INACTIVITY_TIMEOUT_S


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = POLL_S) -> Any:
    """Poll ``predicate`` until it is truthy or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def state(page: Any, scope: str = "") -> str:
    """The component's ``data-state``: idle, starting, queued, streaming, stopped, error, full."""
    return str(page.evaluate(STATE_JS, scope))


def status(page: Any, scope: str = "") -> str:
    """The component's status line (what it tells the user)."""
    return str(page.evaluate(STATUS_JS, scope))


def has_video(page: Any, scope: str = "") -> bool:
    """The processed video has a picture."""
    return bool(page.evaluate(HAS_VIDEO_JS, scope))


def messages(page: Any, scope: str = "") -> list[str]:
    """The component's message list (errors and notices), oldest first."""
    return list(page.evaluate(MESSAGES_JS, scope))


def errors(page: Any, scope: str = "") -> list[str]:
    """The error messages the component shows."""
    return list(page.evaluate(ERRORS_JS, scope))


def pc_states(page: Any) -> list[list[str]]:
    """[signalingState, connectionState] of every peer connection the page made."""
    return list(page.evaluate(PC_STATES_JS))


def inbound_audio(page: Any) -> dict[str, float] | None:
    """The newest peer connection's inbound audio: samples, energy, level (None once closed)."""
    result: dict[str, float] | None = page.evaluate(INBOUND_AUDIO_JS)
    return result


def video_codecs(page: Any) -> dict[str, str]:
    """{"inbound-rtp": "video/H264 <fmtp>", "outbound-rtp": ...} of the newest peer connection."""
    return dict(page.evaluate(VIDEO_CODECS_JS))


def grab(page: Any, selector: str = ".rtc-remote") -> np.ndarray:
    """The picture a <video> shows now, RGB."""
    url = page.evaluate(GRAB_JS, selector)
    return decode_png(base64.b64decode(url.split(",", 1)[1]))


def decode_png(data: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def count_frames(page: Any, scope: str = "", name: str = "rtcFrames") -> None:
    """Count the frames the processed video paints from now on, in ``window[name]``."""
    page.evaluate(COUNT_FRAMES_JS, [scope, name])


def start(page: Any, scope: str = "", timeout: float = STREAM_START_TIMEOUT_S) -> None:
    """Click the component's Start and wait until it streams (an error or "full" fails)."""
    page.click(f"{scope} .rtc-button".strip())
    wait_streaming(page, scope, timeout)


def wait_streaming(page: Any, scope: str = "", timeout: float = STREAM_START_TIMEOUT_S) -> None:
    """Wait until the component streams (an error or "full" fails), its Start clicked."""
    page.wait_for_function(STARTED_JS, arg=scope, timeout=timeout * 1000)
    assert state(page, scope) == "streaming", status(page, scope)


def live_sessions(url: str, event_id: str | None = None) -> list[dict[str, Any]]:
    """The app's live sessions (GET /webrtc/sessions), of one stream event if given."""
    listed = httpx.get(f"{url}/webrtc/sessions", timeout=10).json()
    return [s for s in listed if event_id is None or s["event_id"] == event_id]


def released(url: str, event_id: str | None = None, left: int = 0, timeout: float = STOP_RELEASE_S) -> bool:
    """Within ``timeout``, the server lists at most ``left`` live sessions (of ``event_id``)."""
    deadline = time.monotonic() + timeout
    while len(live_sessions(url, event_id)) > left:
        if time.monotonic() > deadline:
            return False
        time.sleep(RELEASE_POLL_S)
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
