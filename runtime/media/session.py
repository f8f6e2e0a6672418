"""One session: one client's peer connection, bound to one worker for its whole life.

Media path (all on its media engine's event loop, nothing optional per frame):
  client track --decode (aiortc)--> yuv420p planes --copied into a slot--> worker (I420 -> RGB there)
  worker (RGB -> I420 there) --slot--> WorkerVideoTrack.recv() --one reused frame, encode--> client

A session depends on the small :class:`SessionHost` protocol, not on the engine that holds
it (runtime/media/engine.py, in the app's process or in a media process).

Every way a session ends goes through :meth:`Session.aclose`, which is idempotent and gives
back everything: the peer connection, the link and both segments, the watchdog and media
tasks, and the scheduler lease (marking the worker for replacement if it misbehaved).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Protocol, cast

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from runtime import constants as C
from runtime.guard import safejson
from runtime.guard.limits import Admission, PerSessionCount, TokenBucket
from runtime.media.encoder import use_gateway_encoder
from runtime.media.frames import (
    I420_FORMAT,
    EncoderFrame,
    newest_frame,
    plane_views,
    rgb_of,
    video_frame_of,
)
from runtime.media.jitter import guard_video, set_audio_prefetch
from runtime.media.vp8_guard import answer_vp8_only
from runtime.ops.metrics import EngineCounters, LiveSessionStats
from workers.link.channel import FrameChannel
from workers.link.connect import offer_link, worker_socket
from workers.link.wire import (
    CLIENT_WEBRTC,
    OUTPUTS_STREAM,
    PIXFMT_I420,
    ClearAudio,
    Close,
    Control,
    Error,
    Hello,
    Message,
    Outputs,
    Ready,
    WireError,
)

if TYPE_CHECKING:
    from runtime.config import Config
    from runtime.control.leases import LeaseGrant
    from runtime.media.engine import StreamEvent
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

WATCHDOG_INTERVAL_S = 0.25  # how often connect timeout, inactivity and time limit are checked
VIDEO_IN_FLIGHT = 1  # input frames waiting at the worker (it copies a frame out before its handler runs)
AUDIO_OUT_RATE = 48_000  # Hz: what aiortc's Opus encoder takes
AUDIO_OUT_FRAME_SAMPLES = int(AUDIO_OUT_RATE * C.AUDIO_FRAME_S)
AUDIO_OUT_FRAME_BYTES = AUDIO_OUT_FRAME_SAMPLES * 2 * 2  # stereo s16
AUDIO_OUT_MAX_BYTES = int(C.AUDIO_OUT_MAX_S / C.AUDIO_FRAME_S) * AUDIO_OUT_FRAME_BYTES
AUDIO_OUT_MAX_LAG_S = 0.2  # an output clock this far behind restarts instead of bursting
OUTPUTS_QUEUE_MAX = 1024  # AdditionalOutputs kept for a consumer that is not reading
END_DRAIN_MAX_S = 30.0  # a stream the handler ended plays out its queued audio for at most this long
PLAYOUT_MARGIN_S = 0.2  # after the last frame is sent, for the client's jitter buffer to play it


class WorkerGone(Exception):
    pass


class WorkerVideoTrack(MediaStreamTrack):
    """The processed video: whatever the worker last produced, latest-frame-wins."""

    kind = "video"

    def __init__(self, session: Session) -> None:
        super().__init__()
        self._session = session
        self._wake = asyncio.Event()
        self._last_pts = -1
        # Reused for every I420 frame. Safe because the previous frame's encode is over when
        # recv() runs again: aiortc's RTCRtpSender._next_encoded_frame awaits recv(), then
        # awaits the encode (run_in_executor(encoder.encode)), and _run_rtp calls it again
        # only after that; our encoder (runtime/media/encoder.py, aiortc's Vp8Encoder under it) and
        # aiortc's H.264 one encode with no lag (lag-in-frames 0, x264 zerolatency), so
        # libvpx/x264 have copied the picture before encode() returns and nothing keeps it.
        self._encoder_frame = EncoderFrame()

    def wake(self) -> None:
        self._wake.set()

    async def recv(self) -> av.VideoFrame:
        session = self._session
        while True:
            if self.readyState != "live" or session.closed:
                raise MediaStreamError
            channel = session.channel
            got = channel.take_video() if channel is not None else None
            if got is not None:
                break
            self._wake.clear()
            if channel is not None and channel.has_video():
                continue
            await self._wake.wait()
        assert channel is not None  # a frame was taken from it
        header, view = got
        if header.layout == PIXFMT_I420:
            # the worker wrote the encoder's own layout: the planes are copied, not converted
            _, y, u, v = channel.i420_planes(header)
            frame = self._encoder_frame.fill(y, u, v)
        else:
            frame = video_frame_of(view)  # the RGB24 fallback form: converted (so copied)
        channel.release_video()
        # the encoder needs rising pts; a handler may emit several frames for one input
        pts = header.pts if header.pts > self._last_pts else self._last_pts + 1
        self._last_pts = pts
        frame.pts = pts
        frame.time_base = Fraction(header.time_base_num, header.time_base_den or C.VIDEO_CLOCK_RATE)
        if session.frames_out == 0:
            session.first_output()
        session.frames_out += 1
        return frame

    def stop(self) -> None:
        super().stop()
        self._wake.set()


class WorkerAudioTrack(MediaStreamTrack):
    """The worker's audio, re-framed to 20 ms at 48 kHz stereo and paced to real time.

    The worker's chunks (any size, rate and layout) are resampled into a byte FIFO; recv()
    hands aiortc one 20 ms frame per 20 ms of wall time, silence when the FIFO is empty, so
    the RTP timeline never stalls. The FIFO is bounded: the oldest audio goes first."""

    kind = "audio"

    def __init__(self, session: Session) -> None:
        super().__init__()
        self._session = session
        self._fifo = bytearray()
        self._resamplers: dict[tuple[int, str], av.AudioResampler] = {}
        self._start: float | None = None
        self._frames = 0
        self.dropped_bytes = 0
        self.played_samples = 0  # samples of worker audio (not silence) sent to the client
        self.drained = asyncio.Event()  # set while nothing waits to be played
        self.drained.set()

    def push(self, header: Any, samples: Any) -> None:
        layout = "stereo" if header.layout == 2 else "mono"
        key = (header.sample_rate, layout)
        resampler = self._resamplers.get(key)
        if resampler is None:
            resampler = self._resamplers[key] = av.AudioResampler(format="s16", layout="stereo", rate=AUDIO_OUT_RATE)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout=layout)
        frame.sample_rate = header.sample_rate
        for out in resampler.resample(frame):
            self._fifo += out.to_ndarray().tobytes()
        if self._fifo:
            self.drained.clear()
        excess = len(self._fifo) - AUDIO_OUT_MAX_BYTES
        if excess > 0:
            del self._fifo[:excess]
            self.dropped_bytes += excess

    def clear(self) -> None:
        self._fifo.clear()
        self.drained.set()

    @property
    def buffered_s(self) -> float:
        return len(self._fifo) / AUDIO_OUT_FRAME_BYTES * C.AUDIO_FRAME_S

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None or now - (self._start + self._frames * C.AUDIO_FRAME_S) > AUDIO_OUT_MAX_LAG_S:
            # first frame, or the loop fell far behind: restart the clock rather than burst
            self._start = now - self._frames * C.AUDIO_FRAME_S
        due = self._start + self._frames * C.AUDIO_FRAME_S
        if due > now:
            await asyncio.sleep(due - now)
        frame = av.AudioFrame(format="s16", layout="stereo", samples=AUDIO_OUT_FRAME_SAMPLES)
        n = min(len(self._fifo), AUDIO_OUT_FRAME_BYTES)
        if n:
            self.played_samples += n // 4
        chunk = bytes(self._fifo[:n]) + bytes(AUDIO_OUT_FRAME_BYTES - n)
        del self._fifo[:n]
        if not self._fifo:
            self.drained.set()
        frame.planes[0].update(chunk)
        frame.sample_rate = AUDIO_OUT_RATE
        frame.pts = self._frames * AUDIO_OUT_FRAME_SAMPLES
        frame.time_base = Fraction(1, AUDIO_OUT_RATE)
        self._frames += 1
        return frame


class Session:
    client_kind = CLIENT_WEBRTC  # what the worker tells the handler (wire.Hello.client_kind)

    def __init__(self, host: SessionHost, event: StreamEvent, webrtc_id: str, lease: LeaseGrant) -> None:
        self.host = host
        self.event = event
        self.webrtc_id = webrtc_id
        self.lease = lease
        self.lease_id = lease.lease_id
        self.worker_pid = lease.pid
        self.transport = ""  # "shm" or "tcp" once the worker is connected
        self.loop = asyncio.get_running_loop()
        self.pc: RTCPeerConnection | None = None
        self.channel: FrameChannel | None = None
        self.data_channel: Any = None
        self._pending_messages: list[str] = []
        self.video_out: WorkerVideoTrack | None = None
        self.audio_out: WorkerAudioTrack | None = None
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
        self._deferred_video: Any = None  # newest decoded input frame the worker is not ready for
        self.frames_skipped_in = 0  # decoded while the loop was busy, superseded by newer ones
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
        self._warned_oversize = False
        # what this client may make the gateway do (gateway.limits)
        lc = host.config.gateway.limits
        self.admission: Admission | None = None  # its address's hold, given back when it ends
        self.client = ""  # its address as the limits count it (an IPv4 address, an IPv6 /64)
        self.first_output_at: float | None = None  # the first processed frame (or audio) back
        self.end_reason = ""
        self.candidates = PerSessionCount.candidates(lc.max_candidates_per_session)
        self.readers = PerSessionCount.readers(lc.max_sse_readers_per_session)
        self.input_rate = TokenBucket(lc.max_input_posts_per_s, lc.input_post_burst)
        self.message_rate = TokenBucket(lc.data_channel_messages_per_s, lc.data_channel_message_burst)
        self._warned_rate = False

    # --- start --------------------------------------------------------------------------------

    async def start(self, sdp: str, type_: str) -> RTCSessionDescription:
        """Bind the worker, answer the offer. Raises on any failure, leaving nothing behind
        for the caller but :meth:`aclose`."""
        await self._connect_worker()
        cfg = self.host.config.gateway
        ice = [RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in cfg.ice_servers]
        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        pc.on("connectionstatechange", self._on_connection_state)
        pc.on("datachannel", self._on_datachannel)
        pc.on("track", self._on_track)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=type_))
        set_audio_prefetch(pc, cfg.audio_jitter_prefetch)
        # VP8 only (the frame guard reads VP8 headers; an H.264 frame would pass unchecked),
        # and no key frame over max_frame_pixels reaches the decoder
        answer_vp8_only(pc)
        guard_video(pc, cfg.max_frame_pixels, self._on_oversize_keyframe, release_on_marker=cfg.video_release_on_marker)
        if self.event.mode in ("send-receive", "receive") and self.event.has_video:
            self.video_out = WorkerVideoTrack(self)
            pc.addTrack(self.video_out)
        if self.event.mode in ("send-receive", "receive") and self.event.has_audio:
            self.audio_out = WorkerAudioTrack(self)
            pc.addTrack(self.audio_out)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)  # aiortc gathers all candidates here (no trickle)
        use_gateway_encoder(pc, cfg.vp8_speed, cfg.vp8_denoise)  # before the first frame is sent
        self._spawn(self._watchdog())
        if self.event.mode == "receive":
            self.media_since = time.monotonic()
        return pc.localDescription

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
            hello = Hello(self.webrtc_id, "", "", self.event.mode, self.event.modality, self.args, self.args_set, token=self.lease.token, client_kind=self.client_kind)
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
        if self.video_out is not None:
            self.video_out.wake()

    def _on_worker_audio(self, header: Any, samples: Any) -> None:
        if self.first_output_at is None:
            self.first_output()
        if self.audio_out is not None:
            self.audio_out.push(header, samples)

    def _on_control(self, msg: Control) -> None:
        if isinstance(msg, Outputs):
            values = msg.values
            if msg.kind == OUTPUTS_STREAM:
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
        self.close_soon("handler ended the stream", delay=C.END_STREAM_GRACE_S)

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
        # the worker ended the link without being asked: its process died or gave up
        self.worker_ok = False
        self.host.counters.worker_died(self.event.event_id)
        self.send_client_error(f"the worker for this stream stopped ({reason})")
        self.send_client("end_stream", {"reason": "worker_failed"})
        self.close_soon(f"worker link closed: {reason}", delay=0.05)

    # --- client -> gateway ----------------------------------------------------------------------

    def _on_connection_state(self) -> None:
        assert self.pc is not None
        state = self.pc.connectionState
        if state == "connected" and self.connected_at is None:
            self.connected_at = time.monotonic()
            if self.admission is not None:
                self.admission.connected()  # no longer a pending offer of its address
        elif state in ("failed", "closed"):
            self.close_soon(f"peer connection {state}")

    def _on_oversize_keyframe(self, width: int, height: int) -> None:
        max_pixels = self.host.config.gateway.max_frame_pixels
        log.warning("session %s: refused a %dx%d key frame before decoding", self.webrtc_id, width, height)
        if not self._warned_oversize:
            self._warned_oversize = True
            self.send_client_warning(f"video frames of {width}x{height} exceed the {max_pixels}-pixel limit and are dropped")

    def _on_datachannel(self, channel: Any) -> None:
        if channel.label != "text":
            log.warning("session %s: ignoring data channel %r", self.webrtc_id, channel.label)
            return
        self.data_channel = channel
        channel.on("message", self._on_client_message)
        channel.on("open", self._flush_messages)
        if channel.readyState == "open":
            self._flush_messages()

    def _on_client_message(self, message: Any) -> None:
        if not self.message_rate.take():
            if not self._warned_rate:  # once: a warning per dropped message would be a flood back
                self._warned_rate = True
                self.send_client_warning("too many data channel messages: some are dropped")
            return
        if isinstance(message, bytes) or len(message) > C.MAX_DATA_CHANNEL_MESSAGE_BYTES:
            self.send_client_warning("data channel messages must be JSON text of at most "
                                     f"{C.MAX_DATA_CHANNEL_MESSAGE_BYTES} bytes")
            return
        try:
            msg = safejson.loads(message)
        except safejson.JSONRejected as exc:
            self.send_client_warning(f"data channel message refused: {exc.message}")
            return
        kind = msg.get("type") if isinstance(msg, dict) else None
        if not isinstance(kind, str):
            self.send_client_warning("data channel message is not JSON with a 'type'")
            return
        if kind == "ping":
            self.send_client("pong", msg.get("data"))
        elif kind == "set_input":
            args = msg.get("data")
            if not isinstance(args, list):
                self.send_client_warning("set_input wants a list of values")
                return
            self.set_args(args)
        else:
            self.send_client_warning(f"unknown message type {kind[:40]!r}")

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video" and self.event.has_video and self.event.mode in ("send-receive", "send"):
            self._spawn(self._pump_video_in(track))
        elif track.kind == "audio" and self.event.has_audio and self.audio_in_rate and self.event.mode in ("send-receive", "send"):
            self._spawn(self._pump_audio_in(track))
        else:
            # media this stream does not take: consume it so the receiver does not stall
            self._spawn(self._drain(track))

    async def _drain(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                await track.recv()
                self._media_arrived()
        except MediaStreamError:
            return

    async def _pump_video_in(self, track: MediaStreamTrack) -> None:
        channel = self.channel
        assert channel is not None
        max_pixels = self.host.config.gateway.max_frame_pixels
        try:
            ended = False
            channel.on_video_slot_free = self._send_deferred_video
            while not self.closed and not ended:
                frame = await track.recv()
                frame, skipped, ended = newest_frame(track, frame)
                self.frames_skipped_in += skipped
                self._media_arrived()
                if frame.width * frame.height > max_pixels:
                    if not self._warned_oversize:
                        self._warned_oversize = True
                        self.send_client_warning(
                            f"video frames of {frame.width}x{frame.height} exceed the {max_pixels}-pixel limit and are dropped"
                        )
                    continue
                if self._deferred_video is not None:
                    self.frames_skipped_in += 1
                self._deferred_video = frame
                if channel.video_in_flight() < VIDEO_IN_FLIGHT:
                    self._send_deferred_video()
        except MediaStreamError:
            return

    def _send_deferred_video(self) -> None:
        """Hand over the newest decoded frame, once the worker is ready for it. One frame
        waits at the worker while its handler runs: a frame sent meanwhile would only
        supersede it, so it waits here uncopied and goes when the worker takes the waiting
        one. A yuv420p frame (what VP8 and H.264 decode to) is copied plane by plane into
        the slot, no colour conversion here: the worker converts it for its handler."""
        frame = self._deferred_video
        channel = self.channel
        if frame is None or channel is None or channel.closed or channel.video_in_flight() >= VIDEO_IN_FLIGHT:
            return
        self._deferred_video = None
        tb = frame.time_base or Fraction(1, C.VIDEO_CLOCK_RATE)
        pts, time_base = frame.pts or 0, (tb.numerator, tb.denominator)
        if frame.format.name == I420_FORMAT:
            y, u, v = plane_views(frame)
            channel.send_i420(y, u, v, pts, time_base)
        else:
            channel.send_video(rgb_of(frame), pts, time_base)  # another format: the RGB24 fallback
        self.frames_in += 1
        if channel.has_backlog:
            self._watch_backlog()

    async def _pump_audio_in(self, track: MediaStreamTrack) -> None:
        channel = self.channel
        assert channel is not None
        layout = self.audio_in_layout
        resampler = av.AudioResampler(format="s16", layout=layout, rate=self.audio_in_rate)
        try:
            while not self.closed:
                frame = cast(av.AudioFrame, await track.recv())  # an audio track's frames
                self._media_arrived()
                for out in resampler.resample(frame):
                    channel.send_audio(out.to_ndarray(), out.sample_rate, layout, out.pts or 0)
                if channel.has_backlog:
                    self._watch_backlog()
        except MediaStreamError:
            return

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
        from workers.link.wire import Args

        self.args = list(args)
        self.args_set = True
        if self.channel is not None and not self.channel.closed:
            try:
                self.channel.send_control(Args(self.args))
            except (TypeError, WireError) as exc:
                self.send_client_warning(f"inputs cannot reach the worker: {exc}")
            self._watch_backlog()

    # --- messages to the client ----------------------------------------------------------------------

    def send_client(self, type_: str, data: Any) -> None:
        self._send_json({"type": type_, "data": data})

    def send_client_error(self, message: str) -> None:
        self._send_json({"type": "error", "message": message})

    def send_client_warning(self, message: str) -> None:
        self._send_json({"type": "warning", "message": message})

    def _send_json(self, obj: dict[str, Any]) -> None:
        try:
            text = json.dumps(obj, default=str)
        except (TypeError, ValueError):
            text = json.dumps({"type": obj.get("type"), "data": str(obj.get("data"))})
        dc = self.data_channel
        if dc is not None and dc.readyState == "open":
            dc.send(text)
        else:
            self._pending_messages.append(text)

    def _flush_messages(self) -> None:
        dc = self.data_channel
        while self._pending_messages and dc is not None and dc.readyState == "open":
            dc.send(self._pending_messages.pop(0))

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
                self.close_soon("connect timeout")
                return
            if self.event.mode != "receive" and self.connected_at is not None and now - self.last_media > cfg.media_inactivity_timeout_s:
                self.close_soon("no media from the client")
                return
            if time_limit is not None and self.media_since is not None and now - self.media_since >= time_limit:
                self.send_client("end_stream", {"reason": "time_limit_reached", "time_limit": time_limit})
                self.close_soon("time limit reached", delay=C.END_STREAM_GRACE_S)
                return

    # --- ending --------------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def close_soon(self, reason: str, delay: float = 0.0) -> None:
        if self._closing is None and not self.closed:
            self._closing = self.loop.create_task(self._close_after(reason, delay))

    async def _close_after(self, reason: str, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        await self.aclose(reason)

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
            self.frames_skipped_in + (ch.stats.video_dropped if ch else 0),
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
            "session %s ended after %.1f s: %s; frames in %d (skipped %d), out %d; stream %s, worker pid %s",
            self.webrtc_id, duration, reason, self.frames_in, self.frames_skipped_in, self.frames_out, self.event.event_id, self.worker_pid,
            extra={"rtcpool": {"event": "session_end", "webrtc_id": self.webrtc_id, "stream": self.event.event_id, "duration_s": round(duration, 3), "reason": reason, "frames_in": self.frames_in, "frames_skipped_in": self.frames_skipped_in, "frames_out": self.frames_out, "worker_pid": self.worker_pid}},
        )  # fmt: skip

    async def aclose(self, reason: str = "closed") -> None:
        """End the session and give everything back. Safe to call twice, from any path."""
        if self.closed:
            return
        self.closed = True
        self.end_reason = reason
        self._log_end(reason)
        current = asyncio.current_task()
        for task in list(self.tasks):
            if task is not current:
                task.cancel()
        for track in (self.video_out, self.audio_out):
            if track is not None:
                track.stop()
        ch = self.channel
        if ch is not None:
            if not ch.closed:
                # ask the worker to end its session and wait for its Close: a worker that
                # does not answer is replaced rather than handed to the next user
                try:
                    ch.send_control(Close(reason))
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
            ch.close(reason, notify=False)
        if self.pc is not None:
            try:
                await asyncio.wait_for(self.pc.close(), C.CLOSE_ACK_TIMEOUT_S)
            except Exception as exc:
                log.warning("session %s: peer connection close failed: %s", self.webrtc_id, exc)
        await self.host.session_ended(self)
