"""The loops that call a session's handler, one driver per kind of handler:

- a frame function (:class:`VideoFunctionDriver`): on the newest frame, or once per ``stream_every``;
- an audio function (:class:`AudioFunctionDriver`): on each frame, or on chunks of ``stream_every``;
- a generator (:class:`GeneratorDriver`): server-to-client, paced here;
- a StreamHandler (:class:`StreamHandlerDriver`): receive and emit on threads of their own,
  and video_receive / video_emit on two more for an AudioVideoStreamHandler;
- an AsyncStreamHandler (:class:`AsyncStreamHandlerDriver`): the same directions as tasks
  of one asyncio loop.

The sync and async twins share their steps: one timed input call (``_timed``), one emit call
and what follows it (``_emit_returned``), one schedule for fps-paced output (``Schedule``).
A driver's loops run on the session's handler threads (WorkerSession.run); a loop that raises
ends the session, reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np

from workers.handlers import AsyncStreamHandler, StreamHandlerBase
from workers.link import constants as C
from workers.link.shape import Modality
from workers.link.wire import Message
from workers.process.output import made_under
from workers.process.session import POLL_INTERVAL_S, WorkerSession

log = logging.getLogger("rtcpool.worker")

EMIT_IDLE_S = 0.005  # a StreamHandler's emit() returned None: ask again after this long
# stream_every / VideoStreamHandler(fps=): the frame waiting at the worker since the last call
# is given back for a newer one, unless it surely came less than this long ago (the last call
# released its own frame, and so let this one be sent, less than this long ago). At 30 fps
# (period 33 ms) the gateway has no newer frame yet: dropping it would wait a whole frame and
# halve the rate; at 5 fps it may have waited 200 ms. ~1.5 frames of a 30 fps camera.
STALE_VIDEO_S = 0.05


class Schedule:
    """Calls at most once per ``period`` s, on a fixed schedule so the rate is one call per
    period on average: a call that overruns its period is followed at once, never by a
    burst to catch up."""

    __slots__ = ("period", "due")

    def __init__(self, period: float, start: float | None = None) -> None:
        self.period = period
        self.due = start  # when the next call may start; None: at once

    def next_after(self, now: float) -> float:
        """The next call's time, for a call that started (or ended) at ``now``."""
        self.due = now + self.period if self.due is None else max(self.due + self.period, now)
        return self.due


