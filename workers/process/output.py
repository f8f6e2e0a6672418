"""What a handler returns, sent to the gateway: audio as int16 slots paced to run at most
``AUDIO_LEAD_S`` ahead of real time, video as I420 with its pts, the values of other outputs
as ``Outputs``, a ``CloseStream`` as the end of the stream; and the interruption of a reply
(``clear_audio``), which drops what was made before it and cuts the reply's pacing wait.

One :class:`Output` per session; it reaches its session only through :class:`SessionView`.
"""

from __future__ import annotations

import contextvars
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from workers.handlers import AdditionalOutputs, CloseStream
from workers.link import constants as C
from workers.link.channel import FrameChannel
from workers.link.shape import StreamShape
from workers.link.wire import (
    PIXFMT_I420,
    ClearAudio,
    Hello,
    Message,
    Outputs,
    OutputsKind,
    SlotHeader,
    WireError,
)
from workers.process.convert import PixelConverter, as_rgb24
from workers.process.loader import StreamOutputs

AUDIO_MAX_RATE = 192_000  # Hz: a handler's audio above this is refused as a mistake

# the clear_gen a clear_audio() call made, in the context (thread, or asyncio task) that made
# it: audio an emit() returns after clearing the queue itself is new, not stale
_OWN_CLEAR: contextvars.ContextVar[int | None] = contextvars.ContextVar("rtcpool_own_clear", default=None)


def made_under(gen: int) -> int:
    """The clear_gen an emit() result counts as made under: ``gen`` (taken before the call),
    or the one the call's own clear_audio() made."""
    own = _OWN_CLEAR.get()
    if own is not None:
        _OWN_CLEAR.set(None)
        return max(gen, own)
    return gen


class SessionView(Protocol):
    """What output needs of its session (workers/process/session.py)."""

    @property
    def channel(self) -> FrameChannel: ...
    @property
    def cond(self) -> threading.Condition: ...
    @property
    def hello(self) -> Hello: ...
    @property
    def shape(self) -> StreamShape: ...
    @property
    def stopping(self) -> bool: ...
    @property
    def args(self) -> list[Any]: ...
    @property
    def fed_back(self) -> set[int]: ...
    @property
    def sends_audio(self) -> bool: ...
    @property
    def sends_video(self) -> bool: ...
    @property
    def output_fps(self) -> float: ...

    def stop(self, reason: str) -> None: ...
    def report(self, exc: BaseException) -> None: ...


