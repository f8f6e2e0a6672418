"""A session, whatever its client speaks: one client bound to one worker for its whole life.

This module holds what every session shares: the lease, the link to the worker (its socket,
its backlog, the worker's control messages), the client's inputs and outputs, the watchdog,
and the one way to end. The client side is a sibling's: the WebRTC session
(runtime/media/webrtc_session.py: peer connection, tracks, data channel) or the WebSocket
and phone session (runtime/media/ws_session.py).

A session depends on the small :class:`SessionHost` protocol, not on the engine that holds
it (runtime/media/engine.py, in the app's process or in a media process).

Every way a session ends goes through :meth:`Session.aclose`, which is idempotent and gives
back everything: the client side, the link and both segments, the watchdog and media
tasks, and the scheduler lease (marking the worker for replacement if it misbehaved).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from runtime import constants as C
from runtime.control.leases import LeaseGrant
from runtime.errors import EndReason
from runtime.guard.limits import Admission, PerSessionCount, TokenBucket
from runtime.media.budget import END
from runtime.ops.metrics import EngineCounters, FailoverCause, LiveSessionStats
from workers.link.channel import FrameChannel
from workers.link.connect import offer_link, worker_socket
from workers.link.shape import Transport
from workers.link.wire import (
    CLOSE_MEMORY_LIMIT,
    Args,
    ClearAudio,
    Close,
    Control,
    Error,
    Hello,
    Message,
    Outputs,
    OutputsKind,
    Ready,
    Snapshot,
    WireError,
)

if TYPE_CHECKING:
    from runtime.config import Config
    from runtime.media.stream_event import StreamEvent
    from workers.link.shm import Geometry

log = logging.getLogger("rtcpool.session")


class SessionHost(Protocol):
    """What a session needs of the engine that holds it."""

    config: Config
    geometry: Geometry
    scheduler: Any  # the scheduler actor's handle
    node_id: str  # the engine's Ray node: a worker elsewhere is reached over TCP
    counters: EngineCounters  # what /metrics reports of this engine (bumped per session, never per frame)

    async def session_ended(self, session: Session) -> None:
        """Called once, last, by :meth:`Session.aclose`: forget it, give its lease back."""


class AudioOut(Protocol):
    """Where a session puts the worker's audio for its client: a WebRTC track, or the
    WebSocket sender. ``drained`` is set while nothing waits to be played."""

    drained: asyncio.Event

    def push(self, header: Any, samples: Any) -> None: ...

    def clear(self) -> None: ...

    def stop(self) -> None: ...


WATCHDOG_INTERVAL_S = 0.25  # how often connect timeout, inactivity and time limit are checked
OUTPUTS_QUEUE_MAX = 1024  # AdditionalOutputs kept for a consumer that is not reading
END_DRAIN_MAX_S = 30.0  # a stream the handler ended plays out its queued audio for at most this long
PLAYOUT_MARGIN_S = 0.2  # after the last frame is sent, for the client's jitter buffer to play it


class WorkerGone(Exception):
    pass


def client_json(obj: dict[str, Any]) -> str:
    """A message to the client as JSON text; a value JSON cannot hold is sent as its str."""
    try:
        return json.dumps(obj, default=str)
    except (TypeError, ValueError):
        return json.dumps({"type": obj.get("type"), "data": str(obj.get("data"))})


class Session:
    """The transport-neutral part of a session. A sibling subclass gives it a client side:
    ``client_kind`` (what the worker tells the handler, wire.Hello.client_kind), its start
    method, :meth:`_send_json`, and the hooks :meth:`_on_worker_video`,
    :meth:`_stop_client_media` and :meth:`_close_client`."""

    client_kind: Transport
    video_codec = ""  # the negotiated video codec ("h264", "vp8"); a WebRTC session says which

    def __init__(self, host: SessionHost, event: StreamEvent, webrtc_id: str, lease: LeaseGrant) -> None:
        self.host = host
        self.event = event
        self.webrtc_id = webrtc_id
        self.lease = lease
        self.lease_id = lease.lease_id
        self.worker_pid = lease.pid
        self.transport = ""  # "shm" or "tcp" once the worker is connected
        self.loop = asyncio.get_running_loop()
        self.channel: FrameChannel | None = None
        self.audio_out: AudioOut | None = None
        self.audio_in_rate = 0
        self.audio_in_layout = "mono"
        self.audio_out_rate = 0  # the handler's output_sample_rate (wire.Ready)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closed = False
        self._closing: asyncio.Task[None] | None = None
        self._link_closed = asyncio.Event()
        self.handler_ended = False  # the worker said end_stream: the handler ended the stream
        self.worker_ok = True
        self._writing = False  # a writer callback is flushing the channel's backlog
        self.created_at = time.monotonic()
        self.connected_at: float | None = None
        self.media_since: float | None = None
        self.last_media = time.monotonic()
        self.frames_in = 0
        self.frames_skipped_in = 0  # decoded while the loop was busy, superseded by newer ones
        self.dropped_over_budget = 0  # audio chunks and RTP packets over the real-time budget
        self._warned_budget = False
        self.frames_out = 0
        self.outputs: asyncio.Queue[list[Any]] = asyncio.Queue(OUTPUTS_QUEUE_MAX)
        # what a function returned for its stream's own non-WebRTC outputs (the page's
        # stream-outputs event fetches them, one per fetch_output like AdditionalOutputs)
        self.stream_outputs: asyncio.Queue[list[Any]] = asyncio.Queue(OUTPUTS_QUEUE_MAX)
        self.on_outputs: list[Callable[[list[Any]], None]] = []
        # outputs are fetched one per fetch_output (the page) from ``outputs``; an SSE client
        # gets a queue of its own in ``subscribers``
        self.subscribers: list[asyncio.Queue[list[Any]]] = []
        self.args: list[Any] = list(event.initial_args)
        self.args_set = False
        # what this client may make the gateway do (gateway.limits)
        lc = host.config.gateway.limits
        self.admission: Admission | None = None  # its address's hold, given back when it ends
        self.client = ""  # its address as the limits count it (an IPv4 address, an IPv6 /64)
        self.first_output_at: float | None = None  # the first processed frame (or audio) back
        self.end_reason: EndReason | None = None  # set once it ends (aclose)
        self.counted = False  # counted as started (its end is counted then, and only then)
        self.end_detail = ""
        self.readers = PerSessionCount.readers(lc.max_sse_readers_per_session)
        self.input_rate = TokenBucket(lc.max_input_posts_per_s, lc.input_post_burst)
        # failover (docs/failover.md): the handler's latest snapshot (packed, never unpacked
        # here), when its workers died (monotonic), and whether a new one is being connected
        self.snapshot: bytes | None = None
        self.restarts: list[float] = []
        self.restarts_total = 0
        self.failing_over = False

    # --- the worker link --------------------------------------------------------------------------

    def _choose_transport(self) -> str:
        """Shared memory when the worker shares this node (and its /dev/shm), TCP otherwise."""
        wanted = self.host.config.gateway.transport
        if wanted != "auto":
            return wanted
        local = self.lease.node_id == self.host.node_id or not self.lease.tcp_endpoint
        return "shm" if local else "tcp"

    async def _connect_worker(self) -> None:
        self.transport = self._choose_transport()
        endpoint = self.lease.endpoint if self.transport == "shm" else self.lease.tcp_endpoint
        sock, address = worker_socket(endpoint)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(self.loop.sock_connect(sock, address), C.WORKER_CONNECT_TIMEOUT_S)
            ready = self.loop.create_future()
            policy = self.lease.failover
            hello = Hello(
                self.webrtc_id, "", "", self.event.mode, self.event.modality, self.args, self.args_set,
                token=self.lease.token, client_kind=self.client_kind, state=self.snapshot,
                snapshot_interval_s=policy.snapshot_interval_s, max_snapshot_bytes=policy.max_snapshot_bytes,
                restarts=self.restarts_total, resume_grace_s=self.host.config.gateway.resume_grace_s,
                memory_limit_mb=policy.worker_memory_limit_mb,
                resume=self.lease.resumed,
            )  # fmt: skip
            self.channel = offer_link(
                sock,
                hello,
                self.host.geometry,
                on_video=self._on_worker_video,
                on_audio=self._on_worker_audio,
                on_control=lambda m: self._on_first_control(m, ready),
                on_closed=self._on_link_closed,
            )
            self.loop.add_reader(sock.fileno(), self._on_readable)
            await asyncio.wait_for(ready, C.WORKER_CONNECT_TIMEOUT_S)
            self.channel.on_control = self._on_control
        except BaseException as exc:
            self.worker_ok = False
            if self.channel is None:
                sock.close()
            raise WorkerGone(f"worker {self.worker_pid} did not take the session: {exc!r}") from exc

    def _on_readable(self) -> None:
        assert self.channel is not None  # the reader is added once the channel exists
        self.channel.pump()
        self._watch_backlog()

    def _watch_backlog(self) -> None:
        """Messages that did not fit the socket wait in the channel's backlog: flush them as
        soon as the link is writable again, not at the next read."""
        ch = self.channel
        if ch is not None and ch.has_backlog and not self._writing and not ch.closed:
            self._writing = True
            self.loop.add_writer(ch.sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        ch = self.channel
        assert ch is not None
        ch.flush()
        if not ch.has_backlog or ch.closed:
            self._writing = False
            try:
                self.loop.remove_writer(ch.sock.fileno())
            except (ValueError, OSError):
                pass

    def _on_first_control(self, msg: Control, ready: asyncio.Future[None]) -> None:
        if isinstance(msg, Ready) and not ready.done():
            self.audio_in_rate, self.audio_in_layout = msg.audio_in_rate, msg.audio_in_layout
            self.audio_out_rate = msg.audio_out_rate
            ready.set_result(None)
        else:
            self._on_control(msg)

    # --- worker -> gateway ----------------------------------------------------------------------

    def _on_worker_video(self) -> None:
        """A processed frame is waiting in the link: a client side that shows video wakes
        its sender."""

    def _on_worker_audio(self, header: Any, samples: Any) -> None:
        if self.first_output_at is None:
            self.first_output()
        if self.audio_out is not None:
            self.audio_out.push(header, samples)

    def _on_control(self, msg: Control) -> None:
        if isinstance(msg, Snapshot):
            # the worker bounds it too; a worker is not trusted to
            if len(msg.state) <= self.lease.failover.max_snapshot_bytes:
                self.snapshot = msg.state
                self.host.counters.snapshot_taken()
        elif isinstance(msg, Outputs):
            values = msg.values
            if msg.kind == OutputsKind.STREAM:
                queues: tuple[asyncio.Queue[list[Any]], ...] = (self.stream_outputs,)
            else:
                for fn in self.on_outputs:
                    fn(values)
                queues = (self.outputs, *self.subscribers)
            for queue in queues:
                if queue.full():
                    queue.get_nowait()  # a consumer that does not read loses the oldest
                queue.put_nowait(values)
            self.send_client("fetch_output", None)
        elif isinstance(msg, ClearAudio):
            if self.audio_out is not None:
                self.audio_out.clear()
        elif isinstance(msg, Error):
            self.send_client_error(msg.message)
        elif isinstance(msg, Message):
            if msg.type == "end_stream":
                self.handler_ended = True
                self._spawn(self._end_after_playout(msg.data))
            elif msg.type == "warning":
                # the client's shape of a warning is {"type": "warning", "message": str}
                self.send_client_warning(str(msg.data))
            else:
                self.send_client(msg.type, msg.data)

    async def _end_after_playout(self, data: Any) -> None:
        """The handler ended the stream (a generator finished, CloseStream): the worker sent
        its last audio before saying so, and the client stops as soon as it hears end_stream,
        so the audio queued here is played out first (the worker runs ahead of real time)."""
        out = self.audio_out
        if out is not None and not out.drained.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(out.drained.wait(), END_DRAIN_MAX_S)
            await asyncio.sleep(PLAYOUT_MARGIN_S)
        self.send_client("end_stream", data)
        self.close_soon(EndReason.HANDLER_ENDED, "handler ended the stream", delay=C.END_STREAM_GRACE_S)

    def _on_link_closed(self, reason: str) -> None:
        self._link_closed.set()
        if self.closed:
            return
        peer = self.channel.peer_close if self.channel is not None else None
        if self.handler_ended and peer is not None:
            # the handler ended the stream and the worker closed its side cleanly: the
            # session ends once its audio has played out (_end_after_playout)
            if peer.retire:
                self.worker_ok = False
            return
        # the worker ended the link without being asked: its process died or gave up (or
        # passed its memory limit). The client's side stays; a fresh worker takes over
        self.worker_ok = False
        cause = FailoverCause.WORKER_DIED
        if peer is not None and peer.cause == CLOSE_MEMORY_LIMIT:
            cause, reason = FailoverCause.WORKER_MEMORY, f"it passed the pool's memory limit of {self.lease.failover.worker_memory_limit_mb} MB"
        else:
            self.host.counters.worker_died(self.event.event_id)
        if not self.failing_over:
            self.failing_over = True
            self._spawn(self._failover(reason, cause))

    async def _failover(self, reason: str, cause: FailoverCause = FailoverCause.WORKER_DIED) -> None:
        """Give the session a fresh worker for its lease (its slot kept), the inputs and the
        handler's latest snapshot with it, and tell the client once. A session whose workers
        died more than ``max_restarts`` times within ``restart_window_s`` ends instead."""
        policy = self.lease.failover
        started = time.monotonic()
        while not self.closed:
            self._drop_channel()
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < policy.restart_window_s]
            if len(self.restarts) >= policy.max_restarts:
                self.host.counters.restart_refused(self.event.event_id)
                self._end_worker_failed(
                    EndReason.CRASH_LOOP,
                    f"the handler's worker stopped {len(self.restarts) + 1} times within {policy.restart_window_s:.0f} s "
                    f"(last: {reason}); the session ends rather than restart it again",
                )
                return
            self.restarts.append(now)
            self.restarts_total += 1
            log.warning(
                "session %s: worker pid %s stopped (%s): restarting the handler on a fresh worker (restart %d)",
                self.webrtc_id, self.worker_pid, reason, self.restarts_total,
            )  # fmt: skip
            try:
                grant = await asyncio.wait_for(
                    self.host.scheduler.failover.remote(self.lease_id, self.host.node_id), C.LEASE_TIMEOUT_S + C.RAY_CALL_TIMEOUT_S
                )
            except Exception as exc:
                grant = exc
            if not isinstance(grant, LeaseGrant):
                why = getattr(grant, "message", None) or repr(grant)
                self._end_worker_failed(EndReason.WORKER_DIED, f"the worker for this stream stopped ({reason}) and none took over: {why}")
                return
            self.lease, self.worker_pid, self.worker_ok = grant, grant.pid, True
            self._link_closed = asyncio.Event()
            try:
                await self._connect_worker()
            except WorkerGone as exc:
                reason = str(exc)
                continue
            break
        else:
            return
        self.failing_over = False
        self._on_worker_connected()
        self.host.counters.failover(self.event.event_id, cause, time.monotonic() - started)
        kept = " with its saved state" if self.snapshot is not None else ""
        self.send_client_warning(f"the handler restarted{kept}: its worker stopped ({reason})")
        log.info(
            "session %s: worker pid %s took over%s after %.2f s",
            self.webrtc_id, self.worker_pid, kept, time.monotonic() - started,
        )  # fmt: skip

    def _drop_channel(self) -> None:
        """Let go of a dead worker's link: no reader on its socket, its segments unmapped."""
        ch, self.channel = self.channel, None
        if ch is None:
            return
        try:
            self.loop.remove_reader(ch.sock.fileno())
            if self._writing:
                self.loop.remove_writer(ch.sock.fileno())
        except (ValueError, OSError):
            pass
        self._writing = False
        ch.close("worker gone", notify=False)

    def _on_worker_connected(self) -> None:
        """A worker took the session over (failover): a client side re-wires its media."""

    def _end_worker_failed(self, reason: EndReason, detail: str) -> None:
        self.send_client_error(detail)
        self.send_client("end_stream", {"reason": "worker_failed"})
        self.close_soon(reason, detail, delay=0.05)

    def _media_arrived(self) -> None:
        now = time.monotonic()
        self.last_media = now
        if self.media_since is None:
            # the time limit counts from here, and the scheduler's backstop too
            self.media_since = now
            self._spawn(self._mark_streaming())

    async def _mark_streaming(self) -> None:
        try:
            await asyncio.wait_for(self.host.scheduler.mark_streaming.remote(self.lease_id), C.RAY_CALL_TIMEOUT_S)
        except Exception as exc:
            log.warning("session %s: scheduler did not take mark_streaming: %s", self.webrtc_id, exc)

    # --- arguments ---------------------------------------------------------------------------------

    def set_args(self, args: list[Any]) -> None:
        self.args = list(args)
        self.args_set = True
        if self.channel is not None and not self.channel.closed:
            try:
                self.channel.send_control(Args(self.args))
            except (TypeError, WireError) as exc:
                self.send_client_warning(f"inputs cannot reach the worker: {exc}")
            self._watch_backlog()

    def over_budget(self, what: str, verdict: int) -> None:
        """``what`` came faster than the session's real-time budget and was dropped
        (runtime/media/budget.py): one warning; a sustained excess (END) ends the session."""
        self.dropped_over_budget += 1
        if not self._warned_budget:
            self._warned_budget = True
            log.warning("session %s: %s faster than real time: the excess is dropped", self.webrtc_id, what)
            self.send_client_warning(f"{what} arrive faster than real time: the excess is dropped")
        if verdict == END and self._closing is None and not self.closed:
            self.send_client("end_stream", {"reason": EndReason.OVER_BUDGET.value})
            # after the same grace as a time limit, so the client reads end_stream first
            self.close_soon(EndReason.OVER_BUDGET, f"{what} faster than real time, sustained", delay=C.END_STREAM_GRACE_S)

    # --- messages to the client ----------------------------------------------------------------------

    def send_client(self, type_: str, data: Any) -> None:
        self._send_json({"type": type_, "data": data})

    def send_client_error(self, message: str) -> None:
        self._send_json({"type": "error", "message": message})

    def send_client_warning(self, message: str) -> None:
        self._send_json({"type": "warning", "message": message})

    def _send_json(self, obj: dict[str, Any]) -> None:
        """A message to the client, the sibling's way (a data channel, a socket)."""
        raise NotImplementedError

    # --- watchdog --------------------------------------------------------------------------------------

    async def _watchdog(self) -> None:
        cfg = self.host.config.gateway
        time_limit = self.event.time_limit
        while not self.closed:
            # wake at the time limit itself, not at the next check after it (measured by
            # scripts/bench_queue.py: ~0.2 s late, which the next user in line waited too)
            delay = WATCHDOG_INTERVAL_S
            if time_limit is not None and self.media_since is not None:
                delay = min(delay, max(0.0, self.media_since + time_limit - time.monotonic()))
            await asyncio.sleep(delay)
            now = time.monotonic()
            if self.connected_at is None and now - self.created_at > cfg.connect_timeout_s:
                self.close_soon(EndReason.CONNECT_TIMEOUT, "connect timeout")
                return
            if self.event.shape.client_sends and self.connected_at is not None and now - self.last_media > cfg.media_inactivity_timeout_s:
                self.close_soon(EndReason.CLIENT_GONE, "no media from the client")
                return
            if time_limit is not None and self.media_since is not None and now - self.media_since >= time_limit:
                self.send_client("end_stream", {"reason": "time_limit_reached", "time_limit": time_limit})
                self.close_soon(EndReason.TIME_LIMIT, "time limit reached", delay=C.END_STREAM_GRACE_S)
                return

    # --- ending --------------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def close_soon(self, reason: EndReason, detail: str, delay: float = 0.0) -> None:
        if self._closing is None and not self.closed:
            self._closing = self.loop.create_task(self._close_after(reason, detail, delay))

    async def _close_after(self, reason: EndReason, detail: str, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        await self.aclose(reason, detail)

    def first_output(self) -> None:
        """The handler's first output reached the gateway: offer -> first processed frame."""
        if self.first_output_at is None:
            self.first_output_at = time.monotonic()
            self.host.counters.first_frame(self.first_output_at - self.created_at)

    def stats(self) -> LiveSessionStats:
        """What it has counted so far, for /metrics (read at scrape time, or as it ends)."""
        ch = self.channel
        return LiveSessionStats(
            self.event.event_id,
            self.frames_in,
            self.frames_out,
            self.frames_skipped_in + self.dropped_over_budget + (ch.stats.video_dropped if ch else 0),
            ch.stats.video_superseded if ch else 0,
            ch.handler_hist if ch else None,
            time.monotonic() - self.created_at,
        )

    def log_start(self) -> None:
        log.info(
            "session %s started: stream %s, worker pid %s (%s)",
            self.webrtc_id, self.event.event_id, self.worker_pid, self.transport,
            extra={"rtcpool": {"event": "session_start", "webrtc_id": self.webrtc_id, "stream": self.event.event_id, "worker_pid": self.worker_pid, "worker_node": self.lease.node_id, "transport": self.transport}},
        )  # fmt: skip

    def _log_end(self, reason: str) -> None:
        duration = time.monotonic() - self.created_at
        log.info(
            "session %s ended after %.1f s: %s; frames in %d (skipped %d, over budget %d), out %d; stream %s, worker pid %s",
            self.webrtc_id, duration, reason, self.frames_in, self.frames_skipped_in, self.dropped_over_budget, self.frames_out, self.event.event_id, self.worker_pid,
            extra={"rtcpool": {"event": "session_end", "webrtc_id": self.webrtc_id, "stream": self.event.event_id, "duration_s": round(duration, 3), "reason": reason, "frames_in": self.frames_in, "frames_skipped_in": self.frames_skipped_in, "dropped_over_budget": self.dropped_over_budget, "frames_out": self.frames_out, "worker_pid": self.worker_pid}},
        )  # fmt: skip

    async def aclose(self, reason: EndReason = EndReason.OTHER, detail: str = "closed") -> None:
        """End the session and give everything back. Safe to call twice, from any path.
        ``reason`` is what /metrics counts; ``detail`` what the log, the worker and a
        WebSocket client's close frame are told."""
        if self.closed:
            return
        self.closed = True
        self.end_reason, self.end_detail = reason, detail
        self._log_end(detail)
        current = asyncio.current_task()
        for task in list(self.tasks):
            if task is not current:
                task.cancel()
        self._stop_client_media()
        ch = self.channel
        if ch is not None:
            if not ch.closed:
                # ask the worker to end its session and wait for its Close: a worker that
                # does not answer is replaced rather than handed to the next user
                try:
                    ch.send_control(Close(detail))
                    await asyncio.wait_for(self._link_closed.wait(), C.CLOSE_ACK_TIMEOUT_S)
                except (TimeoutError, OSError, WireError):
                    self.worker_ok = False
            if ch.peer_close is not None and ch.peer_close.retire:
                self.worker_ok = False  # its handler would not stop: the pool replaces it
            try:
                self.loop.remove_reader(ch.sock.fileno())
                if self._writing:
                    self.loop.remove_writer(ch.sock.fileno())
            except (ValueError, OSError):
                pass
            ch.close(detail, notify=False)
        await self._close_client()
        await self.host.session_ended(self)

    def _stop_client_media(self) -> None:
        """The first step of an end: nothing more is sent to the client."""
        if self.audio_out is not None:
            self.audio_out.stop()

    async def _close_client(self) -> None:
        """The client side's own ending, once the worker's link is closed."""
