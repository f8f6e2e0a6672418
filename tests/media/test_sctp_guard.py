"""runtime/media/sctp_guard.py: data-channel messages measured while they are reassembled.

Two real aiortc peers on loopback in this process: the "server" with the guard, the "client"
sending through its own SCTP transport's internals what a browser would refuse to send (a
4 MiB message, a message whose last fragment never comes, partial messages on many streams).
"""

from __future__ import annotations

import asyncio
import math

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtcsctptransport import (
    SCTP_DATA_FIRST_FRAG,
    SCTP_DATA_LAST_FRAG,
    USERDATA_MAX_LENGTH,
    WEBRTC_STRING,
    DataChunk,
)
from aiortc.utils import uint16_add

from runtime.media.ice import pin_host_addresses
from runtime.media.sctp_guard import CHUNK_OVERHEAD_BYTES, SctpGuard, guard_sctp
from tests.conftest import async_wait_until

LIMIT = 64 * 1024
BUDGET = 256 * 1024
BIG = 4 * 1024 * 1024  # the 4 MiB message
ENDLESS_FRAGMENTS = 2000  # ~2.3 MB of a message that never ends
WAIT_S = 20.0


class Peers:
    def __init__(self) -> None:
        self.server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.received: list[str] = []
        self.refused: list[str] = []
        self.guard: SctpGuard | None = None
        self.answer_sdp = ""
        self.channel = self.client.createDataChannel("text")

    async def connect(self) -> None:
        @self.server.on("datachannel")
        def on_channel(channel):
            channel.on("message", self.received.append)

        await self.client.setLocalDescription(await self.client.createOffer())
        await self.server.setRemoteDescription(self.client.localDescription)
        self.guard = guard_sctp(self.server, max_message_bytes=LIMIT, max_buffered_bytes=BUDGET, on_refused=self.refused.append)
        await self.server.setLocalDescription(await self.server.createAnswer())
        self.answer_sdp = self.server.localDescription.sdp
        await self.client.setRemoteDescription(self.server.localDescription)
        opened = asyncio.Event()
        self.channel.on("open", opened.set)
        await asyncio.wait_for(opened.wait(), WAIT_S)

    async def roundtrip(self, text: str) -> None:
        """``text`` sent the ordinary way arrives: the channel still works, in order."""
        self.channel.send(text)
        assert await async_wait_until(lambda: text in self.received, WAIT_S, 0.01), self.received[-3:]

    async def close(self) -> None:
        await self.client.close()
        await self.server.close()


@pytest.fixture
async def peers():
    pin_host_addresses(["127.0.0.1"])
    p = Peers()
    try:
        await p.connect()
        yield p
    finally:
        await p.close()
        pin_host_addresses(None)


def _held(p: Peers) -> tuple[int, int]:
    """(chunks, bytes) the server's SCTP holds in reassembly over all streams."""
    streams = p.server.sctp._inbound_streams.values()
    chunks = [c for s in streams for c in s.reassembly]
    return len(chunks), sum(len(c.user_data) for c in chunks)


async def send_fragments(client: RTCPeerConnection, stream_id: int, count: int, *, last: bool = False) -> None:
    """``count`` full fragments of one ordered message from ``client`` on ``stream_id``, the
    last one flagged only if ``last``: what aiortc's RTCSctpTransport._send does, through
    its own queue (so it is sent, retransmitted and acknowledged as usual)."""
    sctp = client.sctp
    seq = sctp._outbound_stream_seq.get(stream_id, 0)
    for index in range(count):
        chunk = DataChunk()
        chunk.flags = (SCTP_DATA_FIRST_FRAG if index == 0 else 0) | (SCTP_DATA_LAST_FRAG if last and index == count - 1 else 0)
        chunk.tsn = sctp._local_tsn
        chunk.stream_id = stream_id
        chunk.stream_seq = seq
        chunk.protocol = WEBRTC_STRING
        chunk.user_data = b"x" * USERDATA_MAX_LENGTH
        for name, value in (("_abandoned", False), ("_acked", False), ("_book_size", USERDATA_MAX_LENGTH), ("_expiry", None),
                            ("_in_flight", False), ("_max_retransmits", None), ("_misses", 0), ("_retransmit", False),
                            ("_sent_count", 0), ("_sent_time", None)):
            setattr(chunk, name, value)
        sctp._local_tsn = (sctp._local_tsn + 1) % 2**32
        sctp._outbound_queue.append(chunk)
        if index % 64 == 63:
            await sctp._transmit()
            await asyncio.sleep(0)
    sctp._outbound_stream_seq[stream_id] = uint16_add(seq, 1)
    await sctp._transmit()


