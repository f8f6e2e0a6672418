"""The test's side of a worker's sessions, shared by the worker's tests: a :class:`Link`
plays the gateway over a real link (shared memory or TCP) and collects what the worker
sends; :func:`own_segments` and :func:`wait_idle` check what a session leaves behind.

The fixtures that start workers (``make_worker``) and check for leaked shared memory
(``no_leaked_segments``) are in tests/workers/conftest.py; a worker in a subprocess of its
own is tests/workers/process/worker_process.py.
"""

from __future__ import annotations

import os
import select
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from tests.conftest import wait_until
from tests.workers.link.blocking import connect_worker
from workers.link.channel import FrameChannel
from workers.link.shape import Transport
from workers.link.shm import SEGMENT_PREFIX, Geometry
from workers.link.wire import (
    PIXFMT_I420,
    SLOT_HEADER_BYTES,
    Args,
    Close,
    Control,
    Hello,
    Message,
    Outputs,
)
from workers.process.actor import Worker
from workers.process.convert import PixelConverter

WAIT_S = 20.0  # generous: every wait ends as soon as its condition holds
RATE = 48_000
FRAME = 960  # 20 ms at 48 kHz
H, W = 48, 64  # the largest frame a Link's slots take
GEOMETRY = Geometry(
    video_slots=4,
    video_slot_bytes=SLOT_HEADER_BYTES + H * W * 3,
    audio_slots=64,
    audio_slot_bytes=SLOT_HEADER_BYTES + 4800 * 2 * 2,
)


def own_segments() -> set[str]:
    """The shared-memory segments this process has open (the gateway's side of its links)."""
    prefix = f"{SEGMENT_PREFIX}{os.getpid()}-"
    return {n for n in os.listdir("/dev/shm") if n.startswith(prefix)}


def wait_idle(worker: Worker, served: int) -> None:
    assert wait_until(lambda: worker.session is None and worker.sessions_served == served, WAIT_S), (
        f"worker did not finish session #{served}"
    )


class Link:
    """One session with a worker, driven synchronously: collects controls, audio and (with
    ``video``) the worker's video frames, as RGB. ``answer``, when set, answers each of the
    handler's requests for inputs (``send_input``) with these args."""

    def __init__(
        self,
        endpoint: str,
        token: str,
        args: list[Any] | None = None,
        *,
        modality: str = "audio",
        mode: str = "send-receive",
        client_kind: Transport = Transport.WEBRTC,
        video: bool = True,
    ) -> None:
        self.controls: list[Control] = []
        self.audio: list[np.ndarray] = []
        self.audio_at: list[float] = []  # monotonic arrival time of each of ``audio``
        self.frames: list[tuple[Any, np.ndarray]] = []  # (header, RGB) of the worker's video
        self.closed: list[str] = []
        self.answer: Callable[[], list[Any]] | None = None
        self._answered = 0
        self._video = video
        self.session_id = uuid.uuid4().hex
        hello = Hello(
            self.session_id,
            "",
            "",
            mode,
            modality,
            list(args or []),
            False,
            token=token,
            client_kind=client_kind,
        )
        self.ch: FrameChannel
        self.ch, self.ready = connect_worker(
            endpoint,
            hello,
            WAIT_S,
            GEOMETRY,
            on_control=self.controls.append,
            on_audio=self._on_audio,
            on_closed=self.closed.append,
        )
        self._pixels = PixelConverter()

    def _on_audio(self, header: Any, samples: np.ndarray) -> None:
        self.audio.append(samples)
        self.audio_at.append(time.monotonic())

    def pump(self) -> None:
        if self.ch.closed:
            return
        self.ch.pump()
        if self.answer is not None:
            requests = self.messages("send_input")
            if len(requests) > self._answered:
                self._answered = len(requests)
                self.ch.send_control(Args(self.answer()))
        if self._video:
            got = self.ch.take_video()
            if got is not None:
                header, view = got
                rgb = (
                    self._pixels.to_rgb(*self.ch.i420_planes(header))
                    if header.layout == PIXFMT_I420
                    else view.copy()
                )
                self.frames.append((header, rgb))
                self.ch.release_video()
        if self.ch.has_backlog:
            self.ch.flush()

    def pump_until(self, pred: Callable[[], Any], timeout: float = WAIT_S) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            value = pred()
            if value or time.monotonic() > deadline:
                return value
            if not self.ch.closed:
                select.select([self.ch.sock], [], [], 0.01)
            else:
                time.sleep(0.01)

    def pump_for(self, seconds: float) -> None:
        self.pump_until(lambda: False, seconds)

    def send_tone(self, value: int, frames: int = 1) -> None:
        for _ in range(frames):
            assert self.ch.send_audio(np.full((1, FRAME), value, np.int16), RATE)

    def samples_of(self, value: int) -> int:
        return sum(int((a == value).sum()) for a in self.audio)

    def of_type(self, cls: type) -> list[Any]:
        return [m for m in self.controls if isinstance(m, cls)]

    def messages(self, type_: str | None = None) -> list[Any]:
        return [
            m.data if type_ else (m.type, m.data)
            for m in self.of_type(Message)
            if type_ is None or m.type == type_
        ]

    def outputs(self) -> list[list[Any]]:
        return [m.values for m in self.of_type(Outputs)]

    def end(self) -> Close | None:
        """Close as the gateway does and wait for the worker's answer."""
        self.ch.send_control(Close("test done"))
        self.pump_until(lambda: self.closed)
        peer = self.ch.peer_close
        self.ch.close(notify=False)
        return peer

    def wait_closed_by_worker(self) -> Close | None:
        assert self.pump_until(lambda: self.closed), "the worker did not end the session"
        peer = self.ch.peer_close
        self.ch.close(notify=False)
        return peer


def link(worker: Worker, args: list[Any] | None = None, **kw: Any) -> Link:
    """A Link to an in-process worker, with the token it has armed now."""
    return Link(worker.endpoint, worker.token, args, **kw)
