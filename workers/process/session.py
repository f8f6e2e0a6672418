"""One session in a worker: the worker's end of the link (a FrameChannel), the inputs as
they come (audio oldest first, video latest-frame-wins, the page's other inputs as ``Args``),
the session's copy of the handler and its lifecycle, up to the one close that answers the
gateway.

The link reader runs on the worker's serve thread (:meth:`WorkerSession.run`); the handler's code
runs on the threads of its driver (workers/process/drivers.py); what the handler returns goes
out through the session's :class:`~workers.process.output.Output`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import select
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np

from workers.context import Context, WebSocketSender, reset_context, set_context
from workers.handlers import (
    WEBRTC_VALUE,
    AsyncStreamHandler,
    StreamHandlerBase,
    VideoStreamHandler,
    _SessionHooks,
)
from workers.link import constants as C
from workers.link.channel import FrameChannel
from workers.link.connect import geometry_from_hello
from workers.link.shape import Transport
from workers.link.shm import LocalSegment, Segment
from workers.link.wire import (
    CLOSE_MEMORY_LIMIT,
    HANDLER_STATS_PERIOD_S,
    PIXFMT_I420,
    WEBSOCKET_SEND,
    Args,
    Control,
    Error,
    Hello,
    Message,
    Ready,
    SlotHeader,
)
from workers.process.call_times import CallTimes
from workers.process.convert import PixelConverter
from workers.process.handler_threads import join_handler_threads
from workers.process.loader import HandlerSpec
from workers.process.node import node_id
from workers.process.output import Output
from workers.process.snapshots import Snapshots, restore

log = logging.getLogger("rtcpool.worker")

POLL_INTERVAL_S = 0.1  # the link reader wakes this often to notice shutdown and flush
HANDLER_STOP_TIMEOUT_S = 1.0  # handler threads get this long to return once a session ends
ERROR_REPEAT_S = 1.0  # the same handler error is sent to the client at most this often
ARGS_HOLD_MAX_S = 2.0  # inputs pushed before a handler's first emit() returns are held at most this long
MAX_PARKED_THREADS = 8  # parked handler threads a worker leaves behind before it retires
WEBSOCKET_CLIENTS = (Transport.WEBSOCKET, Transport.TELEPHONE)  # clients a handler can send text to


class WorkerSession:
    """One session in a worker. The link reader runs on the serve thread; the user's code runs
    on handler threads (one for a function or generator; receive + emit for a StreamHandler;
    one asyncio loop for an AsyncStreamHandler).

    ``handler``: the worker's own (a function, a generator function or a StreamHandler, of
    which the session takes a copy); ``spec``: the event's, for its stream_every and outputs."""

    def __init__(
        self,
        handler: Any,
        spec: HandlerSpec,
        conn: socket.socket,
        hello: Hello,
        up: Segment,
        down: Segment,
        held: HeldSession | None = None,
    ) -> None:
        """``held``: this session's handler kept from its lost link (a resume, docs/failover.md):
        taken as it is, no copy, no start_up(), its inputs kept unless the hello sets them."""
        self.hello = hello
        self.args: list[Any] = list(held.args if held is not None and not hello.args_set else hello.args)
        self.resumed = held is not None
        # the link's peer vanished (no Close): the handler is kept for a resume, if the hello
        # asked for one (resume_grace_s), rather than shut down
        self.link_lost = False
        self.cond = threading.Condition()
        self.stop_event = threading.Event()
        self.args_arrived = threading.Event()
        # Inputs the page pushes as it connects are held (latest_args only, args_set clear)
        # until the handler asks for them (wait_for_args*), its first emit() returns, or
        # ARGS_HOLD_MAX_S pass: the seed's AsyncStreamHandler starts its work only when its
        # first emit() finds args_set clear, as it always does under gradio_webrtc, whose
        # first emit() runs before any input arrives.
        self.emit_returned = False
        self.args_requested = False
        self.args_held = False
        self._hold_timer: threading.Timer | None = None
        self.stopping = False
        self.stop_reason = ""
        self.stuck = False  # a handler thread still runs (uses CPU) after the session ended
        self.parked: list[threading.Thread] = []  # handler threads blocked in the handler at the end
        self.retire = False  # the worker exits after this session (see run())
        self.over_memory = False  # it passed hello.memory_limit_mb (see _stats_loop)
        self.shape = hello.shape
        self.sends_video = self.shape.sends_video
        self.sends_audio = self.shape.sends_audio
        self.audio_in: deque[tuple[int, np.ndarray]] = deque()
        self.audio_in_samples = 0
        self.audio_in_dropped = 0
        # one per direction (the other is the output's), so a handler thread sending video
        # never waits for the reader's
        self.pixels_in = PixelConverter()
        self.call_times = CallTimes()
        self._call_times_sent = 0  # calls counted in the last HandlerStats sent
        self._last_error = ""
        self._last_error_at = 0.0
        self._errors_held = 0
        # set by an async handler's loop while it runs: wakes its tasks for new input or a stop
        self.async_wake: Callable[[], object] | None = None
        self.stream_every = spec.stream_every  # seconds between a function's inputs
        self.output_fps: float = C.DEFAULT_OUTPUT_FPS  # pace of the video the worker makes itself
        # positions in ``args`` of inputs that are also outputs and that the handler has
        # returned a value for: from then on the worker's value is the input (_on_control)
        self.fed_back: set[int] = set()
        self.takes_video = self.shape.takes_video
        self.started_up = threading.Event()  # a StreamHandler's start_up() has returned
        self.output = Output(self, spec.outputs)
        # the app's own object (a function, a generator function or a StreamHandler): typed as
        # what it is, anything; the drivers call what its kind has
        if isinstance(handler, VideoStreamHandler):
            # fastrtc's wrapper is its function, at most fps calls (or output frames) a second
            self.stream_every = max(self.stream_every or 0.0, handler.period_s)
            self.output_fps = handler.fps
            handler = handler.callable
        if held is not None and held.handler is not None:
            self.handler: Any = held.handler
        else:
            self.handler = handler.copy() if isinstance(handler, StreamHandlerBase) else handler
        # a phone sends no inputs (nothing to ask for, nothing to wait for); a WebSocket client
        # or a phone can be sent text from the handler (get_current_context().websocket)
        transport = hello.transport
        self.phone_mode = transport == Transport.TELEPHONE
        to_socket = transport in WEBSOCKET_CLIENTS
        sender = WebSocketSender(self._send_websocket) if to_socket else None
        self.context = Context(webrtc_id=hello.session_id, websocket=sender)
        if self.phone_mode:
            self.args_arrived.set()
        self.in_rate, self.in_layout = C.AUDIO_DEFAULT_RATE, "mono"
        self._in_resampler: tuple[tuple[int, str], Any] | None = None  # audio that comes at another rate
        if isinstance(self.handler, StreamHandlerBase):
            self.handler._hooks = _Hooks(self)
            self.handler.phone_mode = self.phone_mode
            # (a handler whose __init__ never reached the base's has no fps: the default)
            self.output_fps = getattr(self.handler, "fps", C.DEFAULT_OUTPUT_FPS)
            self.in_rate, self.in_layout = self.handler.input_sample_rate, self.handler.expected_layout
            if (hello.args_set or not hello.args or self.phone_mode) and not self.resumed:
                # a stream without other inputs, or a phone (it sends none): nothing to wait for
                self.handler.set_args(self.args)
        self.channel = FrameChannel(
            conn,
            tx=down,
            rx=up,
            on_video=self._wake,
            on_audio=self._on_audio,
            on_control=self._on_control,
            on_closed=self._on_closed,
        )
        self.snapshots = Snapshots(self.handler, self.channel.send_control, hello.snapshot_interval_s, hello.max_snapshot_bytes)
        self.restored = False
        if hello.state is not None and not self.resumed:
            # a worker that takes over a session: the handler's saved state, before its
            # first frame (and before start_up, which runs on the handler's thread)
            try:
                self.restored = restore(self.handler, hello.state)
            except Exception as exc:  # the session goes on from a fresh copy, the client told
                self.report(exc)

    @classmethod
    def open(cls, handler: Any, spec: HandlerSpec, conn: socket.socket, hello: Hello, held: HeldSession | None = None) -> WorkerSession:
        """A session on ``conn``, whose ``hello`` the worker has read and checked (its token);
        ``held``: the handler its lost link left, when the hello resumes that session."""
        if conn.type == socket.SOCK_STREAM:
            geometry = geometry_from_hello(hello.geometry)
            up: Segment = LocalSegment(geometry)
            down: Segment = LocalSegment(geometry)
        else:
            up = Segment.attach(hello.up_segment)
            try:
                down = Segment.attach(hello.down_segment)
            except Exception:
                up.close()
                raise
        session = cls(handler, spec, conn, hello, up, down, held)
        takes_audio = session.shape.takes_audio
        session.channel.send_control(
            Ready(
                pid=os.getpid(),
                node_id=node_id(),
                audio_in_rate=session.in_rate if takes_audio else 0,
                audio_in_layout=session.in_layout,
                audio_out_rate=session.handler.output_sample_rate if isinstance(session.handler, StreamHandlerBase) else 0,
            )
        )
        return session

    # --- link side (serve thread) ------------------------------------------------------------

    def run(self, loops: list[Callable[[], None]], parked_threads: list[threading.Thread]) -> None:
        """Serve the session: its handler ``loops`` (its driver's) each on a thread, the link
        read here, until either side ends it. ``parked_threads``: the worker's, left blocked in
        handlers by past sessions; updated in place with this session's."""
        threads = [threading.Thread(target=self._guard(fn), name=f"rtcpool-{fn.__name__}", daemon=True) for fn in loops]
        for t in threads:
            t.start()
        # a thread of its own, on a timer: the link loop below wakes for every frame, and a
        # clock check there would be work on the per-frame path
        stats = threading.Thread(target=self._stats_loop, name="rtcpool-stats", daemon=True)
        stats.start()
        ch = self.channel
        fd = ch.sock.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        want_out = False
        poll_ms = int(POLL_INTERVAL_S * 1000)
        # this (serve) thread calls the handler's shutdown(); the next session sets its own
        context_token = set_context(self.context)
        try:
            while not ch.closed and not self.stopping:
                poller.poll(poll_ms)
                ch.pump()
                if ch.has_backlog != want_out:
                    want_out = ch.has_backlog
                    poller.modify(fd, select.POLLIN | (select.POLLOUT if want_out else 0))
                if want_out:
                    ch.flush()
        finally:
            self.stop(ch.close_reason or "session ended")
            if isinstance(self.handler, StreamHandlerBase) and not isinstance(self.handler, AsyncStreamHandler) and not self.holding:
                # before the join, so a handler can unblock its own threads; an async
                # handler's shutdown runs on its loop (drivers.AsyncStreamHandlerDriver)
                try:
                    self.handler.shutdown()
                except Exception:
                    log.exception("handler shutdown raised")
            # only a StreamHandler's threads may be left parked: each session has its own
            # copy, whereas a plain function blocked mid-call is shared with the next session
            can_park = isinstance(self.handler, StreamHandlerBase)
            self.parked, self.stuck = join_handler_threads(threads, HANDLER_STOP_TIMEOUT_S, can_park)
            parked_threads[:] = [t for t in parked_threads if t.is_alive()] + self.parked
            if self.parked:
                log.warning(
                    "%d handler thread(s) still blocked in the handler after the session; left parked (%d in this worker)",
                    len(self.parked), len(parked_threads),
                )
            # a thread still running would compete with the next session; parked ones only
            # hold memory, up to MAX_PARKED_THREADS
            self.retire = self.stuck or len(parked_threads) > MAX_PARKED_THREADS
            stats.join(HANDLER_STOP_TIMEOUT_S)  # it waits on stop_event: it has ended already
            # answers the gateway's Close (or tells it we are done), then unmaps both segments;
            # the last totals go just ahead of the Close, so the gateway's count of an ended
            # session has every call its handler made (none when nothing changed)
            report = self.call_times.report()
            last = report if sum(report.counts) != self._call_times_sent else None
            try:
                cause = CLOSE_MEMORY_LIMIT if self.over_memory else ""
                ch.close(self.stop_reason, notify=True, retire=self.retire or self.over_memory, last=last, cause=cause)
            finally:
                reset_context(context_token)

    def _stats_loop(self) -> None:
        """Report the handler's call durations every HANDLER_STATS_PERIOD_S while they change,
        and its snapshot every snapshot interval (workers/process/snapshots.py)."""
        snapshots = self.snapshots
        period = min(HANDLER_STATS_PERIOD_S, snapshots.interval_s) if snapshots.enabled else HANDLER_STATS_PERIOD_S
        stats_due = time.monotonic() + HANDLER_STATS_PERIOD_S
        limit_mb = self.hello.memory_limit_mb
        while not self.stop_event.wait(period):
            now = time.monotonic()
            if now >= stats_due:
                stats_due = now + HANDLER_STATS_PERIOD_S
                self._send_call_times()
                if limit_mb and rss_mb() > limit_mb:
                    self._over_memory(limit_mb)
                    return
            snapshots.tick(now)

    def _over_memory(self, limit_mb: int) -> None:
        """Past the pool's memory limit: the state is saved, the session handed to a fresh
        worker by the media process (Close.cause), and this process exits (retire)."""
        log.warning("worker RSS %d MB is past the pool's limit of %d MB: ending the session for a fresh worker", rss_mb(), limit_mb)
        self.snapshots.take()
        self.over_memory = True
        self.stop(f"worker memory past {limit_mb} MB")

    def _send_call_times(self) -> None:
        """Send the totals, unless no call was made since the last report."""
        report = self.call_times.report()
        count = sum(report.counts)
        if count == self._call_times_sent or self.channel.closed:
            return
        self._call_times_sent = count  # (run() reads it once this thread has ended)
        try:
            self.channel.send_control(report)
        except Exception:
            pass  # only metrics: a failed link ends the session by its own path

    def stop(self, reason: str) -> None:
        with self.cond:
            if not self.stopping:
                self.stopping = True
                self.stop_reason = reason
            self.cond.notify_all()
        self.stop_event.set()
        self.args_arrived.set()
        if isinstance(self.handler, StreamHandlerBase):
            self.handler.args_set.set()  # a wait_for_args*() in progress returns now
        timer = self._hold_timer
        if timer is not None:
            timer.cancel()
        self._wake_async()

    def _wake(self) -> None:
        with self.cond:
            self.cond.notify_all()
        self._wake_async()

    def _wake_async(self) -> None:
        wake = self.async_wake
        if wake is not None:
            wake()

    def _on_audio(self, header: SlotHeader, samples: np.ndarray) -> None:
        rate = header.sample_rate
        if rate != self.in_rate or (header.layout == 2) != (self.in_layout == "stereo"):
            # a phone's 8 kHz mono (runtime/media/ws_session.py sends it as it came): resampled here,
            # in the worker, not on the gateway's loop (~0.15 ms a 20 ms message there)
            samples, rate = self._resample_in(header, samples), self.in_rate
            if not samples.shape[-1]:
                return
        with self.cond:
            self.audio_in.append((rate, samples))
            self.audio_in_samples += samples.shape[-1]
            limit = int(C.AUDIO_RING_S * header.sample_rate) * (2 if header.layout == 2 else 1)
            dropped = 0
            while self.audio_in_samples > limit and len(self.audio_in) > 1:
                _, old = self.audio_in.popleft()
                self.audio_in_samples -= old.shape[-1]
                dropped += 1
            self.cond.notify_all()
        if dropped:
            if self.audio_in_dropped == 0:
                log.warning("handler falls behind its audio: dropping the oldest (ring of %.0f s)", C.AUDIO_RING_S)
                self.channel.send_control(Message("warning", f"the handler fell {C.AUDIO_RING_S:.0f} s behind its audio; the oldest audio is dropped"))
            self.audio_in_dropped += dropped
        self._wake_async()

    def _resample_in(self, header: SlotHeader, samples: np.ndarray) -> np.ndarray:
        import av

        layout = "stereo" if header.layout == 2 else "mono"
        key = (header.sample_rate, layout)
        if self._in_resampler is None or self._in_resampler[0] != key:
            self._in_resampler = (key, av.AudioResampler(format="s16", layout=self.in_layout, rate=self.in_rate))
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="s16", layout=layout)
        frame.sample_rate = header.sample_rate
        out = [f.to_ndarray() for f in self._in_resampler[1].resample(frame)]
        return np.concatenate(out, axis=1) if out else np.zeros((1, 0), dtype=np.int16)

    def _on_control(self, msg: Control) -> None:
        if isinstance(msg, Args):
            args = list(msg.args)
            with self.cond:
                # An input that is also an output is fed back here, without a round trip
                # through the page, and the page gets the value too. Its value in a push from
                # the page is then at best the one fed back and at worst an older one (the
                # page sends all inputs when any of them changes, and it may not have applied
                # the newest output yet): once the handler has returned a value for it, the
                # worker's own value wins, so a page update can never roll the state back.
                for pos in self.fed_back:
                    if pos < len(args) and pos < len(self.args):
                        args[pos] = self.args[pos]
                self.args = args
            self.args_arrived.set()
            h = self.handler
            if isinstance(h, StreamHandlerBase):
                with self.cond:
                    hold = not (self.emit_returned or self.args_requested or self.stopping)
                    if hold:
                        h.latest_args = [WEBRTC_VALUE, *self.args]
                        self.args_held = True
                        if self._hold_timer is None:
                            # a handler that waits on args_set itself gets them all the same
                            self._hold_timer = threading.Timer(ARGS_HOLD_MAX_S, self.release_held_args)
                            self._hold_timer.daemon = True
                            self._hold_timer.start()
                if not hold:
                    h.set_args(self.args)

    def _on_closed(self, reason: str) -> None:
        # no Close came first: the media process died (or its host went away), not a hang-up
        self.link_lost = self.channel.peer_close is None
        self.stop(reason)

    @property
    def holding(self) -> bool:
        """The handler outlives this link for a resume: not shut down (the drivers ask too)."""
        return self.link_lost and self.hello.resume_grace_s > 0

    def held(self) -> HeldSession | None:
        """What a resume of this session takes over, once run() has returned; None when the
        handler was shut down (a clean end, a failed handler, threads that would not stop)."""
        if not self.holding or self.stuck or self.parked:
            return None
        keep = self.handler if isinstance(self.handler, StreamHandlerBase) else None
        return HeldSession(self.hello.session_id, keep, list(self.args), time.monotonic() + self.hello.resume_grace_s)

    def release_held_args(self) -> None:
        """Mark held inputs set (see ``args_held``); from now on inputs apply as they come."""
        with self.cond:
            self.emit_returned = True  # (or asked, or waited long enough: the hold is over)
            held, self.args_held = self.args_held, False
            args = list(self.args)
        if held:
            self.handler.set_args(args)

    def _send_websocket(self, text: str) -> None:
        """get_current_context().websocket.send_text(): to the client's socket, as it is."""
        self.channel.send_control(Message(WEBSOCKET_SEND, text))

    def request_args(self) -> None:
        """The handler asks for the inputs (wait_for_args*): what the page pushed already
        is current enough, and an answer to this request must reach the waiting handler."""
        with self.cond:
            self.args_requested = True
        self.release_held_args()
        self.channel.send_control(Message("send_input", None))

    # --- handler side ----------------------------------------------------------------------------

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            # a new thread starts with an empty context: every handler call this loop makes
            # (and every task of an async handler's loop, which copies it) sees the session's
            set_context(self.context)
            try:
                fn()
            except Exception as exc:  # a failing handler loop ends the session, reported
                self.report(exc)
                self.stop(f"handler failed: {exc}")

        run.__name__ = fn.__name__
        return run

    @overload
    def next_input(self, audio: Literal[True], video: Literal[False]) -> tuple[int, np.ndarray] | None: ...
    @overload
    def next_input(self, audio: Literal[False], video: Literal[True]) -> tuple[SlotHeader, np.ndarray] | None: ...
    @overload
    def next_input(self, audio: bool, video: bool) -> tuple[int, np.ndarray] | tuple[SlotHeader, np.ndarray] | None: ...
    def next_input(self, audio: bool, video: bool) -> tuple[int, np.ndarray] | tuple[SlotHeader, np.ndarray] | None:
        """Wait for the next audio frame (oldest first) or the latest video frame."""
        ch = self.channel
        with self.cond:
            while not self.stopping:
                if audio and self.audio_in:
                    item = self.audio_in.popleft()
                    self.audio_in_samples -= item[1].shape[-1]
                    return item
                if video and ch.has_video():
                    break
                self.cond.wait(POLL_INTERVAL_S)
            else:
                return None
        got = ch.take_video()
        if got is None:
            return self.next_input(audio, video)
        header, view = got
        # a new array either way, so a handler may modify or keep its frame, as with
        # gradio_webrtc: the conversion from I420 replaces the copy that RGB24 needs
        try:
            if header.layout == PIXFMT_I420:
                frame = self.pixels_in.to_rgb(*ch.i420_planes(header))
            else:
                frame = view.copy()
        finally:
            ch.release_video()
        return header, frame


    def report(self, exc: BaseException) -> None:
        """Tell the client about a handler exception. A handler failing on every frame would
        send ~30 a second: the same message goes out at most once per ERROR_REPEAT_S, with
        the count of the ones held back."""
        message = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if message == self._last_error and now - self._last_error_at < ERROR_REPEAT_S:
            self._errors_held += 1
            return
        if self._errors_held:
            message = f"{message} (and {self._errors_held} more like it)"
        log.warning("handler raised: %s", "".join(traceback.format_exception(exc)))
        self._last_error, self._last_error_at, self._errors_held = f"{type(exc).__name__}: {exc}", now, 0
        try:
            self.channel.send_control(Error(message))
        except Exception:
            pass


