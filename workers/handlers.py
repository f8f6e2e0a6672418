"""The handler API of the seeds, as it runs inside a worker process.

``StreamHandler`` and friends keep gradio_webrtc's (and fastrtc's) names and meaning. The
worker gives each session its own ``handler.copy()`` and wires ``latest_args``, ``args_set``,
``wait_for_args*``, ``send_message*`` and ``phone_mode`` to the session's link.
``VideoStreamHandler`` is fastrtc's wrapper of a frame function with an output frame rate.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from workers.link.constants import DEFAULT_OUTPUT_FPS

WEBRTC_VALUE = "__webrtc_value__"  # latest_args[0]: the WebRTC component's placeholder value
DEFAULT_INPUT_SAMPLE_RATE = 48_000  # Hz
DEFAULT_OUTPUT_SAMPLE_RATE = 24_000  # Hz
DEFAULT_OUTPUT_FRAME_SIZE = 480  # samples
DEFAULT_MESSAGE_TYPE = "log"  # send_message*(): the type of a message that names none

AudioFrame = tuple[int, np.ndarray]
Layout = Literal["mono", "stereo"]


class AdditionalOutputs:
    """Values for the components of ``.on_additional_outputs(fn, outputs=...)``, in order."""

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __repr__(self) -> str:
        return f"AdditionalOutputs{self.args!r}"


class CloseStream:
    """Yield (or return) this to end the stream cleanly from the server side."""

    def __init__(self, msg: str = "Stream closed") -> None:
        self.msg = msg


class ArgsEvent:
    """``args_set``: set when the stream's inputs have arrived. A threading.Event, since sync
    handlers wait on it from their own threads, whose ``wait()`` may also be awaited from a
    coroutine, as fastrtc's asyncio.Event is (``await self.args_set.wait()``)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def wait(self, timeout: float | None = None) -> Any:
        """Blocking on a plain thread; an awaitable inside a running event loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._event.wait(timeout)
        return asyncio.to_thread(self._event.wait, timeout)


class _SessionHooks:
    """What the worker plugs into a handler copy; a handler outside a worker gets these
    no-ops, so it can be unit-tested on its own."""

    def send(self, type_: str, data: Any) -> None:
        pass

    def request_args(self) -> None:
        pass

    def initial_args(self) -> list[Any]:
        return []

    def clear_audio(self) -> None:
        pass

    def save_state(self) -> None:
        pass


class StreamHandlerBase(ABC):
    """State and helpers shared by every handler kind."""

    # a class default too, so a handler restored from an older pickle has it
    _phone_mode = False

    def __init__(
        self,
        expected_layout: Layout = "mono",
        output_sample_rate: int = DEFAULT_OUTPUT_SAMPLE_RATE,
        output_frame_size: int = DEFAULT_OUTPUT_FRAME_SIZE,
        input_sample_rate: int = DEFAULT_INPUT_SAMPLE_RATE,
        fps: float = DEFAULT_OUTPUT_FPS,
    ) -> None:
        """``fps``: how many times a second the worker asks ``video_emit()`` for a frame, at
        most (an audio-video handler's output video; fastrtc's argument of the same name)."""
        self.expected_layout = expected_layout
        self.output_sample_rate = output_sample_rate
        self.output_frame_size = output_frame_size
        self.input_sample_rate = input_sample_rate
        self.fps = _check_fps(fps)
        self.latest_args: list[Any] = [WEBRTC_VALUE]
        self.args_set = ArgsEvent()
        self._hooks: _SessionHooks = _SessionHooks()
        self._loop: asyncio.AbstractEventLoop | None = None

    def __getstate__(self) -> dict[str, Any]:
        # the per-session runtime parts are rebuilt on the other side, so a handler whose own
        # fields pickle can travel to a worker by value
        state = self.__dict__.copy()
        for key in ("args_set", "_hooks", "_loop"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.args_set = ArgsEvent()
        self._hooks = _SessionHooks()
        self._loop = None

    # --- the client ------------------------------------------------------------------------

    @property
    def phone_mode(self) -> bool:
        """True when the client is a phone call (the worker sets it from the session's
        hello). A phone sends no inputs: ``wait_for_args*()`` return at once with the ones
        the session has (the inputs' initial values, or what the input route set), and
        ``reset()`` leaves ``args_set`` set."""
        return self._phone_mode

    @phone_mode.setter
    def phone_mode(self, value: bool) -> None:
        self._phone_mode = bool(value)

    # --- arguments ------------------------------------------------------------------------

    def set_args(self, args: list[Any]) -> None:
        """Called by the worker when the stream's inputs arrive or change."""
        self.latest_args = [WEBRTC_VALUE, *args]
        self.args_set.set()

    def wait_for_args_sync(self, timeout: float | None = None) -> None:
        """Ask the client for the inputs' current values and wait for them."""
        from workers.link.constants import ARGS_WAIT_TIMEOUT_S

        if self.phone_mode:
            # nobody to ask: the inputs the session has are all there will be
            if not self.args_set.is_set():
                self.set_args(self._hooks.initial_args())
            return
        self.args_set.clear()
        self._hooks.request_args()
        if not self.args_set.wait(ARGS_WAIT_TIMEOUT_S if timeout is None else timeout):
            # a client that never answers (a plain aiortc client) gets the inputs' initial values
            self.set_args(self._hooks.initial_args())

    def clear_audio(self) -> None:
        """Drop the audio already queued for the client (an interrupted reply)."""
        self._hooks.clear_audio()

    async def wait_for_args(self, timeout: float | None = None) -> None:
        if self.phone_mode:
            self.wait_for_args_sync(timeout)  # returns at once: no thread needed
            return
        await asyncio.get_running_loop().run_in_executor(None, self.wait_for_args_sync, timeout)

    def reset(self) -> None:
        if not self.phone_mode:  # (a phone never sends inputs: they stay set)
            self.args_set.clear()

    # --- messages to the client --------------------------------------------------------------

    def send_message_sync(self, msg: Any, type_: str | None = None) -> None:
        """Send ``{"type": type_, "data": msg}`` on the client's data channel (a WebSocket
        client gets the same JSON text; a phone, nothing). ``type_`` defaults to ``"log"``.

        fastrtc's ``send_message`` takes one str and sends it as it is, and its handlers
        pass it a ready message (``create_message("log", "pause_detected")``, a JSON
        object with a ``"type"``): such a str, with no ``type_`` given, is sent as the
        message it spells, so the client sees what fastrtc would send it. Any other value
        (a plain str, a dict, a list) is the ``data`` of a message of type ``type_``.
        Type ``"error"`` reaches the client in its error shape, ``{"type": "error",
        "message": str}``; ``"update_connection"`` with ``"closed"`` is fastrtc's request
        that the component show its connection as closed."""
        type_, data = _as_message(msg, type_)
        self._hooks.send(type_, data)

    async def send_message(self, msg: Any, type_: str | None = None) -> None:
        """:meth:`send_message_sync`, awaitable (it never blocks: the link queues it)."""
        self.send_message_sync(msg, type_)

    # --- lifecycle -----------------------------------------------------------------------------

    @abstractmethod
    def copy(self) -> StreamHandlerBase:
        """A fresh handler for one session."""

    # --- failover (docs/failover.md) ---------------------------------------------------------
    # A session whose worker dies goes on with a fresh worker and a fresh ``copy()``. A
    # handler that keeps state across that defines two methods:
    #
    #     def snapshot(self) -> Any:       # a msgpack-able value (numbers, str, bytes, lists,
    #         ...                          # dicts, numpy arrays): the state to keep
    #     def restore(self, value) -> None:  # the new copy, before its first frame
    #         ...
    #
    # The worker calls snapshot() every ``pool.snapshot_interval_s`` and when the handler
    # calls :meth:`save_state` (at most that often), on a thread of its own: return a copy
    # (``list(self.history)``), not the live object. The base class defines neither.

    def save_state(self) -> None:
        """Ask for a snapshot now (say, after a reply changed the conversation): the worker
        sends ``snapshot()`` to the media process, which hands the latest to a worker that
        takes the session over. No-op for a handler without ``snapshot()`` or outside a worker."""
        self._hooks.save_state()

    def start_up(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Called once per session before the first frame."""

    def shutdown(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Called once per session after the last frame."""


class StreamHandler(StreamHandlerBase):
    """Audio in through ``receive``, audio out through ``emit`` (None: nothing ready)."""

    @abstractmethod
    def receive(self, frame: AudioFrame) -> None: ...

    @abstractmethod
    def emit(self) -> Any: ...


class AsyncStreamHandler(StreamHandlerBase):
    """``StreamHandler`` with coroutine ``receive``/``emit``."""

    @abstractmethod
    async def receive(self, frame: AudioFrame) -> None: ...

    @abstractmethod
    async def emit(self) -> Any: ...


class AudioVideoStreamHandler(StreamHandler):
    """Audio pair plus ``video_receive``/``video_emit``; each of the four runs on a thread of
    its own, so an ``emit()`` waiting for its next reply never holds up the video.
    ``video_emit()`` is asked for a frame at most ``fps`` times a second."""

    @abstractmethod
    def video_receive(self, frame: np.ndarray) -> None: ...

    @abstractmethod
    def video_emit(self) -> Any: ...


class AsyncAudioVideoStreamHandler(AsyncStreamHandler):
    """``AudioVideoStreamHandler`` with coroutines: ``receive``/``emit`` for audio,
    ``video_receive``/``video_emit`` for video, each driven by a task of its own on the
    session's event loop (``start_up``/``shutdown`` may be coroutines too). ``video_emit()``
    is asked for a frame at most ``fps`` times a second; None: nothing new to show."""

    @abstractmethod
    async def video_receive(self, frame: np.ndarray) -> None: ...

    @abstractmethod
    async def video_emit(self) -> Any: ...


@dataclass
class VideoStreamHandler:
    """fastrtc's wrapper of a video frame function: ``callable(frame, *inputs)`` runs as a
    plain frame function would, at most ``fps`` times a second (one call per 1/fps s on the
    newest frame, as ``stream_every=1/fps`` does; with ``stream_every`` too, the longer
    period wins). A stream that makes its own video (``mode="receive"``) yields it at
    ``fps``.

    ``skip_frames``: frames never queue here. One input frame waits at the worker while the
    function runs and a newer one replaces it (the gateway's latest-frame-wins), so every
    call gets the newest frame, which is fastrtc's ``skip_frames=True``. ``False`` (fastrtc's
    default, where every frame waits its turn and latency grows without bound when the
    function is slower than the camera) is accepted and means the same: a frame that came
    while the function ran is dropped, counted, never queued."""

    callable: Callable[..., Any]
    fps: float = DEFAULT_OUTPUT_FPS
    skip_frames: bool = True

    def __post_init__(self) -> None:
        if not callable(self.callable):
            name = type(self.callable).__name__
            raise TypeError(f"VideoStreamHandler wraps a frame function, not {name}")
        self.fps = _check_fps(self.fps)

    @property
    def period_s(self) -> float:
        """The least time between two calls, in seconds."""
        return 1.0 / self.fps


def _check_fps(fps: Any) -> float:
    number = isinstance(fps, (int, float)) and not isinstance(fps, bool)
    if not number or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}")
    return float(fps)


def _as_message(msg: Any, type_: str | None) -> tuple[str, Any]:
    """``(type, data)`` of what send_message*() was given (see there)."""
    if type_ is not None:
        return type_, msg
    if isinstance(msg, str) and msg.startswith("{"):
        try:
            obj = json.loads(msg)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("type"), str):
            # fastrtc's own shapes: create_message's "data", its log helpers' "message"
            return obj["type"], obj.get("data", obj.get("message"))
    return DEFAULT_MESSAGE_TYPE, msg
