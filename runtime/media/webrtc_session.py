"""The WebRTC session: a client's peer connection (tracks, data channel) bound to its worker.

Media path (all on its media engine's event loop, nothing optional per frame):
  client track --decode (aiortc)--> yuv420p planes --copied into a slot--> worker (I420 -> RGB there)
  worker (RGB -> I420 there) --slot--> WorkerVideoTrack.recv() --one reused frame, encode--> client

The lease, the worker link and every way of ending are the transport-neutral
:class:`runtime.media.session.Session`'s; the WebSocket session (runtime/media/ws_session.py)
is this one's sibling.
"""

from __future__ import annotations

import asyncio
import logging
import time
from fractions import Fraction
from typing import TYPE_CHECKING, Any, cast

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceCandidate,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from runtime import constants as C
from runtime.errors import EndReason
from runtime.guard import safejson
from runtime.guard.limits import PerSessionCount, TokenBucket
from runtime.media.budget import ADMIT, RtpBudget, audio_budget
from runtime.media.frames import (
    I420_FORMAT,
    EncoderFrame,
    newest_frame,
    plane_views,
    rgb_of,
    video_frame_of,
)
from runtime.media.jitter import guard_video, set_audio_prefetch
from runtime.media.sctp_guard import SctpGuard, guard_sctp
from runtime.media.session import Session, client_json
from runtime.media.video_codecs import VideoCodec, answer_one_codec, use_gateway_encoders
from workers.link.shape import Transport
from workers.link.wire import PIXFMT_I420

if TYPE_CHECKING:
    from runtime.control.leases import LeaseGrant
    from runtime.media.session import SessionHost
    from runtime.media.stream_event import StreamEvent

log = logging.getLogger("rtcpool.session")

VIDEO_IN_FLIGHT = 1  # input frames waiting at the worker (it copies a frame out before its handler runs)
AUDIO_OUT_RATE = 48_000  # Hz: what aiortc's Opus encoder takes
OPUS_DECODED_RATE = 48_000  # Hz: what aiortc's Opus decoder gives (the client's audio budget counts it)
AUDIO_OUT_FRAME_SAMPLES = int(AUDIO_OUT_RATE * C.AUDIO_FRAME_S)
AUDIO_OUT_FRAME_BYTES = AUDIO_OUT_FRAME_SAMPLES * 2 * 2  # stereo s16
AUDIO_OUT_MAX_BYTES = int(C.AUDIO_OUT_MAX_S / C.AUDIO_FRAME_S) * AUDIO_OUT_FRAME_BYTES
AUDIO_OUT_MAX_LAG_S = 0.2  # an output clock this far behind restarts instead of bursting


async def _close_quietly(pc: RTCPeerConnection) -> None:
    try:
        await asyncio.wait_for(pc.close(), C.CLOSE_ACK_TIMEOUT_S)
    except Exception as exc:
        log.warning("an old peer connection did not close: %s", exc)


class WorkerVideoTrack(MediaStreamTrack):
    """The processed video: whatever the worker last produced, latest-frame-wins."""

    kind = "video"

    def __init__(self, session: WebRTCSession) -> None:
        super().__init__()
        self._session = session
        self._wake = asyncio.Event()
        self._last_pts = -1
        # Reused for every I420 frame. Safe because the previous frame's encode is over when
        # recv() runs again: aiortc's RTCRtpSender._next_encoded_frame awaits recv(), then
        # awaits the encode (run_in_executor(encoder.encode)), and _run_rtp calls it again
        # only after that; our encoders (runtime/media/vp8_encoder.py and h264_encoder.py, aiortc's
        # under them) encode with no lag (lag-in-frames 0, x264 zerolatency), so
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

    def __init__(self, session: WebRTCSession) -> None:
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


