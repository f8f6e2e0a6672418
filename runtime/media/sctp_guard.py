"""Data-channel messages measured while aiortc's SCTP reassembles them, not after.

aiortc keeps every DATA chunk of a message in its stream's reassembly list until the last
fragment arrives, re-scans that list from its start for every chunk (quadratic in the
fragments, on the media event loop), then joins the whole message and hands it up; only
then can the session see that it is over the 64 KiB limit. A 4 MiB message is rebuilt in
full; a message whose last fragment never comes grows memory for as long as the client
sends. aiortc advertises a 256 KiB ``max-message-size`` and a 1 MiB receive window, and
its own sender keeps to neither (browsers keep to both).

:class:`SctpGuard` replaces, per peer connection, the transport's DATA-chunk handler
(``RTCSctpTransport._receive_data_chunk``, read from aiortc 1.16.0) with one that

* follows each stream's message as its fragments arrive in order, and drops a message as
  soon as it passes ``max_message_bytes``: its fragments so far are freed, the rest are
  acknowledged and discarded as they come, and an ordered stream's place is kept by an
  empty placeholder message (payload protocol 0, which aiortc's data channel ignores), so
  the messages after it are still delivered in order;
* keeps a byte budget for the whole connection (``max_buffered_bytes``: fragments held
  over every stream, each counted with what a chunk object costs beyond its bytes): a
  chunk that does not fit is dropped unacknowledged, as RFC 9260 section 6.2 drops
  chunks past a closed receive window, so an honest sender sends it again later and a
  hostile one stalls only its own channel;
* re-scans the list only when a chunk can complete a message (a last fragment, or one
  that fills a gap), so in-order fragments cost O(1) each;

and advertises the real limit (``a=max-message-size`` in the answer) and a receive window
that fits the budget. Out-of-order fragments of a message (after a loss) cannot be
attributed to it cheaply: they are bounded by the budget alone, and a message they
complete is still measured by the session before it is parsed.

Version-checked: :func:`guard_sctp` refuses an aiortc without the internals it replaces
(tests/test_patched_internals.py names them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiortc.rtcsctptransport import (
    SCTP_DATA_FIRST_FRAG,
    SCTP_DATA_LAST_FRAG,
    SCTP_DATA_UNORDERED,
    DataChunk,
    InboundStream,
    RTCSctpCapabilities,
    tsn_plus_one,
)
from aiortc.utils import uint16_gt, uint32_gt, uint32_gte

# What a buffered DATA chunk costs beyond its user data: the DataChunk object, its
# attribute dict, its bytes header and four ints (measured ~450 bytes on CPython 3.11).
# Counting it makes a flood of 1-byte fragments as expensive as it really is.
CHUNK_OVERHEAD_BYTES = 512
# The receive window advertised is this fraction of the budget: a sender keeping to it
# stays inside the budget with chunks down to CHUNK_OVERHEAD_BYTES of data.
RWND_BUDGET_DIVISOR = 2
# Payload protocol of the placeholder that keeps a dropped message's place in an ordered
# stream: 0 is unassigned for WebRTC (RFC 8831), aiortc's data channel ignores it.
PLACEHOLDER_PPID = 0
# The transport's internals replaced or read here, as in aiortc 1.16.0
TRANSPORT_ATTRS = (
    "_receive_data_chunk",
    "_receive_forward_tsn_chunk",
    "_receive_reconfig_param",
    "_mark_received",
    "_get_inbound_stream",
    "_receive",
    "_reset_deferred_streams",
    "_inbound_streams",
    "_last_received_tsn",
    "_sack_misordered",
    "_sack_needed",
    "_advertised_rwnd",
    "getCapabilities",
)
STREAM_ATTRS = ("reassembly", "sequence_number", "add_chunk", "pop_messages")


class _Run:
    """The message a stream is receiving in order: its first TSN, the next TSN expected,
    its bytes so far, and whether it is being dropped."""

    __slots__ = ("first_tsn", "next_tsn", "size", "dropping")

    def __init__(self, first_tsn: int, size: int) -> None:
        self.first_tsn = first_tsn
        self.next_tsn = tsn_plus_one(first_tsn)
        self.size = size
        self.dropping = False


class SctpGuard:
    """One peer connection's SCTP receive side, measured as it reassembles (see the module
    docstring). ``on_refused(what)`` is called for every message dropped (``"message"``:
    each cost its sender over the limit in bytes, so one answer each is no amplification)
    and once per connection for chunks refused for the budget (``"buffered"``: a stalled
    sender retransmits them, which would repeat it)."""

    def __init__(
        self,
        transport: Any,
        *,
        max_message_bytes: int,
        max_buffered_bytes: int,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self._transport = transport
        self.max_message_bytes = max_message_bytes
        self.max_buffered_bytes = max_buffered_bytes
        self._on_refused = on_refused
        self._reported_buffered = False
        self._forward_tsn: Callable[[Any], Awaitable[None]] = transport._receive_forward_tsn_chunk
        self._reconfig: Callable[[Any], Awaitable[None]] = transport._receive_reconfig_param
        self._runs: dict[int, _Run] = {}  # stream id -> the message it receives in order
        self.buffered = 0  # bytes held: chunks (with their overhead) and runs' states
        self.messages_dropped = 0
        self.chunks_refused = 0  # dropped unacknowledged: no room in the budget

    # --- aiortc's replaced handlers -------------------------------------------------------------

    async def receive_data_chunk(self, chunk: DataChunk) -> None:
        t = self._transport
        t._sack_needed = True
        size = len(chunk.user_data)
        # a message's first fragment also opens its run's state (counted as one more chunk)
        opens = (chunk.flags & (SCTP_DATA_FIRST_FRAG | SCTP_DATA_LAST_FRAG)) == SCTP_DATA_FIRST_FRAG
        cost = size + CHUNK_OVERHEAD_BYTES * (2 if opens else 1)
        duplicate = uint32_gte(t._last_received_tsn, chunk.tsn) or chunk.tsn in t._sack_misordered
        if not duplicate and self.buffered + cost > self.max_buffered_bytes:
            self.chunks_refused += 1
            self._report("buffered")
            return
        if t._mark_received(chunk.tsn):
            return  # a duplicate: aiortc reports it in the next SACK
        stream = t._get_inbound_stream(chunk.stream_id)
        ordered = not chunk.flags & SCTP_DATA_UNORDERED
        if ordered and uint16_gt(stream.sequence_number, chunk.stream_seq):
            return  # a late fragment of a message delivered or dropped: it can never be used
        first = chunk.flags & SCTP_DATA_FIRST_FRAG
        last = chunk.flags & SCTP_DATA_LAST_FRAG
        run = self._runs.get(chunk.stream_id)
        if first:
            if run is not None:  # the previous message's end is out of order (or never comes)
                self._end_run(chunk.stream_id)
            run = None
            if not last:
                run = self._runs[chunk.stream_id] = _Run(chunk.tsn, size)
                self.buffered += CHUNK_OVERHEAD_BYTES
        elif run is not None and chunk.tsn == run.next_tsn:
            run.next_tsn = tsn_plus_one(chunk.tsn)
            if run.dropping:
                if last:
                    self._end_run(chunk.stream_id)
                return
            run.size += size
        else:
            run = None  # out of order: only the budget measures it
        if (size if run is None else run.size) > self.max_message_bytes and (run is not None or first):
            await self._drop_message(stream, chunk, run, ordered)
            return
        if run is not None and last:
            self._end_run(chunk.stream_id)
        appended = not stream.reassembly or uint32_gt(chunk.tsn, stream.reassembly[-1].tsn)
        stream.add_chunk(chunk)
        t._advertised_rwnd -= size
        self.buffered += size + CHUNK_OVERHEAD_BYTES
        # a fragment appended after every other one, and not a last one, completes nothing
        if last or not appended:
            await self._deliver(stream)
        await t._reset_deferred_streams()

    async def receive_forward_tsn_chunk(self, chunk: Any) -> None:
        await self._forward_tsn(chunk)
        self._recount()  # aiortc pruned and delivered chunks itself

    async def receive_reconfig_param(self, param: Any) -> None:
        await self._reconfig(param)
        self._recount()  # a stream reset may have dropped a stream with its chunks

    def capabilities(self) -> RTCSctpCapabilities:
        return RTCSctpCapabilities(maxMessageSize=self.max_message_bytes)

    # --- bookkeeping -----------------------------------------------------------------------------

    async def _deliver(self, stream: InboundStream) -> None:
        t = self._transport
        before = len(stream.reassembly)
        delivered = 0
        for message in stream.pop_messages():
            delivered += len(message[2])
            t._advertised_rwnd += len(message[2])
            await t._receive(*message)
        self.buffered -= delivered + CHUNK_OVERHEAD_BYTES * (before - len(stream.reassembly))

    async def _drop_message(self, stream: InboundStream, chunk: DataChunk, run: _Run | None, ordered: bool) -> None:
        """Free what is held of the message ``chunk`` belongs to, discard the rest as it comes,
        and keep its place in an ordered stream."""
        t = self._transport
        self.messages_dropped += 1
        self._report("message")
        first_tsn = chunk.tsn if run is None else run.first_tsn
        if run is not None:
            held = [c for c in stream.reassembly if uint32_gte(c.tsn, first_tsn) and uint32_gt(chunk.tsn, c.tsn)]
            if held:
                stream.reassembly = [c for c in stream.reassembly if not (uint32_gte(c.tsn, first_tsn) and uint32_gt(chunk.tsn, c.tsn))]
                freed = sum(len(c.user_data) for c in held)
                t._advertised_rwnd += freed
                self.buffered -= freed + CHUNK_OVERHEAD_BYTES * len(held)
            if chunk.flags & SCTP_DATA_LAST_FRAG:
                self._end_run(chunk.stream_id)
            else:
                run.dropping = True
        if ordered:
            placeholder = DataChunk(flags=SCTP_DATA_FIRST_FRAG | SCTP_DATA_LAST_FRAG)
            placeholder.tsn = first_tsn
            placeholder.stream_id = chunk.stream_id
            placeholder.stream_seq = chunk.stream_seq
            placeholder.protocol = PLACEHOLDER_PPID
            placeholder.user_data = b""
            stream.add_chunk(placeholder)
            self.buffered += CHUNK_OVERHEAD_BYTES
            await self._deliver(stream)
        await t._reset_deferred_streams()

    def _end_run(self, stream_id: int) -> None:
        if self._runs.pop(stream_id, None) is not None:
            self.buffered -= CHUNK_OVERHEAD_BYTES

    def _recount(self) -> None:
        streams = self._transport._inbound_streams
        for stream_id in [s for s in self._runs if s not in streams]:
            del self._runs[stream_id]
        held = sum(len(c.user_data) + CHUNK_OVERHEAD_BYTES for s in streams.values() for c in s.reassembly)
        self.buffered = held + CHUNK_OVERHEAD_BYTES * len(self._runs)

    def _report(self, what: str) -> None:
        if what == "buffered":
            if self._reported_buffered:
                return
            self._reported_buffered = True
        if self._on_refused is not None:
            self._on_refused(what)


def guard_sctp(
    pc: Any,
    *,
    max_message_bytes: int,
    max_buffered_bytes: int,
    on_refused: Callable[[str], None] | None = None,
) -> SctpGuard | None:
    """Put a :class:`SctpGuard` on ``pc``'s SCTP transport (None: the offer has no data
    channel). Call between setRemoteDescription (which makes the transport) and
    createAnswer (which writes its ``max-message-size``)."""
    transport = pc.sctp
    if transport is None:
        return None
    missing = [name for name in TRANSPORT_ATTRS if not hasattr(transport, name)]
    missing += [f"InboundStream.{name}" for name in STREAM_ATTRS if not hasattr(InboundStream(), name)]
    if missing:
        raise RuntimeError(f"this aiortc's SCTP transport lacks what rtcpool's guard replaces: {', '.join(missing)}")
    guard = SctpGuard(
        transport, max_message_bytes=max_message_bytes, max_buffered_bytes=max_buffered_bytes, on_refused=on_refused
    )
    transport._receive_data_chunk = guard.receive_data_chunk
    transport._receive_forward_tsn_chunk = guard.receive_forward_tsn_chunk
    transport._receive_reconfig_param = guard.receive_reconfig_param
    transport.getCapabilities = guard.capabilities
    # sent in the INIT (or INIT ACK) once DTLS is up, after this
    transport._advertised_rwnd = max_buffered_bytes // RWND_BUDGET_DIVISOR
    return guard
