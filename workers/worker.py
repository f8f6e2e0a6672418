"""The worker: one process holding one user handler, serving one session at a time.

A ``Worker`` is the body of a Ray actor (the scheduler wraps it with ``ray.remote``); its
Ray methods are control plane only (``ready``, ``stats``, ``shutdown``). Media never goes
through Ray: the worker listens on a Unix SEQPACKET socket in the abstract namespace
(nothing on disk to leak when the process is killed; the peer's uid is checked), and the
gateway connects there to run a session over a FrameChannel.

Threads of a worker: Ray's own; ``serve`` (accepts a session, then reads its link);
``handler`` (calls the user's code, so a handler that holds the GIL or blocks never delays
the link). A handler that will not stop when its session ends makes the worker exit, so the
pool replaces it rather than hand a busy process to the next user.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import select
import socket
import struct
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from runtime import constants as C
from runtime.channel import (
    CONTROL_FRAGMENT_BYTES,
    MAX_CONTROL_BYTES,
    MSG_PART,
    FrameChannel,
    Segment,
)
from runtime.wire import (
    Args,
    ClearAudio,
    Control,
    Error,
    Hello,
    Message,
    Outputs,
    Ready,
    SlotHeader,
    WireError,
)
from workers.handlers import (
    WEBRTC_VALUE,
    AdditionalOutputs,
    AsyncStreamHandler,
    CloseStream,
    StreamHandlerBase,
)
from workers.loader import HandlerSpec, load

log = logging.getLogger("rtcpool.worker")

POLL_INTERVAL_S = 0.1  # the link reader wakes this often to notice shutdown and flush
HANDLER_STOP_TIMEOUT_S = 1.0  # handler threads get this long to return once a session ends
EMIT_IDLE_S = 0.005  # a StreamHandler's emit() returned None: ask again after this long
AUDIO_LEAD_S = 0.5  # audio may be produced this far ahead of real time; the gateway plays it out
ERROR_REPEAT_S = 1.0  # the same handler error is sent to the client at most this often
WORKER_NICENESS = 15  # workers run behind the gateway (Ray's own default for its workers)
ACCEPT_INTERVAL_S = 0.5  # the accept loop wakes this often to notice shutdown
LISTEN_BACKLOG = 8


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def as_rgb24(frame: Any) -> np.ndarray:
    """A handler's video output as (H, W, 3) uint8, whatever reasonable form it came in."""
    a = np.asarray(frame)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    elif a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"a video frame must be (H, W, 3), got shape {a.shape}")
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and a.size and float(a.max()) <= 1.0:
            a = a * 255.0
        a = np.clip(a, 0, 255).astype(np.uint8)
    return a


class Worker:
    """Ray actor body. ``spec`` says how to get the user's handler (workers/loader.py)."""

    def __init__(self, spec: HandlerSpec, event_id: str = "") -> None:
        self.event_id = event_id
        _pin_priority()
        self.handler = load(spec)
        warmup = getattr(self.handler, "warmup", None)
        if callable(warmup):
            warmup()  # load models now, while the worker waits in the pool, not in a session
        self.endpoint = f"\0rtcpool-{os.getuid()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(self.endpoint)
        self.listener.listen(LISTEN_BACKLOG)
        self.listener.settimeout(ACCEPT_INTERVAL_S)
        self.sessions_served = 0
        self.session: Session | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="rtcpool-serve", daemon=True)
        self._thread.start()

    # --- Ray methods (control plane) ---------------------------------------------------------

    def ready(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "pid": os.getpid(),
            "node_id": _node_id(),
            "host": socket.gethostname(),
        }

    def stats(self) -> dict[str, Any]:
        s = self.session
        return {
            "pid": os.getpid(),
            "sessions_served": self.sessions_served,
            "busy": s is not None,
            "channel": vars(s.channel.stats).copy() if s is not None else None,
        }

    def shutdown(self) -> None:
        self._stop.set()
        s = self.session
        if s is not None:
            s.stop("worker shutting down")
        self._thread.join(C.CLOSE_ACK_TIMEOUT_S)
        self.listener.close()

    # --- serving -------------------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                if _peer_uid(conn) != os.getuid():
                    conn.close()
                    continue
                session = Session.open(self, conn)
            except Exception as exc:
                log.warning("refused a session: %s", exc)
                conn.close()
                continue
            self.session = session
            try:
                session.run()
            finally:
                self.session = None
                self.sessions_served += 1
            if session.stuck:
                log.error("handler did not stop within %.1f s; exiting so the pool replaces this worker", C.CLOSE_ACK_TIMEOUT_S)
                os._exit(3)