class WebRTCSession(Session):
    """A Session whose client is a WebRTC peer: its offer answered, its tracks pumped to the
    worker, the worker's frames and audio sent back on tracks of ours, messages both ways on
    the "text" data channel."""

    client_kind = Transport.WEBRTC  # what the worker tells the handler (wire.Hello.client_kind)

    def __init__(self, host: SessionHost, event: StreamEvent, webrtc_id: str, lease: LeaseGrant) -> None:
        super().__init__(host, event, webrtc_id, lease)
        self.pc: RTCPeerConnection | None = None
        self.data_channel: Any = None
        self._pending_messages: list[str] = []
        self.video_out: WorkerVideoTrack | None = None
        self.audio_out: WorkerAudioTrack | None = None
        self._deferred_video: Any = None  # newest decoded input frame the worker is not ready for
        self._warned_oversize = False
        self.video_codecs: list[VideoCodec | None] = []  # negotiated, one per video transceiver
        lc = host.config.gateway.limits
        self.candidates = PerSessionCount.candidates(lc.max_candidates_per_session)
        self.message_rate = TokenBucket(lc.data_channel_messages_per_s, lc.data_channel_message_burst)
        self._warned_rate = False
        self.sctp_guard: SctpGuard | None = None
        self._logged_refusals: set[str] = set()
        self.rtp_budget: RtpBudget | None = None

    # --- start --------------------------------------------------------------------------------

    async def start(self, sdp: str, type_: str) -> RTCSessionDescription:
        """Bind the worker, answer the offer. Raises on any failure, leaving nothing behind
        for the caller but :meth:`aclose`."""
        await self._connect_worker()
        answer = await self._answer(sdp, type_)
        self._spawn(self._watchdog())
        if not self.event.shape.client_sends:
            self.media_since = time.monotonic()
        return answer

    async def restart_peer(self, sdp: str) -> RTCSessionDescription:
        """The client's new peer connection for this session (its network changed, or it
        lost this one): it replaces the old one; the worker link, the handler and the
        session's clocks stay (docs/failover.md)."""
        old = self.pc
        if old is not None:
            old.remove_all_listeners()  # its "closed" is not the session's end
        for track in (self.video_out, self.audio_out):
            if track is not None:
                track.stop()
        self.data_channel = None
        self._deferred_video = None
        answer = await self._answer(sdp, "offer")
        if old is not None:
            self._spawn(_close_quietly(old))
        self.send_client_warning("reconnected: the stream goes on")
        log.info("session %s: the client's new peer connection replaced its old one", self.webrtc_id)
        return answer

    async def _answer(self, sdp: str, type_: str) -> RTCSessionDescription:
        """A peer connection for the client's offer, its media guarded, its answer made."""
        cfg = self.host.config.gateway
        ice = [RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in cfg.ice_servers]
        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        pc.on("connectionstatechange", self._on_connection_state)
        pc.on("datachannel", self._on_datachannel)
        pc.on("track", self._on_track)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=type_))
        # data-channel messages measured while reassembled, the limit advertised in the answer
        budgets = cfg.budgets
        self.sctp_guard = guard_sctp(
            pc,
            max_message_bytes=budgets.max_data_channel_message_bytes,
            max_buffered_bytes=budgets.max_data_channel_buffered_bytes,
            on_refused=self._on_data_channel_refused,
        )
        # RTP packets and bytes in real-time units, before any jitter buffer or decoder
        self.rtp_budget = RtpBudget(budgets, self.over_budget)
        self.rtp_budget.install(pc)
        set_audio_prefetch(pc, cfg.audio_jitter_prefetch)
        # one video codec per transceiver, the first of gateway.video_codecs the offer has (the
        # frame guard reads that codec's headers), and no key frame over max_frame_pixels
        # reaches the decoder
        self.video_codecs = answer_one_codec(pc, cfg.video_codecs)
        self.video_codec = next((str(codec) for codec in self.video_codecs if codec is not None), "")
        guard_video(
            pc,
            cfg.max_frame_pixels,
            self._on_oversize_keyframe,
            release_on_marker=cfg.video_release_on_marker,
            on_malformed=self._on_malformed_video,
        )
        if self.event.shape.sends_video:
            self.video_out = WorkerVideoTrack(self)
            pc.addTrack(self.video_out)
        if self.event.shape.sends_audio:
            self.audio_out = WorkerAudioTrack(self)
            pc.addTrack(self.audio_out)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)  # aiortc gathers all candidates here (no trickle)
        # before the first frame is sent
        use_gateway_encoders(pc, vp8_speed=cfg.vp8_speed, vp8_denoise=cfg.vp8_denoise, h264_encoder=cfg.h264_encoder)
        return pc.localDescription

    async def add_ice_candidate(self, candidate: RTCIceCandidate) -> None:
        """A trickled candidate of the client's, checked by the engine first."""
        assert self.pc is not None
        await self.pc.addIceCandidate(candidate)

    # --- client -> gateway ----------------------------------------------------------------------

    def _on_connection_state(self) -> None:
        assert self.pc is not None
        state = self.pc.connectionState
        if state == "connected" and self.connected_at is None:
            self.connected_at = time.monotonic()
            if self.admission is not None:
                self.admission.connected()  # no longer a pending offer of its address
        elif state == "failed" and self.host.config.gateway.resume_grace_s > 0 and self.connected_at is not None:
            # the client's network may have changed: it re-offers with its key (restart_peer)
            # within the grace, or the session ends (docs/failover.md)
            self._spawn(self._end_unless_resumed(self.pc))
        elif state in ("failed", "closed"):
            self.close_soon(EndReason.ICE_FAILED if state == "failed" else EndReason.CLIENT_CLOSED, f"peer connection {state}")

    async def _end_unless_resumed(self, pc: Any) -> None:
        await asyncio.sleep(self.host.config.gateway.resume_grace_s)
        if self.pc is pc:
            self.close_soon(EndReason.ICE_FAILED, "peer connection failed, and the client did not resume")

    def _on_oversize_keyframe(self, width: int, height: int) -> None:
        max_pixels = self.host.config.gateway.max_frame_pixels
        log.warning("session %s: refused a %dx%d key frame before decoding", self.webrtc_id, width, height)
        if not self._warned_oversize:
            self._warned_oversize = True
            self.send_client_warning(f"video frames of {width}x{height} exceed the {max_pixels}-pixel limit and are dropped")

    def _on_malformed_video(self, reason: str) -> None:
        log.warning("session %s: dropped a video frame the guard could not read (%s); a key frame was asked for", self.webrtc_id, reason)

    def _on_data_channel_refused(self, what: str) -> None:
        """The SCTP guard dropped a message over the limit (a warning to the client for each,
        as for any refused message), or first refused a chunk past the connection's buffer
        budget. The log says each kind once per session."""
        budgets = self.host.config.gateway.budgets
        if what == "message":
            text = f"data channel messages over {budgets.max_data_channel_message_bytes} bytes are dropped"
        else:
            text = f"data channel data beyond {budgets.max_data_channel_buffered_bytes} bytes in reassembly is refused"
        if what not in self._logged_refusals:
            self._logged_refusals.add(what)
            log.warning("session %s: %s", self.webrtc_id, text)
        self.send_client_warning(text)

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
        limit = self.host.config.gateway.budgets.max_data_channel_message_bytes
        # reassembly measured bytes already (runtime/media/sctp_guard.py); this catches a
        # message completed out of order, which only the connection's budget bounds
        if isinstance(message, bytes) or len(message) > limit:
            self.send_client_warning(f"data channel messages must be JSON text of at most {limit} bytes")
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
        if track.kind == "video" and self.event.shape.takes_video:
            self._spawn(self._pump_video_in(track))
        elif track.kind == "audio" and self.event.shape.takes_audio and self.audio_in_rate:
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
        max_pixels = self.host.config.gateway.max_frame_pixels
        try:
            ended = False
            self._on_worker_connected()
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
                # (no channel while a new worker takes over: the newest frame waits for it)
                channel = self.channel
                if channel is not None and channel.video_in_flight() < VIDEO_IN_FLIGHT:
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
        layout = self.audio_in_layout
        resampler = av.AudioResampler(format="s16", layout=layout, rate=self.audio_in_rate)
        # decoded samples in real time too: an Opus packet may hold up to 120 ms, so the
        # packet budget alone would let 6x real time through
        budget = audio_budget(self.host.config.gateway.budgets, OPUS_DECODED_RATE)
        try:
            while not self.closed:
                frame = cast(av.AudioFrame, await track.recv())  # an audio track's frames
                self._media_arrived()
                rate = frame.sample_rate or OPUS_DECODED_RATE
                verdict = budget.admit(frame.samples * OPUS_DECODED_RATE // rate, time.monotonic_ns())
                if verdict != ADMIT:
                    self.over_budget("audio", verdict)
                    continue
                channel = self.channel
                if channel is None or channel.closed:
                    continue  # a new worker is taking over: the audio of that gap is lost
                for out in resampler.resample(frame):
                    channel.send_audio(out.to_ndarray(), out.sample_rate, layout, out.pts or 0)
                if channel.has_backlog:
                    self._watch_backlog()
        except MediaStreamError:
            return

    # --- messages to the client ----------------------------------------------------------------------

    def _send_json(self, obj: dict[str, Any]) -> None:
        text = client_json(obj)
        dc = self.data_channel
        if dc is not None and dc.readyState == "open":
            dc.send(text)
        else:
            self._pending_messages.append(text)

    def _flush_messages(self) -> None:
        dc = self.data_channel
        while self._pending_messages and dc is not None and dc.readyState == "open":
            dc.send(self._pending_messages.pop(0))

    # --- ending ----------------------------------------------------------------------------------------

    def _on_worker_video(self) -> None:
        if self.video_out is not None:
            self.video_out.wake()

    def _on_worker_connected(self) -> None:
        """The worker's link is up (at start, or a new worker's after a failover): the
        newest input frame goes as soon as it frees its slot, and one waiting goes now."""
        channel = self.channel
        if channel is not None and self.event.shape.takes_video:
            channel.on_video_slot_free = self._send_deferred_video
            self._send_deferred_video()

    def _stop_client_media(self) -> None:
        for track in (self.video_out, self.audio_out):
            if track is not None:
                track.stop()

    async def _close_client(self) -> None:
        if self.pc is not None:
            try:
                await asyncio.wait_for(self.pc.close(), C.CLOSE_ACK_TIMEOUT_S)
            except Exception as exc:
                log.warning("session %s: peer connection close failed: %s", self.webrtc_id, exc)
