"""The worker: one process holding one user handler, serving one session at a time.

A ``Worker`` is the body of a Ray actor (the scheduler wraps it with ``ray.remote``); its
Ray methods are control plane only (``ready``, ``stats``, ``shutdown``). Media never goes
through Ray: the worker listens on a Unix SEQPACKET socket in the abstract namespace
(nothing on disk to leak when the process is killed; the peer's uid is checked), and the
gateway connects there to run a session over a FrameChannel.

A worker on another node than the gateway is reached over TCP instead (the same messages,
framed by length; workers/link/channel.py): it listens on its node's address too (loopback under
the embedded local Ray). Every session, on either socket, must open with the token of its
lease: the scheduler mints one per lease and hands it to the worker over Ray (``arm``), and
the worker takes exactly one session with it. The link is not encrypted: a token seen on the
wire is spent, and opens nothing later.

Threads of a worker: Ray's own; ``accept`` (takes connections, never reads them); one
short-lived ``hello`` thread per new connection (reads its first message within
``HELLO_TIMEOUT_S``, so a silent peer -- a port scanner, a health check -- holds only its own
thread); ``serve`` (runs the sessions whose hello was valid, one at a time, reading their
link); ``handler`` (calls the user's code, so a handler that holds the GIL or blocks never
delays the link); ``stats`` (one per session: sends the handler's call durations to the
gateway every ``HANDLER_STATS_PERIOD_S``, for its metrics). A handler that will not stop
when its session ends makes the worker exit, so the pool replaces it rather than hand a
busy process to the next user.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import contextvars
import hmac
import inspect
import logging
import os
import secrets
import select
import socket
import struct
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, overload

import cv2
import numpy as np

from workers.context import Context, WebSocketSender, reset_context, set_context
from workers.handlers import (
    WEBRTC_VALUE,
    AdditionalOutputs,
    AsyncStreamHandler,
    CloseStream,
    StreamHandlerBase,
    VideoStreamHandler,
    _SessionHooks,
)
from workers.link import constants as C
from workers.link.channel import FrameChannel
from workers.link.connect import TCP_SCHEME, geometry_from_hello, read_first_control
from workers.link.shm import LocalSegment, Segment
from workers.link.wire import (
    CLIENT_TELEPHONE,
    CLIENT_WEBSOCKET,
    HANDLER_BUCKET_COUNT,
    HANDLER_BUCKETS_S,
    HANDLER_STATS_PERIOD_S,
    OUTPUTS_ADDITIONAL,
    OUTPUTS_STREAM,
    PIXFMT_I420,
    STREAM_LENGTH,
    WEBSOCKET_SEND,
    Args,
    ClearAudio,
    Close,
    Control,
    Error,
    HandlerStats,
    Hello,
    Message,
    Outputs,
    Ready,
    SlotHeader,
    WireError,
    i420_views,
)
from workers.process.loader import HandlerSpec, load

log = logging.getLogger("rtcpool.worker")

POLL_INTERVAL_S = 0.1  # the link reader wakes this often to notice shutdown and flush
HANDLER_STOP_TIMEOUT_S = 1.0  # handler threads get this long to return once a session ends
EMIT_IDLE_S = 0.005  # a StreamHandler's emit() returned None: ask again after this long
ERROR_REPEAT_S = 1.0  # the same handler error is sent to the client at most this often
ARGS_HOLD_MAX_S = 2.0  # inputs pushed before a handler's first emit() returns are held at most this long
PARKED_THREAD_CPU_S = 0.05  # a handler thread using less CPU than this while joined is parked, not busy
MAX_PARKED_THREADS = 8  # parked handler threads a worker leaves behind before it retires
WORKER_NICENESS = 15  # workers run behind the gateway (Ray's own default for its workers)
ACCEPT_INTERVAL_S = 0.5  # the accept loop wakes this often to notice shutdown
LISTEN_BACKLOG = 8
# A gateway writes its hello right after connecting: on loopback or a LAN it arrives within
# milliseconds. A peer silent this long is not a gateway, and only its own thread waited.
HELLO_TIMEOUT_S = 2.0
MAX_HELLO_THREADS = 16  # connections read at once; beyond that a new one is closed unread
REFUSE_SEND_TIMEOUT_S = 1.0  # a refused peer gets this long to take its Close
# stream_every / VideoStreamHandler(fps=): the frame waiting at the worker since the last call
# is given back for a newer one, unless it surely came less than this long ago (the last call
# released its own frame, and so let this one be sent, less than this long ago). At 30 fps
# (period 33 ms) the gateway has no newer frame yet: dropping it would wait a whole frame and
# halve the rate; at 5 fps it may have waited 200 ms. ~1.5 frames of a 30 fps camera.
STALE_VIDEO_S = 0.05
WEBSOCKET_CLIENTS = (CLIENT_WEBSOCKET, CLIENT_TELEPHONE)  # clients a handler can send text to


# the clear_gen a clear_audio() call made, in the context (thread, or asyncio task) that made
# it: audio an emit() returns after clearing the queue itself is new, not stale
_OWN_CLEAR: contextvars.ContextVar[int | None] = contextvars.ContextVar("rtcpool_own_clear", default=None)


def _made_under(gen: int) -> int:
    """The clear_gen an emit() result counts as made under: ``gen`` (taken before the call),
    or the one the call's own clear_audio() made."""
    own = _OWN_CLEAR.get()
    if own is not None:
        _OWN_CLEAR.set(None)
        return max(gen, own)
    return gen


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


