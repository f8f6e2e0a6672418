"""Audio clients beyond WebRTC: fastrtc's WebSocket endpoint and Twilio's media streams.

  WS   /websocket/offer     fastrtc's messages: {"event": "start", "websocket_id"},
                            {"event": "media", "media": {"payload": base64 mu-law}},
                            {"event": "stop"}, {"event": "ping"} -> {"event": "pong"}
  WS   /telephone/handler   Twilio Media Streams: connected, start (streamSid), media,
                            mark, dtmf, stop; we send media, mark and clear (the call's
                            webhook, POST /telephone/incoming, is runtime/front/twilio.py)

Each socket becomes a runtime.media.ws_session.WebSocketSession in the front's engine, with the
stream's lease, concurrency_limit, time_limit and waiting room. A refusal is a JSON message
in the REST routes' shape (``{"status": "failed", "meta": {"error", ...}}``) and then a
close with code 4000 + the HTTP status the offer route would have answered (4429: full,
4403: refused, 4400: bad request): a client reads both from the close frame.

Who may connect: ``/websocket/offer`` is a signalling route like ``/webrtc/offer``
(gateway.auth, the Origin allow-list, a join token's stream binding); a phone call's media
stream must bring the single-use call token its webhook minted.

Before its ``start`` message a socket is bounded per client address
(``sockets.max_unstarted_per_address``: closed with 4429 past it) and in time
(``sockets.start_timeout_s``: closed with 1008); a message's size is checked before it is
parsed. Client-supplied strings reach the log only through runtime.ops.logs.shown.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

# module level: FastAPI reads the routes' annotations from this module's globals
from fastapi import WebSocket

from runtime.errors import EndReason, ErrorCode, Refused
from runtime.front.api import GatewayAPI
from runtime.front.statuses import CLOSE_NORMAL, LineLeft, close_code
from runtime.front.twilio import CALL_TOKEN_PARAM, TELEPHONE_HANDLER_ROUTE, TELEPHONE_INCOMING_ROUTE
from runtime.guard import safejson
from runtime.guard.auth import AuthGrant
from runtime.guard.limits import TokenBucket
from runtime.guard.socket_limits import Hold, HoldCounter
from runtime.media.offers import check_id
from runtime.ops.logs import shown
from workers.link.shape import Transport

if TYPE_CHECKING:
    from runtime.media.ws_session import WebSocketSession

log = logging.getLogger("rtcpool.websocket")

WEBSOCKET_ROUTE = "/websocket/offer"

MAX_MESSAGE_BYTES = (
    64 * 1024
)  # a 20 ms mu-law frame is ~0.2-1.3 kB of base64; far larger is refused
MAX_PAYLOAD_BYTES = 16 * 1024  # decoded audio bytes of one media message (2 s at 8 kHz)
MAX_BAD_MESSAGES = 20  # a client this wrong is closed rather than answered again and again
MESSAGES_PER_S = 200.0  # 20 ms frames are 50 a second; this leaves room for marks and pings
MESSAGE_BURST = 400
CLOSE_FLUSH_S = 1.0  # time for the last messages (end_stream, an error) before the close

MAX_CLOSE_REASON_BYTES = 120  # a close frame's reason is at most 123 bytes
MAX_SHOWN_EVENT_CHARS = 40  # of a client's event name in a warning (to the client, or logged)


class UnstartedSockets:
    """Sockets of one route family that have not sent ``start``, per client address
    (``sockets.max_unstarted_per_address``, gateway.limits.exempt_loopback applies); the
    first refusal is logged once (an attacker's flood does not flood the log)."""

    def __init__(self, limit: int, *, exempt_loopback: bool) -> None:
        self.count = HoldCounter(
            limit, code=ErrorCode.TOO_MANY_UNSTARTED_SOCKETS, what="sockets that have not sent 'start'", per="client address"
        )
        self.exempt_loopback = exempt_loopback
        self.warned = False

    def take(self, address: str | None) -> Hold:
        try:
            return self.count.take_for_address(address, exempt_loopback=self.exempt_loopback)
        except Refused:
            if not self.warned:
                self.warned = True
                log.warning(
                    "a client address holds %d sockets that have not sent 'start': more are closed with 4429 "
                    "(sockets.max_unstarted_per_address; said once)",
                    self.count.limit,
                )
            raise


class SocketClient:
    """One WebSocket client from accept to close: its messages, its session, its ending."""

    def __init__(self, gw: GatewayAPI, ws: Any, kind: Transport, unstarted: UnstartedSockets | None = None) -> None:
        self.gw = gw
        self.unstarted = unstarted
        self._unstarted_hold: Hold | None = None
        self.start_timeout_s = gw.config.sockets.start_timeout_s
        self.grant: AuthGrant | None = None
        self.ws = ws
        self.kind = kind
        self.phone = kind == Transport.TELEPHONE
        self.session: WebSocketSession | None = None
        self.webrtc_id = ""
        self.bad = 0
        self.rate = TokenBucket(MESSAGES_PER_S, MESSAGE_BURST)
        self.client = ws.client.host if ws.client else None
        self._send_lock = asyncio.Lock()

    async def send_text(self, text: str) -> None:
        async with self._send_lock:  # the session's outbox and this route both write
            await self.ws.send_text(text)

    async def send_json(self, obj: dict[str, Any]) -> None:
        await self.send_text(json.dumps(obj))

    async def warn(self, message: str) -> None:
        """A message that is ignored: said once per message, closed after too many."""
        self.bad += 1
        if self.bad > MAX_BAD_MESSAGES:
            raise Refused(ErrorCode.TOO_MANY_BAD_MESSAGES, f"more than {MAX_BAD_MESSAGES} bad messages")
        if not self.phone:  # Twilio has nowhere to show it
            await self.send_json({"event": "error", "type": "warning", "message": message})
        else:
            # every warning's client-supplied part went through shown() where it was written
            log.warning("telephone %s: %s", self.webrtc_id or "(not started)", message)

    # --- reading ---------------------------------------------------------------------------------

    async def next_message(self, timeout: float | None) -> dict[str, Any] | None:
        """The next message as a JSON object; None: the client went away. Malformed ones
        are answered (warn) and skipped; a binary or oversized one closes the socket."""
        from starlette.websockets import WebSocketDisconnect

        while True:
            try:
                raw = await asyncio.wait_for(self.ws.receive(), timeout)
            except TimeoutError:
                raise Refused(ErrorCode.START_TIMEOUT, f"no 'start' message within {self.start_timeout_s:g} s") from None
            except WebSocketDisconnect:
                return None
            if raw.get("type") == "websocket.disconnect":
                return None
            if not self.rate.take():
                await self.warn("too many messages: some are dropped")
                continue
            if raw.get("bytes") is not None:
                raise Refused(ErrorCode.BINARY_MESSAGE, "messages are JSON text, not binary")
            text = raw.get("text") or ""
            if len(text) > MAX_MESSAGE_BYTES:
                raise Refused(ErrorCode.MESSAGE_TOO_LARGE, f"messages are at most {MAX_MESSAGE_BYTES} bytes")
            try:
                msg = safejson.loads(text)
            except safejson.JSONRejected as exc:
                await self.warn(f"message refused: {exc.message}")
                continue
            if not isinstance(msg, dict) or not isinstance(msg.get("event"), str):
                await self.warn("a message is a JSON object with an 'event'")
                continue
            return msg

    # --- the whole life of a socket ----------------------------------------------------------------

    async def serve(self) -> None:
        await self.ws.accept()
        code, reason = CLOSE_NORMAL, "stream ended"
        try:
            if self.unstarted is not None:
                self._unstarted_hold = self.unstarted.take(self.client)
            if not self.phone:
                self.grant = await self.gw.check_access(self.ws)
            start = await self._wait_start()
            self._release_unstarted()  # said "start" (or left): a session's limits count it now
            if start is None:
                return
            await self._open(start)
            if self.session is not None:
                await self._stream()
                reason = self.session.end_detail or reason
        except Refused as ref:
            code, reason = close_code(ref), ref.error
            with contextlib.suppress(Exception):
                if not self.phone:
                    await self.send_json(ref.body())
                elif ref.code != ErrorCode.TOO_MANY_UNSTARTED_SOCKETS:  # said once, by UnstartedSockets
                    log.warning(
                        "telephone %s refused: %s (%s)",
                        self.webrtc_id or "(not started)",
                        ref.error,
                        shown(ref.message),
                    )
        finally:
            self._release_unstarted()
            await self._end(code, reason)

    def _release_unstarted(self) -> None:
        hold, self._unstarted_hold = self._unstarted_hold, None
        if hold is not None:
            hold.release()

    async def _wait_start(self) -> dict[str, Any] | None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            msg = await self.next_message(max(0.01, deadline - time.monotonic()))
            if msg is None:
                return None
            event = msg["event"]
            if event == "start":
                return msg
            if event == "ping":
                await self.send_json({"event": "pong"})
            elif event == "connected" and self.phone:
                continue  # Twilio's hello
            elif event == "stop":
                return None
            else:
                await self.warn(f"{shown(event, MAX_SHOWN_EVENT_CHARS)} before 'start'")

    async def _open(self, start: dict[str, Any]) -> None:
        gw = self.gw
        if self.phone:
            got = start.get("start")
            info: dict[str, Any] = got if isinstance(got, dict) else {}
            got = info.get("customParameters")
            params: dict[str, Any] = got if isinstance(got, dict) else {}
            live, stream_id = gw.call_tokens.spend(params.get(CALL_TOKEN_PARAM))
            if not live:
                raise Refused(ErrorCode.BAD_CALL_TOKEN, f"this media stream was not announced by {TELEPHONE_INCOMING_ROUTE}")
            raw_id = start.get("streamSid") or info.get("streamSid")
        else:
            raw_id, stream_id = start.get("websocket_id"), start.get("stream_id")
        self.webrtc_id = check_id(raw_id)
        event = gw.pick_event(stream_id)
        claims = self.grant.claims if self.grant is not None else None
        if claims is not None and claims.stream_id is not None and claims.stream_id != event.event_id:
            # as /webrtc/offer checks it (Gateway.handle_offer): a token for stream A opens A only
            raise Refused(ErrorCode.TOKEN_WRONG_STREAM, "this join token is for another stream")
        if not event.has_audio or event.has_video:
            raise Refused(
                ErrorCode.NOT_AN_AUDIO_STREAM,
                f"stream {event.event_id!r} is {event.modality}: WebSocket clients carry audio only",
            )
        ticket: str | None = None
        while True:
            answer = await gw.open_websocket(
                event,
                self.webrtc_id,
                self.client,
                self.kind,
                self.send_text,
                event.queue,
                ticket,
            )
            if answer.get("status") != "queued":
                break
            ticket = await self._wait_in_line(answer)
            if ticket is None:
                return
        self.session = answer["session"]
        if not self.phone:
            # the key for the REST routes (/webrtc/input, /webrtc/outputs), as the offer's answer has it
            await self.send_json(
                {
                    "type": "session",
                    "data": {
                        "webrtc_id": self.webrtc_id,
                        "session_key": answer["session_key"],
                        "stream_id": event.event_id,
                    },
                }
            )

    async def _wait_in_line(self, answer: dict[str, Any]) -> str | None:
        """A full stream with a line: follow our place (sent to a WebSocket client as
        ``{"type": "queue", "data": view}``; a caller hears silence) until admitted. The
        client's messages meanwhile: stop or hanging up leaves the line; media is ignored.
        The ticket to open with, or None: the client left."""
        place = answer["queue"]
        ticket = place["ticket"]
        first = {
            "state": "waiting",
            "position": place["position"],
            "size": place["size"],
            "eta_s": place["eta_s"],
        }
        if not self.phone:
            await self.send_json({"type": "queue", "data": first})
        updates = await self.gw.queue_stream(ticket, self.webrtc_id)
        follow = asyncio.ensure_future(self._follow(updates, first))
        try:
            while not follow.done():
                reader = asyncio.ensure_future(self.next_message(None))
                done, _ = await asyncio.wait({follow, reader}, return_when=asyncio.FIRST_COMPLETED)
                if reader not in done:
                    reader.cancel()
                    with contextlib.suppress(BaseException):
                        await reader
                    break
                msg = reader.result()
                if msg is None or msg["event"] == "stop":
                    return None  # closing the updates stream below leaves the line
                if msg["event"] == "ping":
                    await self.send_json({"event": "pong"})
                elif msg["event"] not in ("media", "mark", "dtmf", "connected"):
                    await self.warn(f"{shown(msg['event'], MAX_SHOWN_EVENT_CHARS)} while waiting in line")
            view = follow.result()
        finally:
            if not follow.done():
                follow.cancel()
            with contextlib.suppress(BaseException):
                await follow
            with contextlib.suppress(Exception):
                await updates.aclose()
        if view.get("state") != "admitted":
            raise LineLeft(
                ErrorCode(view.get("reason") or ErrorCode.QUEUE_LEFT),
                view.get("message") or "the place in line is gone",
            )
        return str(ticket)

    async def _follow(self, updates: Any, first: dict[str, Any]) -> dict[str, Any]:
        last: dict[str, Any] = dict(first)
        async for view in updates:
            if view is None:
                continue
            if view == last:
                continue  # the first view again (the follower starts from it)
            last = view
            if view.get("state") != "waiting":
                return view
            if not self.phone:
                await self.send_json({"type": "queue", "data": view})
        return last

    async def _stream(self) -> None:
        session = self.session
        assert session is not None
        ended = asyncio.ensure_future(session.ended.wait())
        try:
            while not session.closed:
                reader = asyncio.ensure_future(self.next_message(None))
                done, _ = await asyncio.wait({reader, ended}, return_when=asyncio.FIRST_COMPLETED)
                if reader not in done:
                    reader.cancel()
                    with contextlib.suppress(BaseException):
                        await reader
                    return
                msg = reader.result()
                if msg is None:
                    await session.aclose(EndReason.CLIENT_CLOSED, "websocket closed by the client")
                    return
                await self._on_message(session, msg)
        finally:
            ended.cancel()

    async def _on_message(self, session: WebSocketSession, msg: dict[str, Any]) -> None:
        event = msg["event"]
        if event == "media":
            media = msg.get("media")
            payload = media.get("payload") if isinstance(media, dict) else None
            if (
                self.phone
                and isinstance(media, dict)
                and media.get("track") not in (None, "inbound")
            ):
                return  # a two-track stream's outbound half is our own audio
            if not isinstance(payload, str):
                await self.warn("'media' wants media.payload: base64 mu-law audio")
                return
            try:
                audio = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                await self.warn("media.payload is not base64")
                return
            if len(audio) > MAX_PAYLOAD_BYTES:
                await self.warn(
                    f"media.payload is over {MAX_PAYLOAD_BYTES} bytes of audio: dropped"
                )
                return
            session.receive_media(audio)
        elif event == "stop":
            await session.aclose(EndReason.CLIENT_CLOSED, "the client stopped the stream")
        elif event == "ping":
            await self.send_json({"event": "pong"})
        elif event in ("mark", "dtmf", "connected") and self.phone:
            pass  # Twilio's: a played mark, a key press; nothing here waits for them
        elif event == "start":
            await self.warn("the stream has started already")
        else:
            await self.warn(f"unknown event {shown(event, MAX_SHOWN_EVENT_CHARS)}")

    async def _end(self, code: int, reason: str) -> None:
        session = self.session
        if session is not None:
            if not session.closed:
                await session.aclose(EndReason.OTHER, "websocket route ended")
            await session.flush(CLOSE_FLUSH_S)
        with contextlib.suppress(Exception):
            await self.ws.close(
                code=code, reason=reason.encode()[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")
            )


def mount_websocket_routes(app: Any, gw: GatewayAPI) -> None:
    """Add /websocket/offer and /telephone/handler to a FastAPI app."""
    # one count for both routes: an address's silent sockets cost the same on either
    unstarted = UnstartedSockets(gw.config.sockets.max_unstarted_per_address, exempt_loopback=gw.config.gateway.limits.exempt_loopback)

    async def websocket_offer(websocket: WebSocket) -> None:
        gw.loop = asyncio.get_running_loop()
        await SocketClient(gw, websocket, Transport.WEBSOCKET, unstarted).serve()

    async def telephone_handler(websocket: WebSocket) -> None:
        gw.loop = asyncio.get_running_loop()
        await SocketClient(gw, websocket, Transport.TELEPHONE, unstarted).serve()

    app.add_api_websocket_route(WEBSOCKET_ROUTE, websocket_offer)
    app.add_api_websocket_route(TELEPHONE_HANDLER_ROUTE, telephone_handler)


__all__ = ["mount_websocket_routes", "SocketClient", "UnstartedSockets", "WEBSOCKET_ROUTE"]
