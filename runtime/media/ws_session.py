"""A session whose client speaks audio over a WebSocket instead of WebRTC: fastrtc's
``/websocket/offer`` messages, or a Twilio phone call's media stream (runtime/front/websocket_routes.py
parses both). The worker, the lease, the limits and every way of ending are the
transport-neutral :class:`runtime.media.session.Session`'s; only the client side differs
from its sibling, the WebRTC session (runtime/media/webrtc_session.py):

  client "media" (base64 mu-law) --decode--> audio slots --> worker (resampled there)
  worker audio --resample to the wire rate--> FIFO --20 ms mu-law messages, paced--> client

The session lives in the front's own engine (the process whose HTTP server holds the
socket): mu-law at 8-24 kHz is a few kB/s, so there is no media process to hand it to.
Every write to the socket goes through one outbox task, so messages keep their order and a
slow client makes the outbox, not the worker, wait.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from runtime import constants as C
from runtime.errors import EndReason
from runtime.media import mulaw
from runtime.media.budget import ADMIT, RealTimeBudget, audio_budget
from runtime.media.session import Session, client_json
from workers.link.shape import Transport
from workers.link.wire import WEBSOCKET_SEND, ClearAudio, Control, Message

if TYPE_CHECKING:
    from runtime.control.leases import LeaseGrant
    from runtime.media.session import SessionHost
    from runtime.media.stream_event import StreamEvent

log = logging.getLogger("rtcpool.websocket")

TELEPHONE_RATE = 8_000  # Hz: Twilio media streams are 8 kHz mu-law, both ways
SEND_LEAD_S = 0.1  # audio sent this far ahead of real time: covers the client's jitter, still cut short by clear
TELEPHONE_LEAD_S = 0.2  # a phone network adds more jitter; Twilio buffers what arrives early
OUTBOX_MAX = (
    256  # messages waiting for a slow client; beyond, handler messages are dropped (audio waits)
)


class WebSocketAudioOut:
    """The worker's audio for a WebSocket client, a session's AudioOut (push, clear,
    drained, stop): resampled to the wire rate, encoded as mu-law and
    sent in 20 ms messages a little ahead of real time, so clear() stops a reply at once."""

    def __init__(self, session: WebSocketSession, rate: int) -> None:
        self._session = session
        self.rate = rate
        self._fifo = bytearray()  # int16 mono at ``rate``
        self._resamplers: dict[tuple[int, str], av.AudioResampler] = {}
        self._frame_bytes = int(rate * C.AUDIO_FRAME_S) * 2
        self._max_bytes = int(C.AUDIO_OUT_MAX_S * rate) * 2
        self._wake = asyncio.Event()
        self.drained = asyncio.Event()  # set while nothing waits to be sent
        self.drained.set()
        self.stopped = False
        self.played_samples = 0
        self.dropped_bytes = 0

    def push(self, header: Any, samples: Any) -> None:
        layout = "stereo" if header.layout == 2 else "mono"
        key = (header.sample_rate, layout)
        if key == (self.rate, "mono"):
            self._fifo += np.ascontiguousarray(samples, dtype=np.int16).tobytes()
        else:
            resampler = self._resamplers.get(key)
            if resampler is None:
                resampler = self._resamplers[key] = av.AudioResampler(
                    format="s16", layout="mono", rate=self.rate
                )
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout=layout)
            frame.sample_rate = header.sample_rate
            for out in resampler.resample(frame):
                self._fifo += out.to_ndarray().tobytes()
        excess = len(self._fifo) - self._max_bytes
        if excess > 0:
            del self._fifo[:excess]
            self.dropped_bytes += excess
        if self._fifo:
            self.drained.clear()
            self._wake.set()

    def clear(self) -> None:
        self._fifo.clear()
        self.drained.set()

    def stop(self) -> None:
        self.stopped = True
        self._wake.set()

    async def run(self) -> None:
        """Send the FIFO as it fills, 20 ms per message, at most ``lead`` ahead of the clock;
        idle, the clock restarts with the next reply rather than bursting to catch up."""
        session = self._session
        lead = TELEPHONE_LEAD_S if session.client_kind == Transport.TELEPHONE else SEND_LEAD_S
        sent_until = 0.0  # wall time up to which the client has been sent audio
        while not self.stopped:
            if not self._fifo:
                self.drained.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            now = time.monotonic()
            sent_until = max(sent_until, now)
            ahead = sent_until - now - lead
            if ahead > 0:
                await asyncio.sleep(ahead)
                continue
            n = min(len(self._fifo), self._frame_bytes)
            chunk = np.frombuffer(bytes(self._fifo[:n]), dtype=np.int16)
            del self._fifo[:n]
            session.send_media(mulaw.encode(chunk))
            self.played_samples += n // 2
            sent_until += n / 2 / self.rate


class WebSocketSession(Session):
    """A Session whose client is a WebSocket (fastrtc's audio messages, or a Twilio call)."""

    def __init__(
        self,
        host: SessionHost,
        event: StreamEvent,
        webrtc_id: str,
        lease: LeaseGrant,
        client_kind: Transport,
        send_text: Callable[[str], Awaitable[None]],
    ) -> None:
        super().__init__(host, event, webrtc_id, lease)
        self.client_kind = client_kind
        self.phone = client_kind == Transport.TELEPHONE
        self._send_text = send_text
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self.wire_in_rate = 0
        self.audio_budget: RealTimeBudget | None = None  # samples at wire_in_rate, once started
        self.ended = asyncio.Event()  # set once the session has ended: the route closes the socket

    async def start_ws(self) -> None:
        """Bind the worker and start the client side. Raises WorkerGone like start()."""
        await self._connect_worker()
        now = time.monotonic()
        self.connected_at = now  # the socket is the connection: there is no ICE to wait for
        if self.admission is not None:
            self.admission.connected()
        # fastrtc's rates: a phone is 8 kHz; a WebSocket client sends at the handler's
        # input_sample_rate and hears its output_sample_rate
        self.wire_in_rate = TELEPHONE_RATE if self.phone else (self.audio_in_rate or TELEPHONE_RATE)
        # mu-law is one byte a sample: the budget counts payload bytes as samples
        self.audio_budget = audio_budget(self.host.config.gateway.budgets, self.wire_in_rate)
        if self.event.shape.server_sends:
            rate = TELEPHONE_RATE if self.phone else (self.audio_out_rate or C.AUDIO_DEFAULT_RATE)
            audio_out = self.audio_out = WebSocketAudioOut(self, rate)
            self._spawn(audio_out.run())
        self._spawn(self._write_outbox())
        self._spawn(self._watchdog())
        if not self.event.shape.client_sends:
            self.media_since = now

    # --- client -> worker -------------------------------------------------------------------------

    def receive_media(self, payload: bytes) -> None:
        """One media message's mu-law bytes, decoded, to the worker."""
        self._media_arrived()
        channel = self.channel
        if channel is None or channel.closed or not self.audio_in_rate or not payload:
            return
        budget = self.audio_budget
        if budget is not None:
            verdict = budget.admit(len(payload), time.monotonic_ns())
            if verdict != ADMIT:
                self.over_budget("audio", verdict)
                return
        self.frames_in += 1
        # as it came: the worker resamples a phone's 8 kHz to the handler's rate (the pool
        # scales; this loop serves every socket of the process)
        channel.send_audio(mulaw.decode(payload).reshape(1, -1), self.wire_in_rate, "mono", 0)
        if channel.has_backlog:
            self._watch_backlog()

    # --- worker -> client -------------------------------------------------------------------------

    def send_media(self, payload: bytes) -> None:
        msg: dict[str, Any] = {
            "event": "media",
            "media": {"payload": base64.b64encode(payload).decode("ascii")},
        }
        if self.phone:
            msg["streamSid"] = self.webrtc_id
        self._outbox.put_nowait(json.dumps(msg))

    def _on_control(self, msg: Control) -> None:
        if isinstance(msg, Message) and msg.type == WEBSOCKET_SEND:
            # the handler's own message for its socket (get_current_context().websocket)
            if isinstance(msg.data, str):
                self._queue(msg.data)
            return
        super()._on_control(msg)
        if isinstance(msg, ClearAudio):
            # the client drops what it has buffered too (Twilio's "clear")
            clear: dict[str, Any] = {"event": "clear"}
            if self.phone:
                clear["streamSid"] = self.webrtc_id
            self._queue(json.dumps(clear))

    def _send_json(self, obj: dict[str, Any]) -> None:
        """A data-channel message (send_input, log, end_stream, errors): to a WebSocket
        client as the same JSON text; a phone has nowhere to show it, so it is logged."""
        if self.phone:
            log.debug("session %s: %s (not sent to the phone)", self.webrtc_id, obj.get("type"))
            return
        self._queue(client_json(obj))

    def _queue(self, text: str) -> None:
        if self._outbox.qsize() >= OUTBOX_MAX:
            return  # a client that reads nothing: its socket's own limits end it
        self._outbox.put_nowait(text)

    async def _write_outbox(self) -> None:
        try:
            while True:
                text = await self._outbox.get()
                await self._send_text(text)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client went away mid-write
            self.close_soon(EndReason.CLIENT_GONE, f"websocket closed: {type(exc).__name__}")

    async def flush(self, timeout: float) -> None:
        """Send what is queued (the last end_stream, a clear) before the socket closes."""
        deadline = time.monotonic() + timeout
        while not self._outbox.empty() and time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._send_text(self._outbox.get_nowait()),
                    max(0.01, deadline - time.monotonic()),
                )

    async def aclose(self, reason: EndReason = EndReason.OTHER, detail: str = "closed") -> None:
        if self.closed:
            return
        try:
            await super().aclose(reason, detail)
        finally:
            self.ended.set()