class PixelConverter:
    """I420 <-> (H, W, 3) uint8 RGB for one direction of a session's video, by OpenCV
    (BT.601 limited range, what VP8 decodes to and encodes from).

    OpenCV's I420 conversions take only even sizes. An odd-sized frame goes through an
    even-sized scratch frame one row and/or column larger, kept for the next frame of that
    size: its chroma planes are exactly the odd frame's (ceil(H/2) x ceil(W/2)), so only
    the luma (or RGB) is placed in its top-left corner and the extra row/column is cut off
    afterwards. A lock, since an AudioVideoStreamHandler's threads may send video at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._size: tuple[int, int] = (0, 0)  # (H, W) of the odd frames the scratch is for
        self._i420: tuple[np.ndarray, ...] = ()  # (packed, y, u, v) of the even scratch frame
        self._rgb: np.ndarray | None = None  # (H + H % 2, W + W % 2, 3) scratch RGB

    def _scratch(self, height: int, width: int) -> None:
        if self._size == (height, width):
            return
        even_h, even_w = height + (height & 1), width + (width & 1)
        packed = np.zeros((even_h * 3 // 2, even_w), np.uint8)
        self._i420 = i420_views(packed.reshape(-1), even_h, even_w)
        self._rgb = np.zeros((even_h, even_w, 3), np.uint8)
        self._size = (height, width)

    def to_rgb(self, packed: np.ndarray, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """A new (H, W, 3) uint8 RGB array (the handler's to keep or modify) of the I420
        frame whose views (``wire.i420_views``) are given."""
        height, width = y.shape
        if not (height | width) & 1:
            return cv2.cvtColor(packed, cv2.COLOR_YUV2RGB_I420)
        with self._lock:
            self._scratch(height, width)
            even, ey, eu, ev = self._i420
            ey[:height, :width] = y  # the extra row/column's luma only reaches pixels cut off below
            eu[...] = u
            ev[...] = v
            rgb = cv2.cvtColor(even, cv2.COLOR_YUV2RGB_I420, dst=self._rgb)
            # always a copy: the scratch is reused (test-found: np.ascontiguousarray gave back
            # the scratch itself when only the height was odd, as that crop is contiguous)
            return rgb[:height, :width].copy()

    def to_i420(self, rgb: np.ndarray, packed: np.ndarray, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
        """Write an (H, W, 3) uint8 RGB array into the I420 views given (a slot's)."""
        height, width = y.shape
        if not (height | width) & 1:
            out = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420, dst=packed)
            if out is not packed:  # OpenCV made its own array (it never has here): copy it in
                np.copyto(packed, out)
            return
        with self._lock:
            self._scratch(height, width)
            even, ey, eu, ev = self._i420
            scratch = self._rgb
            assert scratch is not None
            scratch[:height, :width] = rgb
            # the extra row/column repeats the edge, so a 2x2 block's chroma stays the edge's
            # whichever of its pixels OpenCV samples (it takes the top-left one today)
            scratch[:height, width:] = rgb[:, width - 1 :]
            scratch[height:, :] = scratch[height - 1 : height, :]
            out = cv2.cvtColor(scratch, cv2.COLOR_RGB2YUV_I420, dst=even)
            if out is not even:
                np.copyto(even, out)
            np.copyto(y, ey[:height, :width])
            np.copyto(u, eu)
            np.copyto(v, ev)


class CallTimes:
    """How long a session's handler calls took, in the fixed buckets of ``HANDLER_BUCKETS_S``.

    Timed: the calls that take an input (a frame or audio function, ``receive``,
    ``video_receive``): ``emit``/``video_emit`` and generators block until they have
    something, so their time would be waiting, not work. Per call: two clock reads, a
    bisect into a constant tuple and an uncontended lock (an AudioVideoStreamHandler's
    receive threads record at once); nothing is allocated that a float result does not need.
    The session's stats thread sends the totals to the gateway (``HandlerStats``)."""

    __slots__ = ("counts", "sum_s", "_lock")

    def __init__(self) -> None:
        self.counts = [0] * HANDLER_BUCKET_COUNT
        self.sum_s = 0.0
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        # bisect_left: a call of exactly a bound counts in that bound's bucket ("le")
        i = bisect.bisect_left(HANDLER_BUCKETS_S, seconds)
        with self._lock:
            self.counts[i] += 1
            self.sum_s += seconds

    def report(self) -> HandlerStats:
        with self._lock:
            return HandlerStats(list(self.counts), self.sum_s)


class Worker:
    """Ray actor body. ``spec`` says how to get the user's handler (workers/process/loader.py)."""

    def __init__(self, spec: HandlerSpec, event_id: str = "", tcp_host: str | None = None) -> None:
        """``tcp_host``: the address the TCP listener binds (default: this node's, as Ray
        sees it; the embedded local Ray passes loopback, since no other host connects)."""
        self.event_id = event_id
        self.spec = spec  # sessions read the event's stream_every and outputs from it
        _pin_priority()
        self.handler = load(spec)
        warmup = getattr(self.handler, "warmup", None)
        if callable(warmup):
            warmup()  # load models now, while the worker waits in the pool, not in a session
        self.endpoint = f"\0rtcpool-{os.getuid()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(self.endpoint)
        self.listener.listen(LISTEN_BACKLOG)
        # the token the next session must present: the scheduler arms one per lease (arm());
        # until then, and after each session, a random one nobody else knows
        self._token_lock = threading.Lock()
        self._token = secrets.token_hex(C.TOKEN_BYTES)
        # the TCP form, for a gateway on another node: the node's address, a port of the
        # kernel's choosing
        host = tcp_host or _node_ip()
        self.tcp_listener = socket.create_server(
            (host, 0), family=socket.AF_INET6 if ":" in host else socket.AF_INET, backlog=LISTEN_BACKLOG
        )
        port = self.tcp_listener.getsockname()[1]
        self.tcp_endpoint = f"{TCP_SCHEME}[{host}]:{port}" if ":" in host else f"{TCP_SCHEME}{host}:{port}"
        self.sessions_served = 0
        self.parked_threads: list[threading.Thread] = []  # left blocked in handlers by past sessions
        self.session: Session | None = None
        self._stop = threading.Event()
        # a connection whose hello was valid, waiting for the serve thread: (socket, hello,
        # monotonic time it was read)
        self._accepted: tuple[socket.socket, Hello, float] | None = None
        self._accepted_cond = threading.Condition()
        self._hello_threads = threading.BoundedSemaphore(MAX_HELLO_THREADS)
        self._thread = threading.Thread(target=self._serve, name="rtcpool-serve", daemon=True)
        self._thread.start()
        self._accept_thread = threading.Thread(target=self._accept, name="rtcpool-accept", daemon=True)
        self._accept_thread.start()

    # --- Ray methods (control plane) ---------------------------------------------------------

    def ready(self) -> dict[str, Any]:
        # "token": the one armed now, for a Worker driven directly (tests, benchmarks); the
        # scheduler drops it and arms a token of its own for every lease
        return {
            "endpoint": self.endpoint,
            "tcp_endpoint": self.tcp_endpoint,
            "token": self.token,
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

    def arm(self, token: str) -> None:
        """The token the next session must present (the scheduler, once per lease, before it
        hands the lease out). It replaces any earlier one, which then opens nothing."""
        if not isinstance(token, str) or len(token) < 2 * C.TOKEN_BYTES:
            raise ValueError(f"a session token is at least {C.TOKEN_BYTES * 8} bits, in hex")
        with self._token_lock:
            self._token = token

    @property
    def token(self) -> str:
        """The token armed now (for a Worker driven directly, without a scheduler)."""
        with self._token_lock:
            return self._token

    def shutdown(self) -> None:
        self._stop.set()
        s = self.session
        if s is not None:
            s.stop("worker shutting down")
        with self._accepted_cond:
            self._accepted_cond.notify_all()
        self._thread.join(C.CLOSE_ACK_TIMEOUT_S)
        self._accept_thread.join(C.CLOSE_ACK_TIMEOUT_S)
        self.listener.close()
        self.tcp_listener.close()
        with self._accepted_cond:
            waiting, self._accepted = self._accepted, None
        if waiting is not None:
            waiting[0].close()

    # --- serving -------------------------------------------------------------------------------

    def _accept(self) -> None:
        """Take every new connection and hand it to a hello thread of its own: reading it
        here would let one silent peer hold up the next real session."""
        listeners = [self.listener, self.tcp_listener]
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select(listeners, [], [], ACCEPT_INTERVAL_S)
            except (OSError, ValueError):
                return  # a listener was closed: shutting down
            for listener in readable:
                try:
                    conn, _ = listener.accept()
                except (OSError, ValueError):
                    if self._stop.is_set():
                        return
                    continue
                try:
                    if conn.family == socket.AF_UNIX and _peer_uid(conn) != os.getuid():
                        raise WireError("a peer of another user")
                    if conn.type == socket.SOCK_STREAM:
                        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    if not self._hello_threads.acquire(blocking=False):
                        raise WireError(f"{MAX_HELLO_THREADS} connections are already being read")
                except Exception as exc:
                    log.warning("refused a connection: %s", exc)
                    conn.close()
                    continue
                threading.Thread(target=self._hello, args=(conn,), name="rtcpool-hello", daemon=True).start()

    def _hello(self, conn: socket.socket) -> None:
        """A new connection's first message, within HELLO_TIMEOUT_S: a hello with the armed
        token spends the token and waits for the serve thread; anything else is hung up on."""
        try:
            try:
                hello = read_first_control(conn, HELLO_TIMEOUT_S)
                if not isinstance(hello, Hello):
                    raise WireError("the first message of a session must be hello")
                if not self._spend_token(hello.token):
                    raise WireError("the hello does not carry this session's token")
            finally:
                self._hello_threads.release()
        except Exception as exc:
            log.warning("refused a session: %s", exc)
            conn.close()
            return
        with self._accepted_cond:
            # One waits at most. With one token per lease a second valid hello cannot come
            # while one waits; if it does, it is told, not left to time out.
            if self._accepted is None and not self._stop.is_set():
                self._accepted = (conn, hello, time.monotonic())
                self._accepted_cond.notify_all()
                return
        _refuse(conn, "worker busy: another session is starting here")

    def _spend_token(self, token: Any) -> bool:
        with self._token_lock:
            ok = isinstance(token, str) and hmac.compare_digest(token.encode(), self._token.encode())
            if ok:  # exactly one session per token: the next needs the next lease's
                self._token = secrets.token_hex(C.TOKEN_BYTES)
            return ok

    def _serve(self) -> None:
        while not self._stop.is_set():
            with self._accepted_cond:
                if self._accepted is None:
                    self._accepted_cond.wait(ACCEPT_INTERVAL_S)
                accepted, self._accepted = self._accepted, None
            if accepted is None:
                continue
            conn, hello, read_at = accepted
            # A hello waits here only while the previous session winds down (its lease was
            # released as its link closed, and the next one armed). One older than the
            # gateway's own wait for Ready was given up on.
            if time.monotonic() - read_at > C.WORKER_CONNECT_TIMEOUT_S:
                log.warning("dropped a session whose gateway stopped waiting for it")
                conn.close()
                continue
            try:
                session = Session.open(self, conn, hello)
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
            if session.retire:
                log.error("handler threads did not stop (%s); exiting so the pool replaces this worker",
                          "still running" if session.stuck else f"{len(self.parked_threads)} parked")
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
        # Inputs the page pushes as it connects are held (latest_args only, args_set clear)
        # until the handler asks for them (wait_for_args*), its first emit() returns, or
        # ARGS_HOLD_MAX_S pass: the seed's AsyncStreamHandler starts its work only when its
        # first emit() finds args_set clear, as it always does under gradio_webrtc, whose
        # first emit() runs before any input arrives.
        self.emit_returned = False
        self.args_requested = False
        self.args_held = False
        self._hold_timer: threading.Timer | None = None
        self.clear_gen = 0  # bumped by clear_audio(): audio made before it is stale
        self._video_due: float | None = None  # next frame time of server-generated video
        self.stopping = False
        self.stop_reason = ""
        self.stuck = False  # a handler thread still runs (uses CPU) after the session ended
        self.parked: list[threading.Thread] = []  # handler threads blocked in the handler at the end
        self.retire = False  # the worker exits after this session (see run())
        self.outputs_seq = 0
        self.sends_video = hello.mode in ("send-receive", "receive") and hello.modality in ("video", "audio-video")
        self.sends_audio = hello.mode in ("send-receive", "receive") and hello.modality in ("audio", "audio-video")
        self.audio_in: deque[tuple[int, np.ndarray]] = deque()
        self.audio_in_samples = 0
        self.audio_in_dropped = 0
        self.audio_out_until = 0.0  # monotonic time up to which audio has been sent
        self.video_pts = 0
        # one per direction, so a handler thread sending video never waits for the reader's
        self.pixels_in = PixelConverter()
        self.pixels_out = PixelConverter()
        self.call_times = CallTimes()
        self._call_times_sent = 0  # calls counted in the last HandlerStats sent
        self._last_error = ""
        self._last_error_at = 0.0
        self._errors_held = 0
        self._async_wake: Callable[[], object] | None = None
        self._async_pace_cut: Callable[[], object] | None = None
        self.stream_every = worker.spec.stream_every  # seconds between a function's inputs
        self.output_fps = C.DEFAULT_OUTPUT_FPS  # pace of the video the worker makes itself
        self.layout = worker.spec.outputs
        # positions in ``args`` of inputs that are also outputs and that the handler has
        # returned a value for: from then on the worker's value is the input (_on_control)
        self.fed_back: set[int] = set()
        self.takes_video = hello.mode != "receive" and hello.modality in ("video", "audio-video")
        self.started_up = threading.Event()  # a StreamHandler's start_up() has returned
        self.video_t0 = time.monotonic()  # time 0 of the video this worker produces itself
        # the app's own object (a function, a generator function or a StreamHandler): typed as
        # what it is, anything; the loops below call what its kind has
        handler = worker.handler
        if isinstance(handler, VideoStreamHandler):
            # fastrtc's wrapper is its function, at most fps calls (or output frames) a second
            self.stream_every = max(self.stream_every or 0.0, handler.period_s)
            self.output_fps = handler.fps
            handler = handler.callable
        self.handler: Any = handler.copy() if isinstance(handler, StreamHandlerBase) else handler
        # a phone sends no inputs (nothing to ask for, nothing to wait for); a WebSocket client
        # or a phone can be sent text from the handler (get_current_context().websocket)
        self.phone_mode = hello.client_kind == CLIENT_TELEPHONE
        to_socket = hello.client_kind in WEBSOCKET_CLIENTS
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
            if hello.args_set or not hello.args or self.phone_mode:
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

    @classmethod
    def open(cls, worker: Worker, conn: socket.socket, hello: Hello) -> Session:
        """A session on ``conn``, whose ``hello`` the worker has read and checked (its token)."""
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
        session = cls(worker, conn, hello, up, down)
        takes_audio = hello.modality in ("audio", "audio-video") and hello.mode != "receive"
        session.channel.send_control(
            Ready(
                pid=os.getpid(),
                node_id=_node_id(),
                audio_in_rate=session.in_rate if takes_audio else 0,
                audio_in_layout=session.in_layout,
                audio_out_rate=session.handler.output_sample_rate if isinstance(session.handler, StreamHandlerBase) else 0,
            )
        )
        return session

    # --- link side (serve thread) ------------------------------------------------------------

    def run(self) -> None:
        threads = [threading.Thread(target=self._guard(fn), name=f"rtcpool-{fn.__name__}", daemon=True) for fn in self._handler_loops()]
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
            if isinstance(self.handler, StreamHandlerBase) and not isinstance(self.handler, AsyncStreamHandler):
                # before the join, so a handler can unblock its own threads; an async
                # handler's shutdown runs on its loop (_async_main)
                try:
                    self.handler.shutdown()
                except Exception:
                    log.exception("handler shutdown raised")
            # only a StreamHandler's threads may be left parked: each session has its own
            # copy, whereas a plain function blocked mid-call is shared with the next session
            can_park = isinstance(self.handler, StreamHandlerBase)
            self.parked, self.stuck = _join_handler_threads(threads, HANDLER_STOP_TIMEOUT_S, can_park)
            worker = self.worker
            worker.parked_threads = [t for t in worker.parked_threads if t.is_alive()] + self.parked
            if self.parked:
                log.warning(
                    "%d handler thread(s) still blocked in the handler after the session; left parked (%d in this worker)",
                    len(self.parked), len(worker.parked_threads),
                )
            # a thread still running would compete with the next session; parked ones only
            # hold memory, up to MAX_PARKED_THREADS
            self.retire = self.stuck or len(worker.parked_threads) > MAX_PARKED_THREADS
            stats.join(HANDLER_STOP_TIMEOUT_S)  # it waits on stop_event: it has ended already
            # answers the gateway's Close (or tells it we are done), then unmaps both segments;
            # the last totals go just ahead of the Close, so the gateway's count of an ended
            # session has every call its handler made (none when nothing changed)
            report = self.call_times.report()
            last = report if sum(report.counts) != self._call_times_sent else None
            try:
                ch.close(self.stop_reason, notify=True, retire=self.retire, last=last)
            finally:
                reset_context(context_token)

    def _stats_loop(self) -> None:
        """Report the handler's call durations every HANDLER_STATS_PERIOD_S while they change."""
        while not self.stop_event.wait(HANDLER_STATS_PERIOD_S):
            self._send_call_times()

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
        wake = self._async_wake
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
                            self._hold_timer = threading.Timer(ARGS_HOLD_MAX_S, self._release_held_args)
                            self._hold_timer.daemon = True
                            self._hold_timer.start()
                if not hold:
                    h.set_args(self.args)

    def _on_closed(self, reason: str) -> None:
        self.stop(reason)

    def _release_held_args(self) -> None:
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
        self._release_held_args()
        self.channel.send_control(Message("send_input", None))

    # --- handler side ----------------------------------------------------------------------------

    def _handler_loops(self) -> list[Callable[[], None]]:
        h = self.handler
        if isinstance(h, AsyncStreamHandler):
            return [self._async_handler_loop]
        if isinstance(h, StreamHandlerBase):
            loops = [self._receive_loop, self._emit_loop]
            # an AudioVideoStreamHandler's video goes on threads of its own, as fastrtc runs
            # each direction of each track on its own: an emit that waits for its next
            # item (the seeds' queue.get()) must not hold up the other kind of media
            if self.takes_video and callable(getattr(h, "video_receive", None)):
                loops.append(self._video_receive_loop)
            if self.sends_video and callable(getattr(h, "video_emit", None)):
                loops.append(self._video_emit_loop)
            return loops
        if self.hello.mode == "receive":
            return [self._generator_loop]
        if self.hello.modality == "audio":
            return [self._audio_function_loop]
        return [self._video_function_loop]

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            # a new thread starts with an empty context: every handler call this loop makes
            # (and every task of an async handler's loop, which copies it) sees the session's
            set_context(self.context)
            try:
                fn()
            except Exception as exc:  # a failing handler loop ends the session, reported
                self._report(exc)
                self.stop(f"handler failed: {exc}")

        run.__name__ = fn.__name__
        return run

    @overload
    def _next_input(self, audio: Literal[True], video: Literal[False]) -> tuple[int, np.ndarray] | None: ...
    @overload
    def _next_input(self, audio: Literal[False], video: Literal[True]) -> tuple[SlotHeader, np.ndarray] | None: ...
    @overload
    def _next_input(self, audio: bool, video: bool) -> tuple[int, np.ndarray] | tuple[SlotHeader, np.ndarray] | None: ...
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

    def _video_function_loop(self) -> None:
        """The function on every frame it can keep up with (latest-frame-wins); with
        ``stream_every``, on the newest frame once per period. The output track then holds
        the last processed frame until the next (the browser keeps showing it), rather than
        the gateway encoding the same picture again for every input frame."""
        fn = self.handler
        every = self.stream_every
        due: float | None = None  # when the next call may start (stream_every only)
        taken_at = 0.0  # when the last call's frame was taken (and its slot given back)
        while True:
            if every is not None and due is not None:
                wait = due - time.monotonic()
                if wait > 0 and self.stop_event.wait(wait):
                    return
                if time.monotonic() - taken_at >= STALE_VIDEO_S:
                    self._drop_waiting_video()
            got = self._next_input(audio=False, video=True)
            if got is None:
                return
            if every is not None:
                # a fixed schedule, so the rate is one call per period on average; a call
                # that overruns its period is followed at once, never by a burst to catch up
                now = taken_at = time.monotonic()
                due = now + every if due is None else max(due + every, now)
            header, frame = got
            try:
                t0 = time.perf_counter()
                try:
                    out = fn(frame, *self.args)
                finally:
                    self.call_times.record(time.perf_counter() - t0)
                if self._emit_all(out, header):
                    return
            except Exception as exc:
                self._report(exc)

    def _drop_waiting_video(self) -> None:
        """Give back the frame that has waited here since the last call (the gateway sent it
        when that call took its frame, up to a period ago), so the gateway sends its newest."""
        ch = self.channel
        if ch.take_video() is not None:
            ch.release_video()

    def _audio_function_loop(self) -> None:
        """The function on each audio frame as it comes; with ``stream_every``, on chunks of
        exactly ``stream_every`` seconds, as Gradio's microphone stream sends them."""
        fn = self.handler
        every = self.stream_every
        chunk: np.ndarray | None = None
        filled = 0
        while True:
            got = self._next_input(audio=True, video=False)
            if got is None:
                return
            if every is None:
                if self._call_audio(fn, got):
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
                    if self._call_audio(fn, (rate, full)):
                        return

    def _call_audio(self, fn: Callable[..., Any], audio: tuple[int, np.ndarray]) -> bool:
        """One call of an audio function and its output. True: the stream ends."""
        try:
            t0 = time.perf_counter()
            try:
                out = fn(audio, *self.args)
            finally:
                self.call_times.record(time.perf_counter() - t0)
            return self._emit_all(out, None)
        except Exception as exc:
            self._report(exc)
            return False

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
        """A StreamHandler's audio, oldest first, into receive()."""
        receive = self.handler.receive
        wants_audio = self.hello.modality in ("audio", "audio-video") and self.hello.mode != "receive"
        if not wants_audio:
            return
        while True:
            got = self._next_input(audio=True, video=False)
            if got is None:
                return
            try:
                t0 = time.perf_counter()
                try:
                    receive(got)
                finally:
                    self.call_times.record(time.perf_counter() - t0)
            except Exception as exc:
                self._report(exc)

    def _video_receive_loop(self) -> None:
        """An AudioVideoStreamHandler's newest video frame into video_receive()."""
        video_receive = self.handler.video_receive
        while True:
            got = self._next_input(audio=False, video=True)
            if got is None:
                return
            try:
                t0 = time.perf_counter()
                try:
                    video_receive(got[1])
                finally:
                    self.call_times.record(time.perf_counter() - t0)
            except Exception as exc:
                self._report(exc)

    def _emit_loop(self) -> None:
        h = self.handler
        try:
            h.start_up()
        finally:
            self.started_up.set()
        emit = h.emit
        while not self.stopping:
            gen = self.clear_gen
            try:
                out = emit()
            except Exception as exc:
                self._report(exc)
                out = None
            finally:
                if not self.emit_returned:
                    self._release_held_args()
            if self.stopping:
                return  # (a call that outlived its session: its result has nowhere to go)
            if out is None:
                self.stop_event.wait(EMIT_IDLE_S)
            elif self._emit_all(out, None, _made_under(gen)):
                return

    def _video_emit_loop(self) -> None:
        """video_emit() at most ``fps`` times a second (the handler's; DEFAULT_OUTPUT_FPS), as
        fastrtc's output track asks for it: a handler may return its latest picture each call."""
        video_emit = self.handler.video_emit
        while not self.started_up.wait(POLL_INTERVAL_S):  # start_up() may set up its state
            if self.stopping:
                return
        period = 1.0 / self.output_fps
        due = time.monotonic()
        while not self.stopping:
            try:
                out = video_emit()
            except Exception as exc:
                self._report(exc)
                out = None
            if out is None:
                self.stop_event.wait(EMIT_IDLE_S)
                continue
            if self._emit_all(out, None):
                return
            now = time.monotonic()
            due = max(due + period, now)  # behind after a slow call: on at once, no burst
            if due > now and self.stop_event.wait(due - now):
                return

    def _async_handler_loop(self) -> None:
        asyncio.run(self._async_main())

    async def _async_main(self) -> None:
        h = self.handler
        loop = asyncio.get_running_loop()
        h._loop = loop
        wake = asyncio.Event()
        pace_cut = asyncio.Event()  # clear_audio(): the reply's pacing wait ends at once
        self._async_wake = lambda: loop.call_soon_threadsafe(wake.set)
        self._async_pace_cut = lambda: loop.call_soon_threadsafe(pace_cut.set)
        started = h.start_up()
        if inspect.isawaitable(started):
            await started

        # Each direction of each kind of media is a task of its own, as fastrtc runs each
        # track: a video_receive() or video_emit() that awaits (a model server, a queue)
        # holds up neither the audio nor the other video direction. Several tasks wait on
        # ``wake``: each checks its own input before it clears and waits, so none misses one.
        async def receive() -> None:
            while not self.stopping:
                with self.cond:
                    item = self.audio_in.popleft() if self.audio_in else None
                    if item is not None:
                        self.audio_in_samples -= item[1].shape[-1]
                # an exception in the handler is reported and the session goes on, as for a
                # sync handler
                if item is not None:
                    try:
                        t0 = time.perf_counter()
                        try:
                            await _maybe_await(h.receive(item))
                        finally:
                            self.call_times.record(time.perf_counter() - t0)
                    except Exception as exc:
                        self._report(exc)
                    continue
                wake.clear()
                await wake.wait()

        async def video_receive() -> None:
            while not self.stopping:
                if not self.channel.has_video():
                    wake.clear()
                    await wake.wait()
                    continue
                # the newest frame is there: this takes it without waiting
                got = self._next_input(audio=False, video=True)
                if got is None:
                    continue
                try:
                    t0 = time.perf_counter()
                    try:
                        await _maybe_await(h.video_receive(got[1]))
                    finally:
                        self.call_times.record(time.perf_counter() - t0)
                except Exception as exc:
                    self._report(exc)

        async def video_emit() -> None:
            # at most fps frames a second, on a schedule (as _video_emit_loop): a slow call is
            # followed at once, never by a burst to catch up
            period = 1.0 / self.output_fps
            due = loop.time()
            while not self.stopping:
                try:
                    out = await _maybe_await(h.video_emit())
                except Exception as exc:
                    self._report(exc)
                    out = None
                if self.stopping:
                    return
                if out is None:
                    await asyncio.sleep(EMIT_IDLE_S)
                    continue
                # one result per call (a frame, AdditionalOutputs, CloseStream): _emit, not
                # _emit_all, whose pacing waits would block this loop's thread
                if self._emit(out, None):
                    return
                now = loop.time()
                due = max(due + period, now)
                await asyncio.sleep(due - now)

        async def emit() -> None:
            while not self.stopping:
                gen = self.clear_gen
                try:
                    out = await _maybe_await(h.emit())
                except Exception as exc:
                    self._report(exc)
                    out = None
                finally:
                    if not self.emit_returned:
                        self._release_held_args()
                if out is None:
                    await asyncio.sleep(EMIT_IDLE_S)
                    continue
                made = _made_under(gen)
                if self._emit(out, None, made):
                    return
                delay = self._pace_delay(out)
                # a clear_audio() since the call began has dropped what this wait would pace;
                # one after this check sets pace_cut on the loop, after the clear() below
                if delay > 0 and self.clear_gen == made:
                    pace_cut.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(pace_cut.wait(), delay)

        async def watch_stop() -> None:
            while not self.stopping:
                wake.clear()
                await wake.wait()

        coros = [receive(), emit(), watch_stop()]
        # only tasks that run until the session stops: the first task to end ends the session
        if self.takes_video and callable(getattr(h, "video_receive", None)):
            coros.append(video_receive())
        if self.sends_video and callable(getattr(h, "video_emit", None)):
            coros.append(video_emit())
        tasks = [asyncio.create_task(c) for c in coros]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            try:
                # before the tasks are cancelled, so the handler can end its own work first
                await _maybe_await(h.shutdown())
            except Exception:
                log.exception("handler shutdown raised")
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._async_wake = None
            self._async_pace_cut = None

    # --- output -------------------------------------------------------------------------------

    def _emit_all(self, out: Any, header: SlotHeader | None, gen: int | None = None) -> bool:
        """Send a result, or every item of a generator result, paced. True: end the stream.
        ``gen``: the clear_gen the result was made under (None: no reply to interrupt)."""
        # the clear_gen each pacing wait is cut by: the one the audio was made under, taken
        # before it was made (CI-found: taken after sending, a clear_audio() in between was
        # missed and the wait ran its whole 11 s)
        mark = self.clear_gen if gen is None else gen
        if inspect.isgenerator(out):
            try:
                for item in out:
                    if self.stopping or self._emit(item, header, gen):
                        return True
                    delay = self._pace_delay(item)
                    if delay > 0 and self._pace_wait(delay, mark):
                        return True
                    if gen is None:
                        mark = self.clear_gen  # before the next item is made
            finally:
                out.close()
            return False
        if self._emit(out, header, gen):
            return True
        delay = self._pace_delay(out)
        return delay > 0 and self._pace_wait(delay, mark)

    def _pace_wait(self, delay: float, gen: int) -> bool:
        """Wait ``delay`` s before producing more; a clear_audio() since ``gen`` cuts it short
        (the audio it paced was dropped, so the next reply may start at once). True: the
        session stops."""
        deadline = time.monotonic() + delay
        with self.cond:
            while not self.stopping and self.clear_gen == gen:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return self.stopping

    def _emit(self, out: Any, header: SlotHeader | None, gen: int | None = None) -> bool:
        """Send one handler result. True when the handler asked to end the stream."""
        if out is None:
            return False
        if isinstance(out, CloseStream):
            self.channel.send_control(Message("end_stream", {"reason": "closed_by_handler", "message": out.msg}))
            self.stop(out.msg)
            return True
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], CloseStream):
            # fastrtc's (frame, CloseStream(...)): the last frame (or audio) goes out first
            self._emit(out[0], header, gen)
            return self._emit(out[1], header, gen)
        if isinstance(out, AdditionalOutputs):
            self._send_outputs(list(out.args))
            return False
        if isinstance(out, tuple) and out and isinstance(out[-1], AdditionalOutputs):
            self._send_outputs(list(out[-1].args))
            out = out[0] if len(out) == 2 else (out[:-1] or None)
            if out is None:
                return False
        if self.layout.mapped:
            out = self._split_outputs(out)
            if out is None:
                return False
        if _is_audio(out):
            if self.sends_audio:
                with self.cond:
                    # checked and sent under the lock clear_audio() bumps clear_gen with: audio
                    # made before an interruption never follows its ClearAudio to the gateway
                    if gen is None or gen == self.clear_gen:
                        self._send_audio(out)
            return False
        if self.sends_video:
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
        ch = self.channel
        height, width = rgb.shape[:2]
        if not height or not width:
            return False  # an empty picture: no encoder takes it
        slot = ch.reserve_video(height, width, PIXFMT_I420)
        if slot is None:
            return False
        try:
            self.pixels_out.to_i420(rgb, *ch.tx.i420(slot, height, width))
        except BaseException:
            ch.cancel_video(slot)
            raise
        return ch.commit_video(slot, height, width, PIXFMT_I420, pts, time_base)

    def _send_audio(self, out: tuple[Any, ...]) -> None:
        rate, samples, layout = as_audio(out)
        channels = 2 if layout == "stereo" else 1
        step = (C.AUDIO_SLOT_SAMPLES * C.AUDIO_MAX_CHANNELS // channels) * channels
        for i in range(0, samples.shape[1], step):
            self.channel.send_audio(samples[:, i : i + step], rate, layout)
        now = time.monotonic()
        self.audio_out_until = max(now, self.audio_out_until) + samples.shape[1] / channels / rate

    def _pace_delay(self, out: Any) -> float:
        """Seconds to wait before producing more: audio may run C.AUDIO_LEAD_S ahead of real
        time (the gateway plays it out), server-generated video goes at ``output_fps``
        (DEFAULT_OUTPUT_FPS unless the handler says)."""
        if _is_audio(out) or (isinstance(out, tuple) and out and _is_audio(out[0])):
            return self.audio_out_until - time.monotonic() - C.AUDIO_LEAD_S
        if self.hello.mode == "receive" and isinstance(out, np.ndarray):
            # a schedule of frame times, so the generator's own time per frame does not slow
            # the video down; a generator that falls behind goes on at once, without a burst
            now = time.monotonic()
            period = 1.0 / self.output_fps
            due = now if self._video_due is None else self._video_due
            self._video_due = max(due + period, now)
            return self._video_due - now
        return 0.0

    def clear_audio(self) -> None:
        """An interrupted reply: the client's queued audio goes, and so does any the handler
        made before now (clear_gen), and the reply's pacing wait ends."""
        with self.cond:
            self.clear_gen += 1
            _OWN_CLEAR.set(self.clear_gen)
            self.audio_out_until = time.monotonic()
            self.cond.notify_all()
        self.channel.send_control(ClearAudio())
        cut = self._async_pace_cut
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
            with self.cond:
                for out_pos, arg_pos in layout.feedback.items():
                    if arg_pos < len(self.args):
                        self.args[arg_pos] = values[out_pos]
                        self.fed_back.add(arg_pos)
        others = [v for i, v in enumerate(values) if i != layout.media]
        if others:
            self._send_outputs(others, OUTPUTS_STREAM)
        return None if layout.media is None else values[layout.media]

    def _send_outputs(self, values: list[Any], kind: str = OUTPUTS_ADDITIONAL) -> None:
        self.outputs_seq += 1
        try:
            self.channel.send_control(Outputs(self.outputs_seq, values, kind))
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


def _thread_cpu_s(thread: threading.Thread) -> float:
    """CPU seconds a live thread has used (0 once it has ended)."""
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))  # type: ignore[arg-type]
    except (OSError, TypeError, ValueError):
        return 0.0


