"""The worker actor: one process holding one user handler, serving one session at a time.

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

The session itself is workers/process/session.py, the loops that call the handler
workers/process/drivers.py.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import select
import socket
import struct
import threading
import time
import uuid
from dataclasses import replace
from typing import Any

from workers.link import constants as C
from workers.link.connect import TCP_SCHEME, read_first_control
from workers.link.messages import WorkerInfo, WorkerStats
from workers.link.wire import STREAM_LENGTH, Close, Hello, WireError
from workers.process.drivers import driver_for
from workers.process.loader import HandlerSpec, load
from workers.process.node import node_id, node_ip, pin_priority
from workers.process.session import HeldSession, WorkerSession

log = logging.getLogger("rtcpool.worker")

ACCEPT_INTERVAL_S = 0.5  # the accept loop wakes this often to notice shutdown
LISTEN_BACKLOG = 8
# A gateway writes its hello right after connecting: on loopback or a LAN it arrives within
# milliseconds. A peer silent this long is not a gateway, and only its own thread waited.
HELLO_TIMEOUT_S = 2.0
MAX_HELLO_THREADS = 16  # connections read at once; beyond that a new one is closed unread
REFUSE_SEND_TIMEOUT_S = 1.0  # a refused peer gets this long to take its Close


class Worker:
    """Ray actor body. ``spec`` says how to get the user's handler (workers/process/loader.py)."""

    def __init__(self, spec: HandlerSpec, event_id: str = "", tcp_host: str | None = None) -> None:
        """``tcp_host``: the address the TCP listener binds (default: this node's, as Ray
        sees it; the embedded local Ray passes loopback, since no other host connects)."""
        self.event_id = event_id
        self.spec = spec  # sessions read the event's stream_every and outputs from it
        pin_priority()
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
        host = tcp_host or node_ip()
        self.tcp_listener = socket.create_server(
            (host, 0), family=socket.AF_INET6 if ":" in host else socket.AF_INET, backlog=LISTEN_BACKLOG
        )
        port = self.tcp_listener.getsockname()[1]
        self.tcp_endpoint = f"{TCP_SCHEME}[{host}]:{port}" if ":" in host else f"{TCP_SCHEME}{host}:{port}"
        self.sessions_served = 0
        self.parked_threads: list[threading.Thread] = []  # left blocked in handlers by past sessions
        self.session: WorkerSession | None = None
        # the handler of a session whose link was lost (its media process died), kept for a
        # resume until its deadline (docs/failover.md); serve-thread only
        self.held: HeldSession | None = None
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

    def ready(self) -> WorkerInfo:
        return WorkerInfo(self.endpoint, self.tcp_endpoint, self.token, os.getpid(), node_id(), socket.gethostname())

    def stats(self) -> WorkerStats:
        s = self.session
        channel = replace(s.channel.stats) if s is not None else None  # a copy: the session goes on counting
        return WorkerStats(os.getpid(), self.sessions_served, s is not None, channel)

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
                self._expire_held()
                continue
            conn, hello, read_at = accepted
            # A hello waits here only while the previous session winds down (its lease was
            # released as its link closed, and the next one armed). One older than the
            # gateway's own wait for Ready was given up on.
            if time.monotonic() - read_at > C.WORKER_CONNECT_TIMEOUT_S:
                log.warning("dropped a session whose gateway stopped waiting for it")
                conn.close()
                continue
            held, self.held = self.held, None
            if held is not None and not (hello.resume and hello.session_id == held.session_id):
                held.release()  # another session's lease came: nobody resumes this one
                held = None
            try:
                session = WorkerSession.open(self.handler, self.spec, conn, hello, held)
            except Exception as exc:
                log.warning("refused a session: %s", exc)
                conn.close()
                continue
            self.session = session
            try:
                session.run(driver_for(session).loops(), self.parked_threads)
            finally:
                self.session = None
                self.sessions_served += 1
            self.held = session.held()
            if self.held is not None:
                log.warning("session %s lost its link: its handler is held %.0f s for a resume", hello.session_id, hello.resume_grace_s)
            if session.retire:
                log.error("handler threads did not stop (%s); exiting so the pool replaces this worker",
                          "still running" if session.stuck else f"{len(self.parked_threads)} parked")
                os._exit(3)


    def _expire_held(self) -> None:
        held = self.held
        if held is not None and time.monotonic() > held.deadline:
            self.held = None
            log.info("session %s was not resumed in time: its handler is shut down", held.session_id)
            held.release()


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


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


__all__ = ["HELLO_TIMEOUT_S", "Worker"]
