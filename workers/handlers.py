"""The handler API of the seeds, as it runs inside a worker process.

``StreamHandler`` and friends keep gradio_webrtc's names and meaning. The worker gives each
session its own ``handler.copy()`` and wires ``latest_args``, ``args_set``,
``wait_for_args*`` and ``send_message*`` to the session's link.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from typing import Any, Literal

import numpy as np

WEBRTC_VALUE = "__webrtc_value__"  # latest_args[0]: the WebRTC component's placeholder value
DEFAULT_INPUT_SAMPLE_RATE = 48_000  # Hz
DEFAULT_OUTPUT_SAMPLE_RATE = 24_000  # Hz
DEFAULT_OUTPUT_FRAME_SIZE = 480  # samples

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


class StreamHandlerBase(ABC):
    """State and helpers shared by every handler kind."""

    def __init__(
        self,
        expected_layout: Layout = "mono",
        output_sample_rate: int = DEFAULT_OUTPUT_SAMPLE_RATE,
        output_frame_size: int = DEFAULT_OUTPUT_FRAME_SIZE,
        input_sample_rate: int = DEFAULT_INPUT_SAMPLE_RATE,
    ) -> None:
        self.expected_layout = expected_layout
        self.output_sample_rate = output_sample_rate
        self.output_frame_size = output_frame_size
        self.input_sample_rate = input_sample_rate
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

    # --- arguments ------------------------------------------------------------------------

    def set_args(self, args: list[Any]) -> None:
        """Called by the worker when the stream's inputs arrive or change."""
        self.latest_args = [WEBRTC_VALUE, *args]
        self.args_set.set()

    def wait_for_args_sync(self, timeout: float | None = None) -> None:
        """Ask the client for the inputs' current values and wait for them."""
        from runtime.constants import ARGS_WAIT_TIMEOUT_S

        self.args_set.clear()
        self._hooks.request_args()
        if not self.args_set.wait(ARGS_WAIT_TIMEOUT_S if timeout is None else timeout):
            # a client that never answers (a plain aiortc client) gets the inputs' initial values
            self.set_args(self._hooks.initial_args())

    def clear_audio(self) -> None:
        """Drop the audio already queued for the client (an interrupted reply)."""
        self._hooks.clear_audio()

    async def wait_for_args(self, timeout: float | None = None) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.wait_for_args_sync, timeout)

    def reset(self) -> None:
        self.args_set.clear()

    # --- messages to the client --------------------------------------------------------------

    def send_message_sync(self, msg: Any, type_: str = "log") -> None:
        self._hooks.send(type_, msg)

    async def send_message(self, msg: Any, type_: str = "log") -> None:
        self._hooks.send(type_, msg)

    # --- lifecycle -----------------------------------------------------------------------------

    @abstractmethod
    def copy(self) -> StreamHandlerBase:
        """A fresh handler for one session."""

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
    """Audio pair plus ``video_receive``/``video_emit``."""

    @abstractmethod
    def video_receive(self, frame: np.ndarray) -> None: ...

    @abstractmethod
    def video_emit(self) -> Any: ...