class Session:
    """One session in a worker. The link reader runs on the serve thread; the user's code runs
    on handler threads (one for a function or generator; receive + emit for a StreamHandler;
    one asyncio loop for an AsyncStreamHandler)."""

    def __init__(self, worker: Worker, conn: socket.socket, hello: Hello, up: Segment, down: Segment) -> None:
        self.worker = worker
        self.hello = hello
        self.args: list[Any] = list(hello.args)
        self.cond = threading.Condition()
        self.stop_event = threading.Event()
        self.args_arrived = threading.Event()
        self.emit_started = False  # the handler's emit() has been called once
        self.args_held = False  # inputs arrived before that, not yet marked set
        self.stopping = False
        self.stop_reason = ""
        self.stuck = False
        self.outputs_seq = 0
        self.sends_video = hello.mode in ("send-receive", "receive") and hello.modality in ("video", "audio-video")
        self.sends_audio = hello.mode in ("send-receive", "receive") and hello.modality in ("audio", "audio-video")
        self.audio_in: deque[tuple[int, np.ndarray]] = deque()
        self.audio_in_samples = 0
        self.audio_in_dropped = 0
        self.audio_out_until = 0.0  # monotonic time up to which audio has been sent
        self.video_pts = 0
        self._last_error = ""
        self._last_error_at = 0.0
        self._errors_held = 0
        self._async_wake: Callable[[], None] | None = None
        self.handler = worker.handler.copy() if isinstance(worker.handler, StreamHandlerBase) else worker.handler
        self.in_rate, self.in_layout = C.AUDIO_DEFAULT_RATE, "mono"
        if isinstance(self.handler, StreamHandlerBase):
            self.handler._hooks = _Hooks(self)
            self.in_rate, self.in_layout = self.handler.input_sample_rate, self.handler.expected_layout
            if hello.args_set or not hello.args:
                # a stream without other inputs has nothing to wait for
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

    @classmethod
    def open(cls, worker: Worker, conn: socket.socket) -> Session:
        hello = _read_hello(conn)
        if not isinstance(hello, Hello):
            raise WireError("the first message of a session must be hello")
        up = Segment.attach(hello.up_segment)
        try:
            down = Segment.attach(hello.down_segment)
        except Exception:
            up.close()
            raise
        session = cls(worker, conn, hello, up, down)
        takes_audio = hello.modality in ("audio", "audio-video") and hello.mode != "receive"
        session.channel.send_control(
            Ready(
                pid=os.getpid(),
                node_id=_node_id(),
                audio_in_rate=session.in_rate if takes_audio else 0,
                audio_in_layout=session.in_layout,
            )
        )
        return session

    # --- link side (serve thread) ------------------------------------------------------------

    def run(self) -> None:
        threads = [threading.Thread(target=self._guard(fn), name=f"rtcpool-{fn.__name__}", daemon=True) for fn in self._handler_loops()]
        for t in threads:
            t.start()
        ch = self.channel
        fd = ch.sock.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        want_out = False
        poll_ms = int(POLL_INTERVAL_S * 1000)
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
            deadline = time.monotonic() + HANDLER_STOP_TIMEOUT_S
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            self.stuck = any(t.is_alive() for t in threads)
            if isinstance(self.handler, StreamHandlerBase):
                try:
                    self.handler.shutdown()
                except Exception:
                    log.exception("handler shutdown raised")
            # answers the gateway's Close (or tells it we are done), then unmaps both segments
            ch.close(self.stop_reason, notify=True, retire=self.stuck)

    def stop(self, reason: str) -> None:
        with self.cond:
            if not self.stopping:
                self.stopping = True
                self.stop_reason = reason
            self.cond.notify_all()
        self.stop_event.set()
        self.args_arrived.set()
        self._wake_async()

    def _wake(self) -> None:
        with self.cond:
            self.cond.notify_all()
        self._wake_async()

    def _wake_async(self) -> None:
        wake = self._async_wake
        if wake is not None:
            wake()

    def _on_audio(self, header: SlotHeader, samples: np.ndarray) -> None:
        with self.cond:
            self.audio_in.append((header.sample_rate, samples))
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

    def _on_control(self, msg: Control) -> None:
        if isinstance(msg, Args):
            self.args = list(msg.args)
            self.args_arrived.set()
            h = self.handler
            if isinstance(h, StreamHandlerBase):
                if self.emit_started:
                    h.set_args(self.args)
                else:
                    # The page pushes its inputs as soon as it connects, usually before the
                    # first emit(). The seed's AsyncStreamHandler starts its work only when
                    # emit() finds args_set clear and waits for them: so values that arrive
                    # before any emit() are held (latest_args only) and marked set after it.
                    h.latest_args = [WEBRTC_VALUE, *self.args]
                    self.args_held = True

    def _on_closed(self, reason: str) -> None:
        self.stop(reason)

    def _release_held_args(self) -> None:
        if self.args_held:
            self.args_held = False
            self.handler.set_args(self.args)  # type: ignore[union-attr]

    # --- handler side ----------------------------------------------------------------------------

    def _handler_loops(self) -> list[Callable[[], None]]:
        h = self.handler
        if isinstance(h, AsyncStreamHandler):
            return [self._async_handler_loop]
        if isinstance(h, StreamHandlerBase):
            return [self._receive_loop, self._emit_loop]
        if self.hello.mode == "receive":
            return [self._generator_loop]
        if self.hello.modality == "audio":
            return [self._audio_function_loop]
        return [self._video_function_loop]

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except Exception as exc:  # a failing handler loop ends the session, reported
                self._report(exc)
                self.stop(f"handler failed: {exc}")

        run.__name__ = fn.__name__
        return run

    def _next_input(self, audio: bool, video: bool) -> tuple[int, np.ndarray] | tuple[SlotHeader, np.ndarray] | None:
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
            return self._next_input(audio, video)
        header, view = got
        # a copy, so a handler may modify or keep its frame, as with gradio_webrtc
        frame = view.copy()
        ch.release_video()
        return header, frame

    def _video_function_loop(self) -> None:
        fn = self.handler
        while True:
            got = self._next_input(audio=False, video=True)
            if got is None:
                return
            header, frame = got
            try:
                if self._emit_all(fn(frame, *self.args), header):
                    return
            except Exception as exc:
                self._report(exc)

    def _audio_function_loop(self) -> None:
        fn = self.handler
        while True:
            got = self._next_input(audio=True, video=False)
            if got is None:
                return
            try:
                if self._emit_all(fn(got, *self.args), None):
                    return
            except Exception as exc:
                self._report(exc)

    def _generator_loop(self) -> None:
        """Server-to-client: the function is a generator of frames or audio, paced here.
        With other inputs, it starts with their current values: the page sends them right
        after connecting; a client that sends none gets the initial values after
        ARGS_WAIT_TIMEOUT_S."""
        if self.hello.args and not self.hello.args_set:
            self.args_arrived.wait(C.ARGS_WAIT_TIMEOUT_S)
            if self.stopping:
                return
        out = self.handler(*self.args)
        if inspect.isasyncgen(out):
            asyncio.run(self._drain_async_gen(out))
        elif self._emit_all(out, None):
            return
        if not self.stopping:
            self.channel.send_control(Message("end_stream", {"reason": "stream_finished"}))
            self.stop("generator finished")

    async def _drain_async_gen(self, gen: Any) -> None:
        try:
            async for item in gen:
                if self.stopping or self._emit(item, None):
                    return
                delay = self._pace_delay(item)
                if delay > 0:
                    await asyncio.sleep(delay)
        finally:
            await gen.aclose()

    def _receive_loop(self) -> None:
        h = self.handler
        wants_audio = self.hello.modality in ("audio", "audio-video") and self.hello.mode != "receive"
        wants_video = self.hello.modality in ("video", "audio-video") and self.hello.mode != "receive"
        video_receive = getattr(h, "video_receive", None)
        while True:
            got = self._next_input(audio=wants_audio, video=wants_video and video_receive is not None)
            if got is None:
                return
            try:
                if isinstance(got[0], SlotHeader):
                    video_receive(got[1])  # type: ignore[misc]
                else:
                    h.receive(got)  # type: ignore[attr-defined]
            except Exception as exc:
                self._report(exc)

    def _emit_loop(self) -> None:
        h = self.handler
        h.start_up()
        video_emit = getattr(h, "video_emit", None) if self.sends_video else None
        while not self.stopping:
            idle = True
            for emit in (h.emit, video_emit):  # type: ignore[attr-defined]
                if emit is None:
                    continue
                self.emit_started = True
                try:
                    out = emit()
                except Exception as exc:
                    self._report(exc)
                    continue
                finally:
                    self._release_held_args()
                if out is not None:
                    idle = False
                    if self._emit_all(out, None):
                        return
            if idle:
                self.stop_event.wait(EMIT_IDLE_S)

    def _async_handler_loop(self) -> None:
        asyncio.run(self._async_main())

    async def _async_main(self) -> None:
        h = self.handler
        loop = asyncio.get_running_loop()
        h._loop = loop
        wake = asyncio.Event()
        self._async_wake = lambda: loop.call_soon_threadsafe(wake.set)
        started = h.start_up()
        if inspect.isawaitable(started):
            await started

        async def receive() -> None:
            wants_video = self.hello.modality in ("video", "audio-video") and hasattr(h, "video_receive")
            while not self.stopping:
                with self.cond:
                    item = self.audio_in.popleft() if self.audio_in else None
                    if item is not None:
                        self.audio_in_samples -= item[1].shape[-1]
                if item is not None:
                    await _maybe_await(h.receive(item))  # type: ignore[attr-defined]
                    continue
                if wants_video and self.channel.has_video():
                    got = self._next_input(audio=False, video=True)
                    if got is not None:
                        await _maybe_await(h.video_receive(got[1]))  # type: ignore[attr-defined]
                    continue
                wake.clear()
                await wake.wait()

        async def emit() -> None:
            while not self.stopping:
                self.emit_started = True
                try:
                    out = await _maybe_await(h.emit())  # type: ignore[attr-defined]
                finally:
                    self._release_held_args()
                if out is None:
                    await asyncio.sleep(EMIT_IDLE_S)
                    continue
                if self._emit(out, None):
                    return
                delay = self._pace_delay(out)
                if delay > 0:
                    await asyncio.sleep(delay)

        async def watch_stop() -> None:
            while not self.stopping:
                wake.clear()
                await wake.wait()

        tasks = [asyncio.create_task(c) for c in (receive(), emit(), watch_stop())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._async_wake = None

    # --- output -------------------------------------------------------------------------------

    def _emit_all(self, out: Any, header: SlotHeader | None) -> bool:
        """Send a result, or every item of a generator result, paced. True: end the stream."""
        if inspect.isgenerator(out):
            try:
                for item in out:
                    if self.stopping or self._emit(item, header):
                        return True
                    delay = self._pace_delay(item)
                    if delay > 0 and self.stop_event.wait(delay):
                        return True
            finally:
                out.close()
            return False
        if self._emit(out, header):
            return True
        delay = self._pace_delay(out)
        return delay > 0 and self.stop_event.wait(delay)

    def _emit(self, out: Any, header: SlotHeader | None) -> bool:
        """Send one handler result. True when the handler asked to end the stream."""
        if out is None:
            return False
        if isinstance(out, CloseStream):
            self.channel.send_control(Message("end_stream", {"reason": "closed_by_handler", "message": out.msg}))
            self.stop(out.msg)
            return True
        if isinstance(out, AdditionalOutputs):
            self._send_outputs(out)
            return False
        if isinstance(out, tuple) and out and isinstance(out[-1], AdditionalOutputs):
            self._send_outputs(out[-1])
            out = out[0] if len(out) == 2 else (out[:-1] or None)
            if out is None:
                return False
        if _is_audio(out):
            if self.sends_audio:
                self._send_audio(out)
            return False
        if self.sends_video:
            frame = as_rgb24(out)
            if header is not None:
                self.channel.send_video(frame, header.pts, (header.time_base_num, header.time_base_den))
            else:
                self.video_pts += int(C.VIDEO_CLOCK_RATE / C.DEFAULT_OUTPUT_FPS)
                self.channel.send_video(frame, self.video_pts)
        return False

    def _send_audio(self, out: tuple[Any, ...]) -> None:
        rate, samples, layout = as_audio(out)
        channels = 2 if layout == "stereo" else 1
        step = (C.AUDIO_SLOT_SAMPLES * C.AUDIO_MAX_CHANNELS // channels) * channels
        for i in range(0, samples.shape[1], step):
            self.channel.send_audio(samples[:, i : i + step], rate, layout)
        now = time.monotonic()
        self.audio_out_until = max(now, self.audio_out_until) + samples.shape[1] / channels / rate

    def _pace_delay(self, out: Any) -> float:
        """Seconds to wait before producing more: audio may run AUDIO_LEAD_S ahead of real
        time (the gateway plays it out), server-generated video goes at DEFAULT_OUTPUT_FPS."""
        if _is_audio(out) or (isinstance(out, tuple) and out and _is_audio(out[0])):
            return self.audio_out_until - time.monotonic() - AUDIO_LEAD_S
        if self.hello.mode == "receive" and isinstance(out, np.ndarray):
            return 1.0 / C.DEFAULT_OUTPUT_FPS
        return 0.0

    def clear_audio(self) -> None:
        self.audio_out_until = time.monotonic()
        self.channel.send_control(ClearAudio())

    def _send_outputs(self, out: AdditionalOutputs) -> None:
        self.outputs_seq += 1
        try:
            self.channel.send_control(Outputs(self.outputs_seq, list(out.args)))
        except (TypeError, WireError) as exc:
            self._report(exc)

    def _report(self, exc: BaseException) -> None:
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


def _is_audio(out: Any) -> bool:
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
    if rate <= 0 or rate > 192_000:
        raise ValueError(f"audio sample rate {rate} is out of range")
    return rate, np.ascontiguousarray(a), layout


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class _Hooks:
    def __init__(self, session: Session) -> None:
        self.session = session

    def send(self, type_: str, data: Any) -> None:
        self.session.channel.send_control(Message(type_, data))

    def request_args(self) -> None:
        self.session.channel.send_control(Message("send_input", None))

    def initial_args(self) -> list[Any]:
        return list(self.session.hello.args)

    def clear_audio(self) -> None:
        self.session.clear_audio()


def _read_hello(conn: socket.socket) -> Control:
    """A session's first control message. Test-found: it was read as one datagram of at most
    64 KiB, so a Hello with large initial args was cut and the session refused; the gateway
    now sends it in fragments (offer_link), reassembled here as FrameChannel.pump does."""
    deadline = time.monotonic() + C.WORKER_CONNECT_TIMEOUT_S
    parts: list[bytes] = []
    size = 0
    while True:
        conn.settimeout(max(deadline - time.monotonic(), 0.001))
        data = conn.recv(CONTROL_FRAGMENT_BYTES + 64)
        if not data:
            raise WireError("the link closed before hello")
        if data[0] != MSG_PART:
            break
        size += len(data) - 1
        if size > MAX_CONTROL_BYTES:
            raise WireError("fragmented hello exceeds the limit")
        parts.append(data[1:])
    if parts:
        data = data[:1] + b"".join(parts) + data[1:]
    return Control.decode(data)


def _pin_priority() -> None:
    """Keep workers below the gateway. The gateway is shared by every session: starved, it
    stalls all of them (measured: N=4 streams fell from ~58 to ~25 fps with workers at the
    gateway's priority), while a worker held back only slows its own session. Ray starts
    workers at nice 15; this makes that explicit so RAY_worker_niceness=0 cannot invert it.
    Raising niceness needs no privilege."""
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) < WORKER_NICENESS:
            os.setpriority(os.PRIO_PROCESS, 0, WORKER_NICENESS)
    except OSError:
        log.warning("could not lower this worker's priority below the gateway's")


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:
        pass
    return ""


__all__ = ["Worker", "Session", "as_rgb24", "as_audio"]