async def all_acked(client: RTCPeerConnection, timeout: float = WAIT_S) -> None:
    """Until the server has acknowledged everything ``client`` sent on SCTP."""
    sctp = client.sctp
    assert await async_wait_until(lambda: not sctp._outbound_queue and not sctp._sent_queue, timeout, 0.02), (
        f"{len(sctp._outbound_queue)} queued, {len(sctp._sent_queue)} unacknowledged"
    )


async def test_the_answer_advertises_the_real_limit(peers):
    assert f"a=max-message-size:{LIMIT}" in peers.answer_sdp
    assert "a=max-message-size:262144" not in peers.answer_sdp  # aiortc's own
    assert peers.client.sctp._remote_max_message_size == LIMIT  # a keeping sender refuses larger


async def test_messages_up_to_the_limit_pass(peers):
    exact = "y" * LIMIT
    await peers.roundtrip(exact)
    await peers.roundtrip("small")
    assert peers.refused == [] and peers.guard is not None and peers.guard.buffered == 0


async def test_a_4_mib_message_is_dropped_while_reassembled(peers):
    sctp = peers.client.sctp
    sctp._remote_max_message_size = None  # what a hostile client does: ignore the advertised limit
    guard = peers.guard
    assert guard is not None
    peak = 0

    def sample() -> bool:
        nonlocal peak
        peak = max(peak, _held(peers)[1])
        return not sctp._outbound_queue and not sctp._sent_queue

    await sctp._send(peers.channel.id, WEBRTC_STRING, b"z" * BIG)
    assert await async_wait_until(sample, WAIT_S, 0.005)
    # never more than one message's worth held, and nothing once it is dropped
    assert peak <= LIMIT + USERDATA_MAX_LENGTH, peak
    assert _held(peers) == (0, 0) and guard.buffered <= CHUNK_OVERHEAD_BYTES
    assert guard.messages_dropped == 1 and peers.refused == ["message"]
    assert not any(len(m) > LIMIT for m in peers.received)
    # the next message on the same ordered stream is delivered (the dropped one's place kept)
    await peers.roundtrip("after the big one")
    await sctp._send(peers.channel.id, WEBRTC_STRING, b"z" * BIG)
    await peers.roundtrip("after the second big one")
    assert guard.messages_dropped == 2 and peers.refused == ["message", "message"]  # one each


async def test_a_message_whose_last_fragment_never_comes_stays_bounded(peers):
    guard = peers.guard
    assert guard is not None
    await send_fragments(peers.client, peers.channel.id, ENDLESS_FRAGMENTS)
    await all_acked(peers.client)  # every fragment acknowledged: the client is not held back, memory is
    assert _held(peers)[1] == 0 and guard.messages_dropped == 1
    assert guard.buffered <= CHUNK_OVERHEAD_BYTES  # the dropped message's state, until its stream moves on
    await peers.roundtrip("still works")
    assert peers.refused == ["message"]


async def test_partial_messages_on_many_streams_meet_the_budget(peers):
    """Partial messages under the limit, never finished, on many streams: the connection
    holds at most its budget; chunks past it are not acknowledged (the sender must retry)."""
    guard = peers.guard
    assert guard is not None
    per_message = LIMIT // USERDATA_MAX_LENGTH - 1  # under the limit
    streams = math.ceil(BUDGET / (per_message * USERDATA_MAX_LENGTH)) + 2
    for index in range(streams):
        await send_fragments(peers.client, 100 + 2 * index, per_message)
    assert await async_wait_until(lambda: guard.chunks_refused > 0, WAIT_S, 0.02)
    await asyncio.sleep(0.5)  # retransmissions of refused chunks are refused again
    chunks, held = _held(peers)
    assert held + chunks * CHUNK_OVERHEAD_BYTES <= BUDGET
    assert guard.buffered <= BUDGET and peers.refused == ["buffered"]
    assert guard.messages_dropped == 0


async def test_unordered_channels_are_measured_too(peers):
    """An unordered channel (no stream sequence to keep): the oversized message is dropped,
    the ones around it arrive, nothing is left held."""
    unordered = peers.client.createDataChannel("unordered", ordered=False)
    opened = asyncio.Event()
    unordered.on("open", opened.set)
    await asyncio.wait_for(opened.wait(), WAIT_S)
    sctp = peers.client.sctp
    sctp._remote_max_message_size = None
    unordered.send("before")
    await sctp._send(unordered.id, WEBRTC_STRING, b"u" * (LIMIT * 4), ordered=False)
    unordered.send("after")
    assert await async_wait_until(lambda: "before" in peers.received and "after" in peers.received, WAIT_S, 0.01), peers.received
    await all_acked(peers.client)
    assert peers.guard is not None and peers.guard.messages_dropped == 1
    assert _held(peers) == (0, 0) and not any(len(m) > LIMIT for m in peers.received)