@dataclass
class HeldSession:
    """A session's handler kept after its link was lost, until a resume or ``deadline``."""

    session_id: str
    handler: Any  # its StreamHandler copy (None: a plain function, the worker's own)
    args: list[Any]
    deadline: float  # monotonic

    def release(self) -> None:
        """Nobody resumed it: the shutdown() it was spared."""
        h = self.handler
        if isinstance(h, StreamHandlerBase):
            try:
                shutdown: Callable[[], Any] = h.shutdown  # an AsyncStreamHandler's is a coroutine
                result = shutdown()
                if inspect.isawaitable(result):
                    asyncio.run(_awaited(result))
            except Exception:
                log.exception("handler shutdown raised")


async def _awaited(result: Any) -> Any:
    return await result


PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
MB = 1 << 20


def rss_mb() -> int:
    """This process's resident memory (Linux /proc; 0 elsewhere): two integers read, no psutil."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE_BYTES // MB
    except (OSError, ValueError, IndexError):
        return 0


class _Hooks(_SessionHooks):
    def __init__(self, session: WorkerSession) -> None:
        self.session = session

    def send(self, type_: str, data: Any) -> None:
        if type_ == "error":
            # the client's shape of an error is {"type": "error", "message": str}, which
            # the gateway makes of an Error (a {"data": ...} would show as no message)
            self.session.channel.send_control(Error(str(data)))
            return
        self.session.channel.send_control(Message(type_, data))

    def request_args(self) -> None:
        self.session.request_args()

    def initial_args(self) -> list[Any]:
        return list(self.session.hello.args)

    def clear_audio(self) -> None:
        self.session.output.clear_audio()

    def save_state(self) -> None:
        self.session.snapshots.request()


__all__ = ["MAX_PARKED_THREADS", "POLL_INTERVAL_S", "WorkerSession"]