class Output:
    """A session's outgoing side. Audio is checked and sent under the session's lock, the one
    clear_audio() bumps ``clear_gen`` with."""

    def __init__(self, session: SessionView, layout: StreamOutputs) -> None:
        self.session = session
        self.layout = layout
        self.clear_gen = 0  # bumped by clear_audio(): audio made before it is stale
        self._video_due: float | None = None  # next frame time of server-generated video
        self.outputs_seq = 0
        self.audio_out_until = 0.0  # monotonic time up to which audio has been sent
        self.video_pts = 0
        self.video_t0 = time.monotonic()  # time 0 of the video this worker produces itself
        # its own converter: a handler thread sending video never waits for the reader's
        self.pixels = PixelConverter()
        # set by an async handler's loop while it runs: clear_audio() ends its pacing wait
        self.pace_cut: Callable[[], object] | None = None

    def emit_all(self, out: Any, header: SlotHeader | None, gen: int | None = None) -> bool:
        """Send a result, or every item of a generator result, paced. True: end the stream.
        ``gen``: the clear_gen the result was made under (None: no reply to interrupt)."""
        # the clear_gen each pacing wait is cut by: the one the audio was made under, taken
        # before it was made (CI-found: taken after sending, a clear_audio() in between was
        # missed and the wait ran its whole 11 s)
        mark = self.clear_gen if gen is None else gen
        if inspect.isgenerator(out):
            try:
                for item in out:
                    if self.session.stopping or self.emit(item, header, gen):
                        return True
                    delay = self.pace_delay(item)
                    if delay > 0 and self.pace_wait(delay, mark):
                        return True
                    if gen is None:
                        mark = self.clear_gen  # before the next item is made
            finally:
                out.close()
            return False
        if self.emit(out, header, gen):
            return True
        delay = self.pace_delay(out)
        return delay > 0 and self.pace_wait(delay, mark)

    def pace_wait(self, delay: float, gen: int) -> bool:
        """Wait ``delay`` s before producing more; a clear_audio() since ``gen`` cuts it short
        (the audio it paced was dropped, so the next reply may start at once). True: the
        session stops."""
        s = self.session
        deadline = time.monotonic() + delay
        with s.cond:
            while not s.stopping and self.clear_gen == gen:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                s.cond.wait(left)
            return s.stopping

    def emit(self, out: Any, header: SlotHeader | None, gen: int | None = None) -> bool:
        """Send one handler result. True when the handler asked to end the stream."""
        s = self.session
        if out is None:
            return False
        if isinstance(out, CloseStream):
            s.channel.send_control(Message("end_stream", {"reason": "closed_by_handler", "message": out.msg}))
            s.stop(out.msg)
            return True
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], CloseStream):
            # fastrtc's (frame, CloseStream(...)): the last frame (or audio) goes out first
            self.emit(out[0], header, gen)
            return self.emit(out[1], header, gen)
        if isinstance(out, AdditionalOutputs):
            self.send_outputs(list(out.args))
            return False
        if isinstance(out, tuple) and out and isinstance(out[-1], AdditionalOutputs):
            self.send_outputs(list(out[-1].args))
            out = out[0] if len(out) == 2 else (out[:-1] or None)
            if out is None:
                return False
        if self.layout.mapped:
            out = self._split_outputs(out)
            if out is None:
                return False
        if is_audio(out):
            if s.sends_audio:
                with s.cond:
                    # checked and sent under the lock clear_audio() bumps clear_gen with: audio
                    # made before an interruption never follows its ClearAudio to the gateway
                    if gen is None or gen == self.clear_gen:
                        self._send_audio(out)
            return False
        if s.sends_video:
            frame = as_rgb24(out)
            if header is not None:
                self._send_video(frame, header.pts, (header.time_base_num, header.time_base_den))
            else:
                # stamped when produced: a receiver plays frames out by their timestamps, and
                # a video_emit() or generator may well run below DEFAULT_OUTPUT_FPS
                pts = int((time.monotonic() - self.video_t0) * C.VIDEO_CLOCK_RATE)
                self.video_pts = max(pts, self.video_pts + 1)
                self._send_video(frame, self.video_pts)
        return False

    def _send_video(self, rgb: np.ndarray, pts: int, time_base: tuple[int, int] = (1, C.VIDEO_CLOCK_RATE)) -> bool:
        """An RGB frame into a slot as I420, converted in place (the gateway's encoder takes
        the planes as they are). False if it was dropped."""
        ch = self.session.channel
        height, width = rgb.shape[:2]
        if not height or not width:
            return False  # an empty picture: no encoder takes it
        slot = ch.reserve_video(height, width, PIXFMT_I420)
        if slot is None:
            return False
        try:
            self.pixels.to_i420(rgb, *ch.tx.i420(slot, height, width))
        except BaseException:
            ch.cancel_video(slot)
            raise
        return ch.commit_video(slot, height, width, PIXFMT_I420, pts, time_base)

    def _send_audio(self, out: tuple[Any, ...]) -> None:
        rate, samples, layout = as_audio(out)
        channels = 2 if layout == "stereo" else 1
        step = (C.AUDIO_SLOT_SAMPLES * C.AUDIO_MAX_CHANNELS // channels) * channels
        for i in range(0, samples.shape[1], step):
            self.session.channel.send_audio(samples[:, i : i + step], rate, layout)
        now = time.monotonic()
        self.audio_out_until = max(now, self.audio_out_until) + samples.shape[1] / channels / rate

    def pace_delay(self, out: Any) -> float:
        """Seconds to wait before producing more: audio may run C.AUDIO_LEAD_S ahead of real
        time (the gateway plays it out), server-generated video goes at ``output_fps``
        (DEFAULT_OUTPUT_FPS unless the handler says)."""
        if is_audio(out) or (isinstance(out, tuple) and out and is_audio(out[0])):
            return self.audio_out_until - time.monotonic() - C.AUDIO_LEAD_S
        if not self.session.shape.client_sends and isinstance(out, np.ndarray):
            # a schedule of frame times, so the generator's own time per frame does not slow
            # the video down; a generator that falls behind goes on at once, without a burst
            now = time.monotonic()
            period = 1.0 / self.session.output_fps
            due = now if self._video_due is None else self._video_due
            self._video_due = max(due + period, now)
            return self._video_due - now
        return 0.0

    def clear_audio(self) -> None:
        """An interrupted reply: the client's queued audio goes, and so does any the handler
        made before now (clear_gen), and the reply's pacing wait ends."""
        s = self.session
        with s.cond:
            self.clear_gen += 1
            _OWN_CLEAR.set(self.clear_gen)
            self.audio_out_until = time.monotonic()
            s.cond.notify_all()
        s.channel.send_control(ClearAudio())
        cut = self.pace_cut
        if cut is not None:
            cut()

    def _split_outputs(self, out: Any) -> Any:
        """A result mapped onto the stream's outputs, one value each, as Gradio maps an
        event's return value. The values of the other components go to the page; those of
        outputs that are also inputs become the next call's inputs. Returns the media (the
        WebRTC component's value), None when it is not an output."""
        layout = self.layout
        if layout.count == 1:
            values: tuple[Any, ...] | list[Any] = (out,)
        elif isinstance(out, (tuple, list)) and len(out) == layout.count:
            values = out
        else:
            got = f"{len(out)} values" if isinstance(out, (tuple, list)) else type(out).__name__
            raise ValueError(
                f"the stream has {layout.count} outputs, so the function must return "
                f"{layout.count} values; it returned {got}"
            )
        if layout.feedback:
            s = self.session
            with s.cond:
                for out_pos, arg_pos in layout.feedback.items():
                    if arg_pos < len(s.args):
                        s.args[arg_pos] = values[out_pos]
                        s.fed_back.add(arg_pos)
        others = [v for i, v in enumerate(values) if i != layout.media]
        if others:
            self.send_outputs(others, OutputsKind.STREAM)
        return None if layout.media is None else values[layout.media]

    def send_outputs(self, values: list[Any], kind: OutputsKind = OutputsKind.ADDITIONAL) -> None:
        self.outputs_seq += 1
        try:
            self.session.channel.send_control(Outputs(self.outputs_seq, values, kind))
        except (TypeError, WireError) as exc:
            self.session.report(exc)


def is_audio(out: Any) -> bool:
    return isinstance(out, tuple) and len(out) in (2, 3) and isinstance(out[0], (int, np.integer)) and not isinstance(out[0], bool)


def as_audio(out: tuple[Any, ...]) -> tuple[int, np.ndarray, str]:
    """A handler's ``(sr, array)`` or ``(sr, array, layout)`` as int16 (1, samples*channels)
    interleaved, the layout av and aiortc use for packed s16."""
    rate = int(out[0])
    layout = out[2] if len(out) == 3 else "mono"
    if layout not in ("mono", "stereo"):
        raise ValueError(f"audio layout must be 'mono' or 'stereo', got {layout!r}")
    a = np.asarray(out[1])
    if a.dtype != np.int16:
        if np.issubdtype(a.dtype, np.floating):
            a = np.clip(a, -1.0, 1.0) * 32767.0
        a = a.astype(np.int16)
    if a.ndim == 1:
        a = a[None, :]
    elif a.ndim == 2 and layout == "stereo" and a.shape[0] == 2:
        a = a.T.reshape(1, -1)  # planar (2, N) -> interleaved
    elif a.ndim != 2 or a.shape[0] != 1:
        if layout == "mono" and a.ndim == 2 and a.shape[1] == 1:
            a = a.T
        else:
            raise ValueError(f"audio must be shaped (1, N) (or (2, N) stereo), got {a.shape}")
    if rate <= 0 or rate > AUDIO_MAX_RATE:
        raise ValueError(f"audio sample rate {rate} is out of range")
    return rate, np.ascontiguousarray(a), layout


__all__ = ["Output", "SessionView", "as_audio", "is_audio", "made_under"]
