"""CloseStream through the whole stack (real aiortc client, real local Ray), while the client
still streams: the stream ends cleanly -- end_stream with the handler's message, no error, no
worker counted dead -- from a StreamHandler's emit() and an AsyncStreamHandler's.

Test-found: the worker closed its link with the gateway's audio still unread, Linux reported
that to the gateway as a reset ahead of the worker's Close, and the session ended as a worker
death ("the worker for this stream stopped") after the handler's own end_stream.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from runtime.clients.webrtc import Client
from tests.conftest import async_wait_until
from tests.echo import chirp
from workers.handlers import AsyncStreamHandler, CloseStream, StreamHandler

pytestmark = pytest.mark.asyncio(loop_scope="session")

HEARD_S = 1.0  # the handlers end the stream after this much of the client's audio
GOODBYE = (48_000, np.full((1, 960), 1000, np.int16))  # 20 ms said before CloseStream
GOODBYE_FRAMES = 10
END_TIMEOUT_S = 30.0


class EchoThenClose(StreamHandler):
    def __init__(self) -> None:
        super().__init__()
        self.heard = 0  # samples
        self.said = 0  # goodbye frames
        self.pending: list = []

    def copy(self) -> EchoThenClose:
        return EchoThenClose()

    def receive(self, frame) -> None:
        self.heard += frame[1].shape[-1]
        self.pending.append(frame)

    def emit(self):
        if self.heard >= HEARD_S * self.input_sample_rate:
            self.said += 1
            return GOODBYE if self.said <= GOODBYE_FRAMES else CloseStream("heard enough")
        return self.pending.pop(0) if self.pending else None


class AsyncEchoThenClose(AsyncStreamHandler):
    def __init__(self) -> None:
        super().__init__()
        self.heard = 0
        self.said = 0
        self.pending: list = []

    def copy(self) -> AsyncEchoThenClose:
        return AsyncEchoThenClose()

    async def receive(self, frame) -> None:
        self.heard += frame[1].shape[-1]
        self.pending.append(frame)

    async def emit(self):
        if self.heard >= HEARD_S * self.input_sample_rate:
            self.said += 1
            return GOODBYE if self.said <= GOODBYE_FRAMES else CloseStream("heard enough")
        if not self.pending:
            await asyncio.sleep(0.005)
            return None
        return self.pending.pop(0)


@pytest.mark.parametrize("handler", [EchoThenClose(), AsyncEchoThenClose()], ids=["sync", "async"])
async def test_close_stream_during_live_input_ends_the_stream_cleanly(make_gateway, handler):
    eid = f"close-stream-{type(handler).__name__}"
    with make_gateway(lambda gw: gw.add_stream(handler, event_id=eid, modality="audio")) as served:
        audio = np.tile(chirp(), 4)
        client = Client(served.url, modality="audio", audio=audio, audio_loop=True)
        await client.connect()
        ended = await async_wait_until(lambda: client.ended.is_set(), END_TIMEOUT_S)
        await asyncio.sleep(0.5)  # anything the gateway says after end_stream
        totals = served.gateway.engine.counters.streams.get(eid)  # the app's own engine on 2 cores
        await client.close()
    assert ended, client.messages
    ends = [m["data"] for m in client.messages if m.get("type") == "end_stream"]
    assert ends == [{"reason": "closed_by_handler", "message": "heard enough"}], client.messages
    assert not [m for m in client.messages if m.get("type") == "error"], client.messages
    assert totals is None or totals.worker_deaths == 0, "a clean end counted as a worker death"


class Chatty(StreamHandler):
    """Says fastrtc's message forms once, after its first audio frame."""

    def __init__(self) -> None:
        super().__init__()
        self.said = False

    def copy(self) -> Chatty:
        return Chatty()

    def receive(self, frame) -> None:
        if not self.said:
            self.said = True
            import json

            self.send_message_sync(json.dumps({"type": "warning", "message": "careful"}))  # fastrtc's ready message
            self.send_message_sync("pause_detected")  # a plain str: a "log"
            self.send_message_sync({"n": 1}, "custom")
            self.send_message_sync("closed", "update_connection")

    def emit(self):
        return None


async def test_handler_messages_reach_the_client_in_fastrtcs_shapes(make_gateway):
    eid = "chatty-messages"
    with make_gateway(lambda gw: gw.add_stream(Chatty(), event_id=eid, modality="audio")) as served:
        client = Client(served.url, modality="audio", audio=np.tile(chirp(), 4), audio_loop=True)
        await client.connect()
        await client.wait_message("update_connection", END_TIMEOUT_S)
        await client.close()
    said = [m for m in client.messages if m.get("type") in ("warning", "log", "custom", "update_connection")]
    assert said == [
        {"type": "warning", "message": "careful"},  # the component shows a warning's "message"
        {"type": "log", "data": "pause_detected"},
        {"type": "custom", "data": {"n": 1}},
        {"type": "update_connection", "data": "closed"},
    ], client.messages


async def test_a_video_stream_handler_on_an_audio_stream_is_refused_at_registration():
    from runtime.config import Config
    from runtime.front.gateway import Gateway
    from workers.handlers import VideoStreamHandler

    gw = Gateway(Config())
    with pytest.raises(ValueError, match="modality must be 'video'"):
        gw.add_stream(VideoStreamHandler(lambda f: f), modality="audio")
    assert not gw.events
    gw.add_stream(VideoStreamHandler(lambda f: f), modality="video")  # the right one is fine
    assert len(gw.events) == 1