class Driver:
    """The loops that call one session's handler; ``loops()`` are its threads' bodies."""

    def __init__(self, session: WorkerSession) -> None:
        self.session = session
        self.output = session.output
        self.handler: Any = session.handler

    def loops(self) -> list[Callable[[], None]]:
        raise NotImplementedError

    def _timed(self, call: Callable[..., Any], *args: Any) -> Any:
        """One call that takes an input, its duration recorded (CallTimes says which)."""
        t0 = time.perf_counter()
        try:
            return call(*args)
        finally:
            self.session.call_times.record(time.perf_counter() - t0)

    async def _timed_async(self, call: Callable[..., Any], *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await _maybe_await(call(*args))
        finally:
            self.session.call_times.record(time.perf_counter() - t0)

    def _emit_returned(self) -> None:
        """An emit() has returned (or raised): held inputs are held no longer."""
        if not self.session.emit_returned:
            self.session.release_held_args()


def driver_for(session: WorkerSession) -> Driver:
    """The driver of the session's kind of handler."""
    h = session.handler
    if isinstance(h, AsyncStreamHandler):
        return AsyncStreamHandlerDriver(session)
    if isinstance(h, StreamHandlerBase):
        return StreamHandlerDriver(session)
    if not session.shape.client_sends:
        return GeneratorDriver(session)
    if session.shape.modality == Modality.AUDIO:
        return AudioFunctionDriver(session)
    return VideoFunctionDriver(session)


class VideoFunctionDriver(Driver):
    def loops(self) -> list[Callable[[], None]]:
        return [self._video_function_loop]

    def _video_function_loop(self) -> None:
        """The function on every frame it can keep up with (latest-frame-wins); with
        ``stream_every``, on the newest frame once per period. The output track then holds
        the last processed frame until the next (the browser keeps showing it), rather than
        the gateway encoding the same picture again for every input frame."""
        s = self.session
        fn = self.handler
        every = s.stream_every
        schedule = Schedule(every) if every is not None else None
        taken_at = 0.0  # when the last call's frame was taken (and its slot given back)
        while True:
            if schedule is not None and schedule.due is not None:
                wait = schedule.due - time.monotonic()
                if wait > 0 and s.stop_event.wait(wait):
                    return
                if time.monotonic() - taken_at >= STALE_VIDEO_S:
                    self._drop_waiting_video()
            got = s.next_input(audio=False, video=True)
            if got is None:
                return
            if schedule is not None:
                taken_at = time.monotonic()
                schedule.next_after(taken_at)
            header, frame = got
            try:
                out = self._timed(fn, frame, *s.args)
                if self.output.emit_all(out, header):
                    return
            except Exception as exc:
                s.report(exc)

    def _drop_waiting_video(self) -> None:
        """Give back the frame that has waited here since the last call (the gateway sent it
        when that call took its frame, up to a period ago), so the gateway sends its newest."""
        ch = self.session.channel
        if ch.take_video() is not None:
            ch.release_video()


class AudioFunctionDriver(Driver):
    def loops(self) -> list[Callable[[], None]]:
        return [self._audio_function_loop]

    def _audio_function_loop(self) -> None:
        """The function on each audio frame as it comes; with ``stream_every``, on chunks of
        exactly ``stream_every`` seconds, as Gradio's microphone stream sends them."""
        every = self.session.stream_every
        chunk: np.ndarray | None = None
        filled = 0
        while True:
            got = self.session.next_input(audio=True, video=False)
            if got is None:
                return
            if every is None:
                if self._call(got):
                    return
                continue
            rate, samples = got
            n = samples.shape[1]
            taken = 0
            while taken < n:
                if chunk is None:
                    # a new array per chunk, not one reused: the function may keep it (the
                    # guide's transcriber appends each chunk to its gr.State)
                    chunk = np.empty((samples.shape[0], round(every * rate)), samples.dtype)
                    filled = 0
                k = min(chunk.shape[1] - filled, n - taken)
                chunk[:, filled : filled + k] = samples[:, taken : taken + k]
                filled += k
                taken += k
                if filled == chunk.shape[1]:
                    full, chunk = chunk, None
                    if self._call((rate, full)):
                        return

    def _call(self, audio: tuple[int, np.ndarray]) -> bool:
        """One call of the audio function and its output. True: the stream ends."""
        try:
            out = self._timed(self.handler, audio, *self.session.args)
            return self.output.emit_all(out, None)
        except Exception as exc:
            self.session.report(exc)
            return False


class GeneratorDriver(Driver):
    def loops(self) -> list[Callable[[], None]]:
        return [self._generator_loop]

    def _generator_loop(self) -> None:
        """Server-to-client: the function is a generator of frames or audio, paced here.
        With other inputs, it starts with their current values: the page sends them right
        after connecting; a client that sends none gets the initial values after
        ARGS_WAIT_TIMEOUT_S."""
        s = self.session
        if s.hello.args and not s.hello.args_set:
            s.args_arrived.wait(C.ARGS_WAIT_TIMEOUT_S)
            if s.stopping:
                return
        out = self.handler(*s.args)
        if inspect.isasyncgen(out):
            asyncio.run(self._drain_async_gen(out))
        elif self.output.emit_all(out, None):
            return
        if not s.stopping:
            s.channel.send_control(Message("end_stream", {"reason": "stream_finished"}))
            s.stop("generator finished")

    async def _drain_async_gen(self, gen: Any) -> None:
        try:
            async for item in gen:
                if self.session.stopping or self.output.emit(item, None):
                    return
                delay = self.output.pace_delay(item)
                if delay > 0:
                    await asyncio.sleep(delay)
        finally:
            await gen.aclose()


class StreamHandlerDriver(Driver):
    """A StreamHandler: receive() and emit() on threads of their own."""

    def loops(self) -> list[Callable[[], None]]:
        s, h = self.session, self.handler
        loops = [self._receive_loop, self._emit_loop]
        # an AudioVideoStreamHandler's video goes on threads of its own, as fastrtc runs
        # each direction of each track on its own: an emit that waits for its next
        # item (the seeds' queue.get()) must not hold up the other kind of media
        if s.takes_video and callable(getattr(h, "video_receive", None)):
            loops.append(self._video_receive_loop)
        if s.sends_video and callable(getattr(h, "video_emit", None)):
            loops.append(self._video_emit_loop)
        return loops

    def _receive_loop(self) -> None:
        """A StreamHandler's audio, oldest first, into receive()."""
        hello = self.session.hello
        if hello.shape.takes_audio:
            self._input_loop(self.handler.receive, audio=True)

    def _video_receive_loop(self) -> None:
        """An AudioVideoStreamHandler's newest video frame into video_receive()."""
        self._input_loop(self.handler.video_receive, audio=False)

    def _input_loop(self, call: Callable[[Any], Any], audio: bool) -> None:
        """Each input into ``call``: audio as (rate, samples), video as the frame alone. An
        exception in the handler is reported and the session goes on."""
        s = self.session
        while True:
            got = s.next_input(audio=audio, video=not audio)
            if got is None:
                return
            try:
                self._timed(call, got if audio else got[1])
            except Exception as exc:
                s.report(exc)

    def _emit_loop(self) -> None:
        s, h = self.session, self.handler
        try:
            if not s.resumed:  # a resumed handler started up on its first link
                h.start_up()
        finally:
            s.started_up.set()
        emit = h.emit
        while not s.stopping:
            gen = self.output.clear_gen
            try:
                out = emit()
            except Exception as exc:
                s.report(exc)
                out = None
            finally:
                self._emit_returned()
            if s.stopping:
                return  # (a call that outlived its session: its result has nowhere to go)
            if out is None:
                s.stop_event.wait(EMIT_IDLE_S)
            elif self.output.emit_all(out, None, made_under(gen)):
                return

    def _video_emit_loop(self) -> None:
        """video_emit() at most ``fps`` times a second (the handler's; DEFAULT_OUTPUT_FPS), as
        fastrtc's output track asks for it: a handler may return its latest picture each call."""
        s = self.session
        video_emit = self.handler.video_emit
        while not s.started_up.wait(POLL_INTERVAL_S):  # start_up() may set up its state
            if s.stopping:
                return
        schedule = Schedule(1.0 / s.output_fps, time.monotonic())
        while not s.stopping:
            try:
                out = video_emit()
            except Exception as exc:
                s.report(exc)
                out = None
            if out is None:
                s.stop_event.wait(EMIT_IDLE_S)
                continue
            if self.output.emit_all(out, None):
                return
            now = time.monotonic()
            due = schedule.next_after(now)
            if due > now and s.stop_event.wait(due - now):
                return


class AsyncStreamHandlerDriver(Driver):
    """An AsyncStreamHandler: one thread running one asyncio loop, a task per direction."""

    def loops(self) -> list[Callable[[], None]]:
        return [self._async_handler_loop]

    def _async_handler_loop(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        s, h, output = self.session, self.handler, self.output
        loop = asyncio.get_running_loop()
        h._loop = loop
        wake = asyncio.Event()
        pace_cut = asyncio.Event()  # clear_audio(): the reply's pacing wait ends at once
        s.async_wake = lambda: loop.call_soon_threadsafe(wake.set)
        output.pace_cut = lambda: loop.call_soon_threadsafe(pace_cut.set)
        if not s.resumed:  # a resumed handler started up on its first link
            started = h.start_up()
            if inspect.isawaitable(started):
                await started

        # Each direction of each kind of media is a task of its own, as fastrtc runs each
        # track: a video_receive() or video_emit() that awaits (a model server, a queue)
        # holds up neither the audio nor the other video direction. Several tasks wait on
        # ``wake``: each checks its own input before it clears and waits, so none misses one.
        async def receive() -> None:
            while not s.stopping:
                with s.cond:
                    item = s.audio_in.popleft() if s.audio_in else None
                    if item is not None:
                        s.audio_in_samples -= item[1].shape[-1]
                # an exception in the handler is reported and the session goes on, as for a
                # sync handler
                if item is not None:
                    try:
                        await self._timed_async(h.receive, item)
                    except Exception as exc:
                        s.report(exc)
                    continue
                wake.clear()
                await wake.wait()

        async def video_receive() -> None:
            while not s.stopping:
                if not s.channel.has_video():
                    wake.clear()
                    await wake.wait()
                    continue
                # the newest frame is there: this takes it without waiting
                got = s.next_input(audio=False, video=True)
                if got is None:
                    continue
                try:
                    await self._timed_async(h.video_receive, got[1])
                except Exception as exc:
                    s.report(exc)

        async def video_emit() -> None:
            # at most fps frames a second, on a schedule (as the sync driver's)
            schedule = Schedule(1.0 / s.output_fps, loop.time())
            while not s.stopping:
                try:
                    out = await _maybe_await(h.video_emit())
                except Exception as exc:
                    s.report(exc)
                    out = None
                if s.stopping:
                    return
                if out is None:
                    await asyncio.sleep(EMIT_IDLE_S)
                    continue
                # one result per call (a frame, AdditionalOutputs, CloseStream): emit, not
                # emit_all, whose pacing waits would block this loop's thread
                if output.emit(out, None):
                    return
                now = loop.time()
                await asyncio.sleep(schedule.next_after(now) - now)

        async def emit() -> None:
            while not s.stopping:
                gen = output.clear_gen
                try:
                    out = await _maybe_await(h.emit())
                except Exception as exc:
                    s.report(exc)
                    out = None
                finally:
                    self._emit_returned()
                if out is None:
                    await asyncio.sleep(EMIT_IDLE_S)
                    continue
                made = made_under(gen)
                if output.emit(out, None, made):
                    return
                delay = output.pace_delay(out)
                # a clear_audio() since the call began has dropped what this wait would pace;
                # one after this check sets pace_cut on the loop, after the clear() below
                if delay > 0 and output.clear_gen == made:
                    pace_cut.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(pace_cut.wait(), delay)

        async def watch_stop() -> None:
            while not s.stopping:
                wake.clear()
                await wake.wait()

        coros: list[Coroutine[Any, Any, None]] = [receive(), emit(), watch_stop()]
        # only tasks that run until the session stops: the first task to end ends the session
        if s.takes_video and callable(getattr(h, "video_receive", None)):
            coros.append(video_receive())
        if s.sends_video and callable(getattr(h, "video_emit", None)):
            coros.append(video_emit())
        tasks = [asyncio.create_task(c) for c in coros]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            try:
                # before the tasks are cancelled, so the handler can end its own work first;
                # not while it is held for a resume (its link was lost, docs/failover.md)
                if not s.holding:
                    await _maybe_await(h.shutdown())
            except Exception:
                log.exception("handler shutdown raised")
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            s.async_wake = None
            output.pace_cut = None


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


__all__ = [
    "STALE_VIDEO_S",
    "AsyncStreamHandlerDriver",
    "AudioFunctionDriver",
    "Driver",
    "GeneratorDriver",
    "Schedule",
    "StreamHandlerDriver",
    "VideoFunctionDriver",
    "driver_for",
]
