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

import inspect
import logging
import os
import select
import socket
import struct
import threading
import traceback
import uuid
from typing import Any

import numpy as np

from runtime import constants as C
from runtime.channel import FrameChannel, Segment
from runtime.wire import (
    Args,
    Close,
    Control,
    Error,
    Hello,
    Message,
    Outputs,
    Ready,
    SlotHeader,
    WireError,
)
from workers.handlers import AdditionalOutputs, CloseStream, StreamHandlerBase
from workers.loader import HandlerSpec, load

log = logging.getLogger("rtcpool.worker")

POLL_INTERVAL_S = 0.1  # the link reader wakes this often to notice shutdown and flush
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
        self.handler = load(spec)
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
    """One session in a worker: the link reader runs on the serve thread, the handler on its own."""

    def __init__(self, worker: Worker, conn: socket.socket, hello: Hello, up: Segment, down: Segment) -> None:
        self.worker = worker
        self.hello = hello
        self.args: list[Any] = list(hello.args)
        self.cond = threading.Condition()
        self.stopping = False
        self.stop_reason = ""
        self.stuck = False
        self.outputs_seq = 0
        self.handler = worker.handler.copy() if isinstance(worker.handler, StreamHandlerBase) else worker.handler
        if isinstance(self.handler, StreamHandlerBase):
            self.handler._hooks = _Hooks(self)
            if hello.args_set:
                self.handler.set_args(self.args)
        self.channel = FrameChannel(
            conn,
            tx=down,
            rx=up,
            on_video=self._wake,
            on_control=self._on_control,
            on_closed=self._on_closed,
        )

    @classmethod
    def open(cls, worker: Worker, conn: socket.socket) -> Session:
        conn.settimeout(C.WORKER_CONNECT_TIMEOUT_S)
        data = conn.recv(64 * 1024)
        hello = Control.decode(data) if data else None
        if not isinstance(hello, Hello):
            raise WireError("the first message of a session must be hello")
        up = Segment.attach(hello.up_segment)
        try:
            down = Segment.attach(hello.down_segment)
        except Exception:
            up.close()
            raise
        session = cls(worker, conn, hello, up, down)
        session.channel.send_control(Ready(pid=os.getpid(), node_id=_node_id()))
        return session

    # --- link side (serve thread) ----------------------------------------------------------------

    def run(self) -> None:
        handler_thread = threading.Thread(target=self._handler_main, name="rtcpool-handler", daemon=True)
        handler_thread.start()
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
            handler_thread.join(C.CLOSE_ACK_TIMEOUT_S)
            self.stuck = handler_thread.is_alive()
            if isinstance(self.handler, StreamHandlerBase):
                try:
                    self.handler.shutdown()
                except Exception:
                    log.exception("handler shutdown raised")
            # answers the gateway's Close (or tells it we are done), then unmaps both segments
            ch.close(self.stop_reason, notify=True)

    def stop(self, reason: str) -> None:
        with self.cond:
            if not self.stopping:
                self.stopping = True
                self.stop_reason = reason
            self.cond.notify_all()

    def _wake(self) -> None:
        with self.cond:
            self.cond.notify()

    def _on_control(self, msg: Control) -> None:
        if isinstance(msg, Args):
            self.args = list(msg.args)
            if isinstance(self.handler, StreamHandlerBase):
                self.handler.set_args(self.args)

    def _on_closed(self, reason: str) -> None:
        self.stop(reason)

    # --- handler side (handler thread) ---------------------------------------------------------

    def _handler_main(self) -> None:
        try:
            if isinstance(self.handler, StreamHandlerBase):
                self.handler.start_up()
                self._report(NotImplementedError(f"{type(self.handler).__name__} sessions are not supported yet"))
                return
            self._video_function_loop()
        except Exception as exc:  # the loop itself failing ends the session, reported
            self._report(exc)
            self.stop(f"handler loop failed: {exc}")

    def _video_function_loop(self) -> None:
        fn = self.handler
        ch = self.channel
        cond = self.cond
        while True:
            with cond:
                while not self.stopping and not ch.has_video():
                    cond.wait(POLL_INTERVAL_S)
                if self.stopping:
                    return
            got = ch.take_video()
            if got is None:
                continue
            header, view = got
            # a copy, so a handler may modify or keep its frame, as with gradio_webrtc
            frame = view.copy()
            ch.release_video()
            try:
                out = fn(frame, *self.args)
                if inspect.isgenerator(out):
                    for item in out:
                        if self._emit(item, header):
                            return
                elif self._emit(out, header):
                    return
            except Exception as exc:
                self._report(exc)

    def _emit(self, out: Any, header: SlotHeader) -> bool:
        """Send one handler result. True when the handler asked to end the stream."""
        if out is None:
            return False
        if isinstance(out, CloseStream):
            self.channel.send_control(Message("end_stream", out.msg))
            self.stop(out.msg)
            return True
        if isinstance(out, AdditionalOutputs):
            self._send_outputs(out)
            return False
        if isinstance(out, tuple) and out and isinstance(out[-1], AdditionalOutputs):
            self._send_outputs(out[-1])
            out = out[0] if len(out) == 2 else out[:-1]
            if out is None:
                return False
        self.channel.send_video(as_rgb24(out), header.pts, (header.time_base_num, header.time_base_den))
        return False

    def _send_outputs(self, out: AdditionalOutputs) -> None:
        self.outputs_seq += 1
        self.channel.send_control(Outputs(self.outputs_seq, list(out.args)))

    def _report(self, exc: BaseException) -> None:
        log.warning("handler raised: %s", "".join(traceback.format_exception(exc)))
        try:
            self.channel.send_control(Error(f"{type(exc).__name__}: {exc}"))
        except Exception:
            pass


class _Hooks:
    def __init__(self, session: Session) -> None:
        self.session = session

    def send(self, type_: str, data: Any) -> None:
        self.session.channel.send_control(Message(type_, data))

    def request_args(self) -> None:
        self.session.channel.send_control(Message("send_input", None))


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:
        pass
    return ""


__all__ = ["Worker", "Session", "as_rgb24", "Close"]
