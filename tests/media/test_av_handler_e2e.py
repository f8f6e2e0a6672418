"""An AudioVideoStreamHandler through the whole stack: a real aiortc client sends a picture
and a chirp, a worker's handler inverts the picture and echoes the audio, both come back.

Two handlers: one whose emit()/video_emit() return None when nothing is ready (the
documented contract), and one whose emits wait for their next item as the seeds' EchoHandler
does with ``queue.get()`` (here with a timeout, so a session can end). The second proves the
two directions do not wait on each other: audio arrives every 20 ms and video every 66 ms,
and an emit that waits for video must not hold up the audio.
"""

from __future__ import annotations

import asyncio
import queue
from collections import deque

import numpy as np
import pytest

from runtime.clients.webrtc import AUDIO_RATE, Client, synthetic_image
from tests.conftest import async_wait_until
from tests.echo import chirp, find_echo
from workers.handlers import AudioVideoStreamHandler

pytestmark = pytest.mark.asyncio(loop_scope="session")

FPS = 15
SIZE = (320, 240)
LEAD_S = 0.5  # silence before the chirp
TAIL_S = 1.5  # silence after it, so the echo has time to come back
EMIT_WAIT_S = 0.1  # how long the waiting handler's emits wait for an item
MAX_ECHO_DELAY_S = 1.0  # mouth-to-ear of the echo; a starved audio emit falls seconds behind
MARK_ROWS = 16  # the client paints its frame counter along the top rows


class InvertEcho(AudioVideoStreamHandler):
    """Audio back as it came, video back with its colours inverted; None when idle."""

    def __init__(self) -> None:
        super().__init__()
        self.audio: deque = deque()
        self.video: deque = deque(maxlen=1)  # the newest picture only, like a camera

    def receive(self, frame):
        self.audio.append(frame)

    def emit(self):
        return self.audio.popleft() if self.audio else None

    def video_receive(self, frame):
        self.video.append(255 - frame)

    def video_emit(self):
        return self.video.popleft() if self.video else None

    def copy(self):
        return InvertEcho()


class WaitingInvertEcho(AudioVideoStreamHandler):
    """The same, with emits that wait for their next item (the seeds' ``queue.get()``)."""

    def __init__(self, live: bool = False) -> None:
        super().__init__()
        # queues do not pickle: the template travels to the worker without them, each
        # session's copy() makes its own
        self.audio_q: queue.Queue | None = queue.Queue() if live else None
        self.video_q: queue.Queue | None = queue.Queue() if live else None

    def receive(self, frame):
        self.audio_q.put(frame)

    def emit(self):
        try:
            return self.audio_q.get(timeout=EMIT_WAIT_S)
        except queue.Empty:
            return None

    def video_receive(self, frame):
        self.video_q.put(255 - frame)

    def video_emit(self):
        try:
            return self.video_q.get(timeout=EMIT_WAIT_S)
        except queue.Empty:
            return None

    def copy(self):
        return WaitingInvertEcho(live=True)


@pytest.mark.parametrize(
    "handler", [InvertEcho(), WaitingInvertEcho()], ids=["returns-none", "waits"]
)
async def test_audio_video_handler_inverts_video_and_echoes_audio(make_gateway, handler):
    eid = f"av-echo-{type(handler).__name__}"
    sent = np.concatenate(
        [
            np.zeros(int(AUDIO_RATE * LEAD_S), np.int16),
            chirp(),
            np.zeros(int(AUDIO_RATE * TAIL_S), np.int16),
        ]
    )
    with make_gateway(
        lambda gw: gw.add_stream(handler, event_id=eid, modality="audio-video")
    ) as served:
        client = Client(served.url, modality="audio-video", audio=sent, fps=FPS, size=SIZE)
        await client.connect()
        assert await async_wait_until(lambda: client.first_frame.is_set(), 60), client.messages
        await asyncio.sleep(len(sent) / AUDIO_RATE + 0.5)
        frame = client.frames[-1].astype(int)
        heard = client.received_audio()
        received_video = client.report.received
        errors = [m for m in client.messages if m.get("type") == "error"]
        await client.close()
    assert not errors, errors

    # video: the camera picture, inverted (the counter marks along the top differ per frame)
    picture = synthetic_image(*SIZE).astype(int)
    inverted_error = np.abs(frame[MARK_ROWS:] - (255 - picture[MARK_ROWS:])).mean()
    plain_error = np.abs(frame[MARK_ROWS:] - picture[MARK_ROWS:]).mean()
    assert inverted_error < 20 and plain_error > 100, (inverted_error, plain_error)
    seconds = len(sent) / AUDIO_RATE
    assert received_video >= FPS * seconds / 2, f"{received_video} frames in {seconds:.1f} s"

    # audio: the chirp came back, and soon: the video's emit did not hold the audio's up
    assert len(heard) > AUDIO_RATE, "no audio came back"
    echo = find_echo(heard, chirp())
    assert not echo.problems(), f"the echo does not carry what was sent: {echo.problems()}"
    # the client's received audio starts with the stream (silence until the echo), so the
    # chirp's place in it, less its place in what was sent, is the echo's delay
    delay = echo.start_s - LEAD_S
    assert delay < MAX_ECHO_DELAY_S, f"the echo came back {delay:.2f} s late"
