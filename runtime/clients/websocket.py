"""A WebSocket audio client for /websocket/offer (fastrtc's messages) and /telephone/handler
(Twilio's), for tests, benchmarks and servers that talk to an rtcpool app without WebRTC.

    async with WebSocketClient("ws://127.0.0.1:7860", rate=16_000) as client:
        await client.play(samples)          # int16 mono at ``rate``, paced to real time
        reply = client.received_audio()     # what came back, decoded, in arrival order

``telephone=True`` plays the Twilio side of a call: connected, start with a streamSid and
the call token from /telephone/incoming's TwiML, media, stop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime import constants as C
from runtime.front.twilio import CALL_TOKEN_PARAM, TELEPHONE_HANDLER_ROUTE
from runtime.front.websocket_routes import WEBSOCKET_ROUTE
from runtime.media import mulaw

FRAME_S = C.AUDIO_FRAME_S  # one media message per 20 ms, as Twilio sends them
OPEN_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0


@dataclass
class Received:
    """One media message from the server: when it came and its samples."""

    at: float  # time.monotonic()
    samples: np.ndarray


@dataclass
class WebSocketClient:
    base_url: str  # http(s):// or ws(s):// of the app
    rate: int = (
        16_000  # Hz of what play() sends (the handler's input_sample_rate; 8 kHz on a phone)
    )
    websocket_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    stream_id: str | None = None
    telephone: bool = False
    call_token: str | None = None  # a phone call's, from the TwiML's <Parameter>
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ws: Any = None
        self.media: list[Received] = []
        self.messages: list[dict[str, Any]] = []  # everything else the server sent, parsed
        self.session_key: str | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self._reader: asyncio.Task[None] | None = None
        self.started = asyncio.Event()  # the server said "session" (a phone: at once)
        self.ended = asyncio.Event()  # the socket closed

    @property
    def url(self) -> str:
        base = self.base_url.rstrip("/")
        for http, ws in (("https://", "wss://"), ("http://", "ws://")):
            if base.startswith(http):
                base = ws + base[len(http) :]
        return base + (TELEPHONE_HANDLER_ROUTE if self.telephone else WEBSOCKET_ROUTE)

    async def __aenter__(self) -> WebSocketClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, wait_started: bool = True) -> None:
        import websockets

        self.ws = await asyncio.wait_for(
            websockets.connect(self.url, additional_headers=self.headers, max_size=2**20),
            OPEN_TIMEOUT_S,
        )
        self._reader = asyncio.ensure_future(self._read())
        if self.telephone:
            await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            # Twilio hands back the TwiML's <Parameter>s; the token names the stream
            params = {CALL_TOKEN_PARAM: self.call_token} if self.call_token else {}
            await self.send({
                "event": "start", "sequenceNumber": "1", "streamSid": self.websocket_id,
                "start": {
                    "streamSid": self.websocket_id, "accountSid": "AC" + "0" * 32, "callSid": "CA" + "0" * 32,
                    "tracks": ["inbound"], "customParameters": params,
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
            })  # fmt: skip
            self.started.set()
        else:
            start: dict[str, Any] = {"event": "start", "websocket_id": self.websocket_id}
            if self.stream_id is not None:
                start["stream_id"] = self.stream_id
            await self.send(start)
            if wait_started:
                await self.wait_started()

    async def wait_started(self, timeout: float = OPEN_TIMEOUT_S) -> None:
        """Until the server says the session runs; raises if the socket closed first."""
        started = asyncio.ensure_future(self.started.wait())
        ended = asyncio.ensure_future(self.ended.wait())
        try:
            await asyncio.wait(
                {started, ended}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            started.cancel()
            ended.cancel()
        if not self.started.is_set():
            raise ConnectionError(
                f"the session did not start: close {self.close_code} {self.close_reason!r}; {self.messages[-1:]}"
            )

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(msg))

    async def send_media(self, samples: np.ndarray) -> None:
        msg: dict[str, Any] = {
            "event": "media",
            "media": {"payload": base64.b64encode(mulaw.encode(samples)).decode("ascii")},
        }
        if self.telephone:
            msg["streamSid"] = self.websocket_id
            msg["media"]["track"] = "inbound"
        await self.send(msg)

    async def play(self, samples: np.ndarray) -> None:
        """Mono samples at ``rate`` (int16, or float in [-1, 1]), one 20 ms message per 20 ms
        of wall time."""
        flat = np.asarray(samples).ravel()
        if flat.dtype.kind == "f":
            flat = (np.clip(flat, -1.0, 1.0) * 32767).astype(np.int16)
        flat = flat.astype(np.int16, copy=False)
        step = int(self.rate * FRAME_S)
        t0 = time.monotonic()
        for i, start in enumerate(range(0, len(flat), step)):
            due = t0 + i * FRAME_S
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.send_media(flat[start : start + step])

    async def play_silence(self, seconds: float) -> None:
        await self.play(np.zeros(int(seconds * self.rate), dtype=np.int16))

    async def _read(self) -> None:
        import websockets

        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if msg.get("event") == "media":
                    payload = base64.b64decode(msg["media"]["payload"])
                    self.media.append(Received(time.monotonic(), mulaw.decode(payload)))
                    continue
                self.messages.append(msg)
                if msg.get("type") == "session":
                    self.session_key = msg["data"]["session_key"]
                    self.started.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason or ""
            self.ended.set()

    def received_audio(self, since: float = 0.0) -> np.ndarray:
        parts = [r.samples for r in self.media if r.at >= since]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("event") == name or m.get("type") == name]

    async def stop(self) -> None:
        """Say stop (the fastrtc and Twilio way to end), then wait for the server's close."""
        with contextlib.suppress(Exception):
            await self.send(
                {"event": "stop"}
                if not self.telephone
                else {"event": "stop", "streamSid": self.websocket_id, "stop": {}}
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ended.wait(), CLOSE_TIMEOUT_S)
        await self.close()

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), CLOSE_TIMEOUT_S)
        if self._reader is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._reader, CLOSE_TIMEOUT_S)
