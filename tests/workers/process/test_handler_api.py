"""fastrtc's handler API beyond the seeds', in a real Worker driven over a real link (the
test plays the gateway): AsyncAudioVideoStreamHandler, VideoStreamHandler(fn, fps=...),
get_current_context() (and its WebSocket sender), phone_mode, send_message* as fastrtc
handlers call it, and CloseStream from every kind of handler.

One handler, ``ReimportedVideo``, closes over a lock: it reaches a worker subprocess by the
loader's re-import of its file, as an app's VideoStreamHandler(fn) whose fn does not pickle.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import wait_until
from tests.workers.harness import FRAME, RATE, WAIT_S, H, Link, W, link, wait_idle
from tests.workers.process.worker_process import worker_process_fixture
from workers.context import Context, WebSocketSender, get_current_context
from workers.handlers import (
    AdditionalOutputs,
    AsyncAudioVideoStreamHandler,
    AsyncStreamHandler,
    CloseStream,
    StreamHandler,
    VideoStreamHandler,
    _as_message,
)
from workers.link.shape import Transport
from workers.link.wire import (
    WEBSOCKET_SEND,
    Args,
    Close,
    Error,
    Message,
)
from workers.process.drivers import STALE_VIDEO_S
from workers.process.loader import app_file_of

pytestmark = pytest.mark.usefixtures("no_leaked_segments")

# frames come back through I420: a picture constant over each 2x2 block returns within the
# rounding of limited-range YUV (2 at most, measured in tests/workers/process/test_worker.py)
I420_TOLERANCE = 3
INPUT_FPS = 30.0  # the test's camera
AV_FPS = 10.0  # the audio-video handler's own fps: how often video_emit() is asked
LIMITED_FPS = 5.0  # VideoStreamHandler(fps=)
RATE_WINDOW_S = 3.0  # calls are counted over this long
# a loaded 2-core machine may lose a call or two a second, and a period's jitter adds one;
# "every input frame" would be INPUT_FPS, a stall 0
MIN_RATE_OF_FPS, MAX_RATE_OF_FPS = 0.5, 1.4


def frame_of(value: int) -> np.ndarray:
    """A picture, not a flat field; constant over each 2x2 block, so I420 keeps it."""
    f = np.full((H, W, 3), value, dtype=np.uint8)
    f[2:, 2:, 1] = (np.arange(2, W, dtype=np.uint8) // 2 * 6)[None, :]
    return f


def assert_pixels_near(out: np.ndarray, expected: np.ndarray) -> None:
    assert out.shape == expected.shape and out.dtype == np.uint8
    np.testing.assert_allclose(out.astype(int), expected.astype(int), atol=I420_TOLERANCE, rtol=0)


# --- handlers (module level: they travel to the worker by value, as an app's would) ----------


class EchoInvert(AsyncAudioVideoStreamHandler):
    """Echoes its audio; shows its newest input frame inverted. ``stall_video``: video_emit()
    awaits forever (a model server that never answers), which must not hold up the audio."""

    def __init__(self, stall_video: bool = False) -> None:
        super().__init__(output_sample_rate=RATE, input_sample_rate=RATE, fps=AV_FPS)
        self.stall_video = stall_video
        self.latest: np.ndarray | None = None
        self.audio: asyncio.Queue[np.ndarray] | None = None
        self.never: asyncio.Event | None = None

    def copy(self) -> EchoInvert:
        return EchoInvert(self.stall_video)

    async def start_up(self) -> None:
        # made on the session's own loop
        self.audio = asyncio.Queue()
        self.never = asyncio.Event()

    async def receive(self, frame: tuple[int, np.ndarray]) -> None:
        assert self.audio is not None
        await self.audio.put(frame[1])

    async def emit(self) -> Any:
        assert self.audio is not None
        return (RATE, await self.audio.get())

    async def video_receive(self, frame: np.ndarray) -> None:
        self.latest = frame

    async def video_emit(self) -> Any:
        if self.stall_video:
            assert self.never is not None
            await self.never.wait()
        if self.latest is None:
            return None
        return 255 - self.latest


def stamp_invert(frame: np.ndarray) -> Any:
    """The frame inverted, and when this call ran (one clock: the worker is in this process)."""
    return 255 - frame, AdditionalOutputs(time.monotonic())


def report_context(frame: np.ndarray) -> Any:
    ctx = get_current_context()
    return frame, AdditionalOutputs("fn", ctx.webrtc_id, ctx.websocket is None)


class ContextEverywhere(StreamHandler):
    """Reports the context its start_up(), receive() and emit() see; shutdown() writes it
    to a file (it runs on the worker's serve thread, after the last frame)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, str] = {}
        self.sent = False

    def copy(self) -> ContextEverywhere:
        return ContextEverywhere()

    def start_up(self) -> None:
        self.seen["start_up"] = get_current_context().webrtc_id

    def receive(self, frame: Any) -> None:
        self.seen["receive"] = get_current_context().webrtc_id

    def emit(self) -> Any:
        if self.sent or "receive" not in self.seen:
            return None
        self.sent = True
        self.seen["emit"] = get_current_context().webrtc_id
        return AdditionalOutputs(dict(self.seen))

    def shutdown(self) -> None:
        ctx = get_current_context()
        Path(os.environ["CONTEXT_DIR"], f"shutdown-{ctx.webrtc_id}").touch()


class AsyncContextEverywhere(AsyncStreamHandler):
    """The async form, plus a task the handler creates itself (it inherits the context)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, Any] = {}
        self.sent = False

    def copy(self) -> AsyncContextEverywhere:
        return AsyncContextEverywhere()

    async def start_up(self) -> None:
        self.seen["start_up"] = get_current_context().webrtc_id

    async def receive(self, frame: Any) -> None:
        self.seen["receive"] = get_current_context().webrtc_id

    async def emit(self) -> Any:
        if self.sent or "receive" not in self.seen:
            await asyncio.sleep(0.01)
            return None
        self.sent = True
        self.seen["emit"] = get_current_context().webrtc_id
        self.seen["task"] = await asyncio.create_task(self._in_a_task())
        return AdditionalOutputs(dict(self.seen))

    async def _in_a_task(self) -> str:
        return get_current_context().webrtc_id


def context_generator() -> Any:
    ctx = get_current_context()
    yield AdditionalOutputs("generator", ctx.webrtc_id)
    yield CloseStream("generator done")


class TalksToItsSocket(AsyncStreamHandler):
    """Sends to the client's socket through the context, sync and async, and says whether it
    has one (None on WebRTC)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = False

    def copy(self) -> TalksToItsSocket:
        return TalksToItsSocket()

    async def receive(self, frame: Any) -> None:
        pass

    async def emit(self) -> Any:
        if self.sent:
            await asyncio.sleep(0.01)
            return None
        self.sent = True
        ws = get_current_context().websocket
        if ws is not None:
            await ws.send_json({"event": "transcript", "text": "héllo"})
            await ws.send_text("plain text")
            ws.send_json_sync([1, 2])
        return AdditionalOutputs(ws is None, self.phone_mode)


class WaitsForInputs(StreamHandler):
    """start_up() asks for the inputs with a wait no client would outlast; reports what it
    got, how long the wait took and whether it is on a phone."""

    def __init__(self) -> None:
        super().__init__()
        self.report: list[Any] | None = None
        self.sent = False

    def copy(self) -> WaitsForInputs:
        return WaitsForInputs()

    def start_up(self) -> None:
        t0 = time.monotonic()
        self.wait_for_args_sync(timeout=3600)
        self.report = [self.phone_mode, list(self.latest_args[1:]), time.monotonic() - t0]

    def receive(self, frame: Any) -> None:
        pass

    def emit(self) -> Any:
        if self.report is None or self.sent:
            return None
        self.sent = True
        return AdditionalOutputs(self.report)


class AsyncWaitsForInputs(AsyncStreamHandler):
    def __init__(self) -> None:
        super().__init__()
        self.sent = False

    def copy(self) -> AsyncWaitsForInputs:
        return AsyncWaitsForInputs()

    async def receive(self, frame: Any) -> None:
        pass

    async def emit(self) -> Any:
        if self.sent:
            await asyncio.sleep(0.01)
            return None
        self.sent = True
        t0 = time.monotonic()
        await self.wait_for_args(timeout=3600)
        return AdditionalOutputs(self.phone_mode, list(self.latest_args[1:]), time.monotonic() - t0)


class FastrtcStyleMessages(AsyncStreamHandler):
    """Messages as fastrtc handlers send them (one ready-made str) and as rtcpool's do."""

    def __init__(self) -> None:
        super().__init__()

    def copy(self) -> FastrtcStyleMessages:
        return FastrtcStyleMessages()

    async def start_up(self) -> None:
        self.send_message_sync("plain text")
        await self.send_message(json.dumps({"type": "log", "data": "pause_detected"}))
        self.send_message_sync(json.dumps({"type": "update_connection", "data": "closed"}))
        self.send_message_sync("closed", "update_connection")
        self.send_message_sync({"k": 1}, "custom")
        self.send_message_sync(json.dumps({"type": "warning", "message": "careful"}))
        self.send_message_sync(json.dumps({"type": "error", "data": "bad thing"}))
        self.send_message_sync("{not json")
        self.send_message_sync(json.dumps({"no": "type"}))

    async def receive(self, frame: Any) -> None:
        pass

    async def emit(self) -> Any:
        await asyncio.sleep(0.01)
        return None


CLOSE_AFTER = 3  # audio frames a closing handler sends before its CloseStream


class ClosesFromEmit(StreamHandler):
    def __init__(self) -> None:
        super().__init__(output_sample_rate=RATE)
        self.n = 0

    def copy(self) -> ClosesFromEmit:
        return ClosesFromEmit()

    def receive(self, frame: Any) -> None:
        pass

    def emit(self) -> Any:
        self.n += 1
        if self.n > CLOSE_AFTER:
            return CloseStream("emit is done")
        return (RATE, np.full((1, FRAME), 4, np.int16))


class AsyncClosesFromEmit(AsyncStreamHandler):
    def __init__(self) -> None:
        super().__init__(output_sample_rate=RATE)
        self.n = 0

    def copy(self) -> AsyncClosesFromEmit:
        return AsyncClosesFromEmit()

    async def receive(self, frame: Any) -> None:
        pass

    async def emit(self) -> Any:
        self.n += 1
        if self.n > CLOSE_AFTER:
            return CloseStream("async emit is done")
        return (RATE, np.full((1, FRAME), 4, np.int16))


class ClosesFromVideoEmit(EchoInvert):
    def __init__(self) -> None:
        super().__init__()
        self.shown = 0

    def copy(self) -> ClosesFromVideoEmit:
        return ClosesFromVideoEmit()

    async def video_emit(self) -> Any:
        self.shown += 1
        if self.shown > CLOSE_AFTER:
            return CloseStream("video_emit is done")
        return frame_of(40)


def video_generator_then_close() -> Any:
    for _ in range(CLOSE_AFTER):
        yield frame_of(40)
    yield CloseStream("generator is done")


async def async_audio_generator_then_close() -> Any:
    for _ in range(CLOSE_AFTER):
        yield (RATE, np.full((1, FRAME), 4, np.int16))
    yield CloseStream("async generator is done")


def last_frame_and_close(frame: np.ndarray) -> Any:
    """fastrtc's (frame, CloseStream) form: this frame is the last."""
    if frame[0, 0, 0] >= 200:
        return 255 - frame, CloseStream("that was the last frame")
    return 255 - frame


# --- helpers ---------------------------------------------------------------------------------------


def send_camera(
    s: Link, seconds: float, value_of: Callable[[int], int] = lambda i: (i * 8) % 200
) -> int:
    """Send frames at INPUT_FPS for ``seconds`` (pumping in between); returns how many."""
    period = 1.0 / INPUT_FPS
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < seconds:
        due = start + i * period
        s.pump_until(lambda due=due: time.monotonic() >= due, timeout=period)
        s.ch.send_video(frame_of(value_of(i)), pts=i * 3000)
        i += 1
    return i


def assert_inverted(out: np.ndarray, step: int = 8) -> None:
    """``out`` is 255 - frame_of(v) for one of the values send_camera sends."""
    value = round((255 - int(out[0, 0, 0])) / step) * step
    assert_pixels_near(out, 255 - frame_of(value))


# --- AsyncAudioVideoStreamHandler ----------------------------------------------------------------


@pytest.mark.slow  # over 2 s: out of the quick subset
def test_an_async_audio_video_handler_echoes_audio_and_shows_its_video_at_its_fps(make_worker):
    worker = make_worker(EchoInvert())
    s = link(worker, modality="audio-video")
    s.send_tone(5, frames=10)
    assert s.pump_until(lambda: s.samples_of(5) >= FRAME * 10), "the audio was not echoed"
    assert s.samples_of(0) == 0
    s.frames.clear()
    t0 = time.monotonic()
    send_camera(s, RATE_WINDOW_S)
    elapsed = time.monotonic() - t0
    assert s.frames, "video_emit() was never driven"
    for _, out in s.frames[2:]:  # the first may be of the frame before the camera's first
        assert_inverted(out)
    # video_emit() returns a picture every call: the worker asks at the handler's fps, not as
    # fast as it can (nor at the camera's rate)
    rate = len(s.frames) / elapsed
    assert MIN_RATE_OF_FPS * AV_FPS <= rate <= MAX_RATE_OF_FPS * AV_FPS, rate
    # audio still flows beside the video
    s.send_tone(6, frames=5)
    assert s.pump_until(lambda: s.samples_of(6) >= FRAME * 5)
    assert s.of_type(Error) == []
    peer = s.end()
    assert peer is not None and not peer.retire
    wait_idle(worker, 1)


def test_a_video_emit_that_awaits_forever_holds_up_neither_audio_nor_video_input(make_worker):
    worker = make_worker(EchoInvert(stall_video=True))
    s = link(worker, modality="audio-video")
    send_camera(s, 0.3)
    s.send_tone(7, frames=10)
    assert s.pump_until(lambda: s.samples_of(7) >= FRAME * 10), (
        "a stalled video_emit() held up the audio"
    )
    assert s.frames == []
    assert s.of_type(Error) == []
    s.end()  # shutdown cancels the stalled task
    wait_idle(worker, 1)


# --- VideoStreamHandler ---------------------------------------------------------------------------


def test_video_stream_handler_is_fastrtcs_wrapper():
    h = VideoStreamHandler(stamp_invert)
    assert (h.callable, h.fps, h.skip_frames) == (stamp_invert, 30.0, True)
    assert VideoStreamHandler(stamp_invert, fps=5, skip_frames=False).period_s == pytest.approx(0.2)
    for bad in (0, -1, float("nan"), float("inf"), True, "30"):
        with pytest.raises(ValueError, match="fps must be a positive number"):
            VideoStreamHandler(stamp_invert, fps=bad)
    with pytest.raises(TypeError, match="wraps a frame function"):
        VideoStreamHandler(42)  # type: ignore[arg-type]
    # the loader finds the app where the function is, as for the function itself
    assert app_file_of(h) == app_file_of(stamp_invert) == str(Path(__file__).resolve())


@pytest.mark.slow  # over 2 s: out of the quick subset
def test_video_stream_handler_calls_its_function_at_most_fps_times_a_second(make_worker):
    worker = make_worker(VideoStreamHandler(stamp_invert, fps=LIMITED_FPS))
    s = link(worker, modality="video")
    sent = send_camera(s, RATE_WINDOW_S)
    s.pump_for(0.3)
    calls = [v[0] for v in s.outputs()]
    # the first call comes with the first frame; the rest once per period
    rate = (len(calls) - 1) / (calls[-1] - calls[0])
    assert MIN_RATE_OF_FPS * LIMITED_FPS <= rate <= MAX_RATE_OF_FPS * LIMITED_FPS, (
        rate,
        len(calls),
        sent,
    )
    assert sent > 2 * len(calls), "the camera sent more frames than the function was given"
    assert len(s.frames) == len(calls), "one processed frame per call"
    for _, out in s.frames:
        assert_inverted(out)
    assert s.of_type(Error) == []
    s.end()
    wait_idle(worker, 1)


def test_a_frame_that_came_just_after_the_last_call_is_not_thrown_away(make_worker):
    """Lock step: each frame is sent as soon as the previous one came back, so it waits at the
    worker for the rest of the period. It is the newest there is (the camera sends no other),
    so it must be the next call's, not given back for a newer one that never comes: at fps=30
    with a 30 fps camera that halved the rate."""
    fps = 1 / (STALE_VIDEO_S / 2)  # the frame waits half as long as a stale one
    worker = make_worker(VideoStreamHandler(stamp_invert, fps=fps))
    s = link(worker, modality="video")
    retries = 0
    for i in range(1, 21):
        assert s.ch.send_video(frame_of(i * 8), pts=i)
        while not s.pump_until(lambda i=i: s.frames and s.frames[-1][0].pts == i, timeout=1.0):
            # on a loaded machine the frame may have been late enough to count as stale
            retries += 1
            assert retries <= 5, "fresh frames were dropped"
            assert s.ch.send_video(frame_of(i * 8), pts=i)
        assert_pixels_near(s.frames[-1][1], 255 - frame_of(i * 8))
    s.end()
    wait_idle(worker, 1)


# --- get_current_context() ------------------------------------------------------------------------


def test_there_is_no_context_outside_a_handler_call():
    with pytest.raises(RuntimeError, match="No context found"):
        get_current_context()
    assert Context("abc") == Context(webrtc_id="abc", websocket=None)


def test_a_frame_function_sees_its_own_sessions_context(make_worker):
    worker = make_worker(report_context)
    for n in (1, 2):
        s = link(worker, modality="video")
        assert s.ch.send_video(frame_of(10), pts=1)
        assert s.pump_until(s.outputs)
        assert s.outputs()[0] == ["fn", s.session_id, True]
        s.end()
        wait_idle(worker, n)


def test_a_stream_handler_sees_the_context_in_every_call(make_worker, tmp_path, monkeypatch):
    monkeypatch.setenv("CONTEXT_DIR", str(tmp_path))
    worker = make_worker(ContextEverywhere())
    s = link(worker)
    s.send_tone(1)
    assert s.pump_until(s.outputs)
    assert s.outputs()[0] == [
        {"start_up": s.session_id, "receive": s.session_id, "emit": s.session_id}
    ]
    s.end()
    assert wait_until(lambda: (tmp_path / f"shutdown-{s.session_id}").exists(), WAIT_S), (
        "shutdown() saw no context"
    )


def test_an_async_handler_and_its_own_tasks_see_the_context(make_worker):
    worker = make_worker(AsyncContextEverywhere())
    s = link(worker)
    s.send_tone(1)
    assert s.pump_until(s.outputs)
    sid = s.session_id
    assert s.outputs()[0] == [{"start_up": sid, "receive": sid, "emit": sid, "task": sid}]
    s.end()


def test_a_generator_sees_the_context(make_worker):
    worker = make_worker(context_generator)
    s = link(worker, modality="video", mode="receive")
    peer = s.wait_closed_by_worker()
    assert s.outputs() == [["generator", s.session_id]]
    assert isinstance(peer, Close)


@pytest.mark.parametrize("kind", [Transport.WEBSOCKET, Transport.TELEPHONE])
def test_a_handler_sends_to_its_websocket_client_through_the_context(make_worker, kind):
    worker = make_worker(TalksToItsSocket())
    s = link(worker, client_kind=kind)
    assert s.pump_until(lambda: len(s.messages(WEBSOCKET_SEND)) >= 3 and s.outputs())
    texts = s.messages(WEBSOCKET_SEND)
    # text, verbatim, for the gateway to write to the socket as it is
    assert all(isinstance(t, str) for t in texts)
    assert json.loads(texts[0]) == {"event": "transcript", "text": "héllo"}
    assert texts[0] == '{"event":"transcript","text":"héllo"}', "Starlette's send_json text"
    assert texts[1:] == ["plain text", "[1,2]"]
    assert s.outputs() == [[False, kind == Transport.TELEPHONE]]  # a sender; phone_mode on a phone
    s.end()


def test_a_webrtc_session_has_no_websocket(make_worker):
    worker = make_worker(TalksToItsSocket())
    s = link(worker)
    assert s.pump_until(s.outputs)
    assert s.outputs() == [[True, False]]
    assert s.messages(WEBSOCKET_SEND) == []
    s.end()


def test_the_websocket_sender_takes_only_text():
    sent: list[str] = []
    ws = WebSocketSender(sent.append)
    with pytest.raises(TypeError, match="takes a str"):
        ws.send_text_sync(b"bytes")  # type: ignore[arg-type]
    asyncio.run(ws.send_json({"a": None}))
    assert sent == ['{"a":null}']


# --- phone_mode -------------------------------------------------------------------------------------


def test_on_a_phone_wait_for_args_returns_at_once_with_the_initial_inputs(make_worker):
    worker = make_worker(WaitsForInputs())
    s = link(worker, args=["initial", 3], client_kind=Transport.TELEPHONE)
    assert s.pump_until(s.outputs)
    ((report,),) = s.outputs()
    phone, args, waited = report
    assert phone is True and args == ["initial", 3]
    assert waited < 1.0, "a phone sends no inputs: nothing to wait for"
    assert s.messages("send_input") == [], "nobody to ask"
    s.end()


def test_off_the_phone_wait_for_args_still_asks_the_client(make_worker):
    worker = make_worker(WaitsForInputs())
    s = link(worker, args=["initial"], client_kind=Transport.WEBSOCKET)
    assert s.pump_until(lambda: s.messages("send_input"))
    s.ch.send_control(Args(["answered"]))
    assert s.pump_until(s.outputs)
    ((report,),) = s.outputs()
    assert report[:2] == [False, ["answered"]]
    s.end()


def test_on_a_phone_an_async_wait_for_args_returns_at_once(make_worker):
    worker = make_worker(AsyncWaitsForInputs())
    s = link(worker, args=["initial"], client_kind=Transport.TELEPHONE)
    assert s.pump_until(s.outputs)
    ((phone, args, waited),) = s.outputs()
    assert phone is True and args == ["initial"] and waited < 1.0
    assert s.messages("send_input") == []
    s.end()


def test_phone_mode_is_a_property_and_reset_keeps_a_phones_inputs_set():
    h = WaitsForInputs()
    assert h.phone_mode is False
    h.set_args(["x"])
    h.reset()
    assert not h.args_set.is_set()
    h.phone_mode = True
    h.set_args(["x"])
    h.reset()
    assert h.args_set.is_set(), "a phone sends no inputs: those it has stay"
    # outside a worker (no hooks): a phone's wait returns at once, with the initial values
    fresh = WaitsForInputs()
    fresh.phone_mode = True
    fresh.wait_for_args_sync(timeout=3600)
    assert fresh.args_set.is_set() and fresh.latest_args == ["__webrtc_value__"]


# --- send_message* --------------------------------------------------------------------------------


def test_send_message_takes_fastrtcs_ready_made_messages_and_rtcpools_pairs():
    assert _as_message("text", None) == ("log", "text")
    assert _as_message(json.dumps({"type": "log", "data": "pause_detected"}), None) == (
        "log",
        "pause_detected",
    )
    assert _as_message(json.dumps({"type": "warning", "message": "m"}), None) == ("warning", "m")
    assert _as_message("closed", "update_connection") == ("update_connection", "closed")
    # with a type given, a JSON str is the data as it is
    assert _as_message('{"type": "log"}', "custom") == ("custom", '{"type": "log"}')
    assert _as_message("{broken", None) == ("log", "{broken")
    assert _as_message('{"type": 3}', None) == ("log", '{"type": 3}')
    assert _as_message({"k": 1}, None) == ("log", {"k": 1})


def test_messages_reach_the_client_as_fastrtc_would_send_them(make_worker):
    worker = make_worker(FastrtcStyleMessages())
    s = link(worker)
    assert s.pump_until(lambda: len(s.of_type(Message)) >= 8 and s.of_type(Error))
    assert s.messages() == [
        ("log", "plain text"),
        ("log", "pause_detected"),
        # update_connection: the component's connection state, as fastrtc's server sets it
        ("update_connection", "closed"),
        ("update_connection", "closed"),
        ("custom", {"k": 1}),
        ("warning", "careful"),
        ("log", "{not json"),
        ("log", json.dumps({"no": "type"})),
    ]
    # an error goes as the client's error shape ({"type": "error", "message": ...})
    assert [e.message for e in s.of_type(Error)] == ["bad thing"]
    s.end()


# --- CloseStream from every kind of handler ----------------------------------------------------------


def assert_closed_cleanly(s: Link, message: str) -> None:
    peer = s.wait_closed_by_worker()
    (end,) = s.messages("end_stream")
    assert end == {"reason": "closed_by_handler", "message": message}
    assert s.of_type(Message)[-1].type == "end_stream", "end_stream is the last word"
    assert isinstance(peer, Close) and not peer.retire, "the worker closes cleanly, not by dying"


@pytest.mark.parametrize(
    ("handler", "message"),
    [(ClosesFromEmit(), "emit is done"), (AsyncClosesFromEmit(), "async emit is done")],
    ids=["stream-handler", "async-stream-handler"],
)
def test_close_stream_from_emit_ends_the_stream_after_its_audio(make_worker, handler, message):
    worker = make_worker(handler)
    s = link(worker)
    assert_closed_cleanly(s, message)
    assert s.samples_of(4) == CLOSE_AFTER * FRAME, "the audio before CloseStream arrived"
    wait_idle(worker, 1)
    s2 = link(worker)  # the worker serves the next user
    assert_closed_cleanly(s2, message)
    wait_idle(worker, 2)


def test_close_stream_from_video_emit(make_worker):
    worker = make_worker(ClosesFromVideoEmit())
    s = link(worker, modality="audio-video")
    assert_closed_cleanly(s, "video_emit is done")
    s.pump()  # (the last frame may still be in its slot)
    assert 1 <= len(s.frames) <= CLOSE_AFTER
    assert_pixels_near(s.frames[-1][1], frame_of(40))
    wait_idle(worker, 1)


@pytest.mark.parametrize(
    ("handler", "modality", "message"),
    [
        (video_generator_then_close, "video", "generator is done"),
        (async_audio_generator_then_close, "audio", "async generator is done"),
    ],
    ids=["generator", "async-generator"],
)
def test_close_stream_from_a_server_side_generator(make_worker, handler, modality, message):
    worker = make_worker(handler)
    s = link(worker, modality=modality, mode="receive")
    assert_closed_cleanly(s, message)
    s.pump()
    if modality == "video":
        assert s.frames and len(s.frames) <= CLOSE_AFTER
        assert_pixels_near(s.frames[-1][1], frame_of(40))
    else:
        assert s.samples_of(4) == CLOSE_AFTER * FRAME
    wait_idle(worker, 1)


def test_a_frame_then_close_stream_sends_the_frame_then_ends(make_worker):
    worker = make_worker(last_frame_and_close)
    s = link(worker, modality="video")
    assert s.ch.send_video(frame_of(16), pts=1)
    assert s.pump_until(lambda: s.frames)
    assert s.ch.send_video(frame_of(208), pts=2)
    assert_closed_cleanly(s, "that was the last frame")
    s.pump()
    assert [h.pts for h, _ in s.frames] == [1, 2]
    assert_pixels_near(s.frames[-1][1], 255 - frame_of(208))
    wait_idle(worker, 1)


# --- a VideoStreamHandler whose function does not pickle: by re-import, in a worker process ---------

worker_process = worker_process_fixture("""
import threading
from workers.handlers import AdditionalOutputs, VideoStreamHandler
from workers.context import get_current_context

LOCK = threading.Lock()  # the function closes over it: it cannot travel by value

def invert_locked(frame):
    with LOCK:
        return 255 - frame, AdditionalOutputs(get_current_context().webrtc_id)

HANDLERS = {"locked": VideoStreamHandler(invert_locked, fps=10)}
""")


def test_a_video_stream_handler_that_does_not_pickle_travels_by_reimport(worker_process, tmp_path):
    script = tmp_path / "worker_main.py"
    wp = worker_process("locked")
    s = Link(wp.endpoint, wp.token, modality="video")
    assert s.ch.send_video(frame_of(24), pts=7)
    assert s.pump_until(lambda: s.frames and s.outputs())
    assert s.frames[0][0].pts == 7
    assert_pixels_near(s.frames[0][1], 255 - frame_of(24))
    assert s.outputs()[0] == [s.session_id]
    s.end()
    assert script.exists()