def _join_handler_threads(
    threads: list[threading.Thread], timeout: float, can_park: bool
) -> tuple[list[threading.Thread], bool]:
    """Join a session's handler threads for up to ``timeout`` s. Returns the ones still
    blocked inside the handler and using no CPU (parked: the seeds' EchoHandler waits in
    ``queue.get()`` forever once the audio stops), and whether any other is still alive
    (stuck). With ``can_park`` False every thread still alive is stuck."""
    cpu0 = {t: _thread_cpu_s(t) for t in threads}
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t for t in threads if t.is_alive()]
    if not can_park:
        return [], bool(alive)
    parked = [t for t in alive if _thread_cpu_s(t) - cpu0[t] < PARKED_THREAD_CPU_S]
    return parked, len(parked) < len(alive)


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class _Hooks(_SessionHooks):
    def __init__(self, session: Session) -> None:
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
        self.session.clear_audio()


def _refuse(conn: socket.socket, reason: str) -> None:
    """Tell a peer its session will not start (a Close as the first message), then hang up."""
    data = Close(reason).encode()
    if conn.type == socket.SOCK_STREAM:
        data = STREAM_LENGTH.pack(len(data)) + data
    try:
        conn.settimeout(REFUSE_SEND_TIMEOUT_S)
        conn.sendall(data)
    except OSError:
        pass
    finally:
        conn.close()
    log.warning("refused a session: %s", reason)


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


def _node_ip() -> str:
    """The address other nodes reach this one at (Ray's own view of it); loopback outside Ray."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except Exception:
        pass
    return "127.0.0.1"


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:
        pass
    return ""


__all__ = ["Worker", "Session", "as_rgb24", "as_audio"]
