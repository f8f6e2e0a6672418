"""workers/link/wire.py: byte layouts, control message round trips, and what malformed input does.

The layouts are a contract between two processes that may run different builds, so the
offsets are asserted byte by byte rather than only through pack/unpack round trips.
"""

from __future__ import annotations

import dataclasses
import datetime
import random
import struct
import threading

import msgpack
import numpy as np
import pytest

from workers.link import wire
from workers.link.wire import (
    DTYPE_CODES,
    DTYPES,
    KIND_AUDIO,
    KIND_VIDEO,
    LAYOUT_CODES,
    LAYOUTS,
    MSG_CONTROL,
    MSG_FRAME,
    MSG_RELEASE,
    SEGMENT_HEADER,
    SEGMENT_HEADER_BYTES,
    SEGMENT_MAGIC,
    SEGMENT_VERSION,
    SLOT_HEADER,
    SLOT_HEADER_BYTES,
    SLOT_MESSAGE,
    Args,
    ClearAudio,
    Close,
    Control,
    Error,
    HandlerStats,
    Hello,
    Message,
    Outputs,
    OutputsKind,
    Ready,
    SlotHeader,
    Snapshot,
    WireError,
)

# --- segment header -------------------------------------------------------------------------


def test_segment_header_size_and_padding():
    assert SEGMENT_HEADER.format.startswith("<"), "little-endian, no native alignment"
    assert SEGMENT_HEADER.size == 4 + 2 + 2 + 4 + 2 + 4 == 18
    assert SEGMENT_HEADER_BYTES == 64
    assert SEGMENT_HEADER.size <= SEGMENT_HEADER_BYTES
    assert SEGMENT_HEADER_BYTES % 64 == 0, "slots start cache-line aligned"


def test_segment_header_field_offsets():
    raw = SEGMENT_HEADER.pack(SEGMENT_MAGIC, 0x0102, 0x0304, 0x05060708, 0x090A, 0x0B0C0D0E)
    assert raw[0:4] == b"RTCP"
    assert raw[4:6] == b"\x02\x01"  # version, u16 LE
    assert raw[6:8] == b"\x04\x03"  # video slots, u16 LE
    assert raw[8:12] == b"\x08\x07\x06\x05"  # video slot bytes, u32 LE
    assert raw[12:14] == b"\x0a\x09"  # audio slots, u16 LE
    assert raw[14:18] == b"\x0e\x0d\x0c\x0b"  # audio slot bytes, u32 LE


def test_segment_header_round_trip_at_offset():
    buf = bytearray(SEGMENT_HEADER_BYTES + 10)
    values = (SEGMENT_MAGIC, SEGMENT_VERSION, 4, 2**32 - 1, 65535, 9664)
    SEGMENT_HEADER.pack_into(buf, 10, *values)
    assert buf[:10] == bytes(10)
    assert SEGMENT_HEADER.unpack_from(buf, 10) == values


def test_segment_magic_and_version_are_fixed():
    assert SEGMENT_MAGIC == b"RTCP"
    assert SEGMENT_VERSION == 2  # 2: video slots may hold I420


# --- slot header ------------------------------------------------------------------------------


def test_slot_header_size_and_padding():
    assert SLOT_HEADER.format.startswith("<")
    assert SLOT_HEADER.size == 8 + 8 + 4 * 4 + 4 * 1 + 3 * 4 == 48
    assert SLOT_HEADER_BYTES == 64
    assert SLOT_HEADER.size <= SLOT_HEADER_BYTES


def test_slot_header_field_offsets():
    h = SlotHeader(
        seq=0x0102030405060708,
        pts=-2,
        time_base_num=0x11121314,
        time_base_den=0x21222324,
        sample_rate=0x31323334,
        nbytes=0x41424344,
        kind=0x51,
        dtype=0x52,
        layout=0x53,
        ndim=0x54,
        shape=(0x61626364, 0x71727374, 0x01020304),
    )
    buf = bytearray(SLOT_HEADER_BYTES)
    h.pack_into(memoryview(buf), 0)
    assert buf[0:8] == bytes.fromhex("0807060504030201")  # seq u64 LE
    assert buf[8:16] == (-2).to_bytes(8, "little", signed=True)  # pts i64 LE
    assert buf[16:20] == bytes.fromhex("14131211")  # time base numerator
    assert buf[20:24] == bytes.fromhex("24232221")  # time base denominator
    assert buf[24:28] == bytes.fromhex("34333231")  # sample rate
    assert buf[28:32] == bytes.fromhex("44434241")  # nbytes
    assert buf[32:36] == bytes((0x51, 0x52, 0x53, 0x54))  # kind, dtype, layout, ndim
    assert buf[36:40] == bytes.fromhex("64636261")
    assert buf[40:44] == bytes.fromhex("74737271")
    assert buf[44:48] == bytes.fromhex("04030201")
    assert buf[48:] == bytes(16), "padding stays zero"


@pytest.mark.parametrize(
    "header",
    [
        SlotHeader(1, 0, 1, 90_000, 0, 640 * 480 * 3, KIND_VIDEO, 0, 0, 3, (480, 640, 3)),
        SlotHeader(2**64 - 1, -(2**63), 2**32 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1, 255, 255, 255, 255, (2**32 - 1,) * 3),
        SlotHeader(7, 2**63 - 1, 1, 48_000, 48_000, 1920, KIND_AUDIO, 1, 1, 2, (1, 960, 0)),
        SlotHeader(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, (0, 0, 0)),
    ],
)
def test_slot_header_round_trip(header):
    buf = bytearray(3 * SLOT_HEADER_BYTES)
    header.pack_into(memoryview(buf), SLOT_HEADER_BYTES)
    assert buf[:SLOT_HEADER_BYTES] == bytes(SLOT_HEADER_BYTES)
    assert buf[2 * SLOT_HEADER_BYTES :] == bytes(SLOT_HEADER_BYTES)
    assert SlotHeader.unpack_from(memoryview(buf), SLOT_HEADER_BYTES) == header


def test_slot_header_out_of_range_field_raises():
    buf = memoryview(bytearray(SLOT_HEADER_BYTES))
    with pytest.raises(struct.error):
        SlotHeader(-1, 0, 1, 1, 0, 0, 1, 0, 0, 0, (0, 0, 0)).pack_into(buf, 0)
    with pytest.raises(struct.error):
        SlotHeader(0, 0, 1, 1, 0, 0, 256, 0, 0, 0, (0, 0, 0)).pack_into(buf, 0)


def test_slot_header_unpack_from_short_buffer_raises():
    with pytest.raises(struct.error):
        SlotHeader.unpack_from(memoryview(bytearray(SLOT_HEADER.size - 1)), 0)


# --- link messages ------------------------------------------------------------------------------


def test_slot_message_layout():
    assert SLOT_MESSAGE.format.startswith("<")
    assert SLOT_MESSAGE.size == 4
    assert SLOT_MESSAGE.pack(MSG_FRAME, KIND_VIDEO, 0x0102) == b"F\x01\x02\x01"
    assert SLOT_MESSAGE.pack(MSG_RELEASE, KIND_AUDIO, 63) == b"R\x02\x3f\x00"
    assert SLOT_MESSAGE.unpack(b"R\x02\xff\xff") == (MSG_RELEASE, KIND_AUDIO, 65535)


def test_message_type_bytes_are_distinct_ascii():
    from workers.link.framing import MSG_PART

    types = [MSG_FRAME, MSG_RELEASE, MSG_CONTROL, MSG_PART]
    assert [chr(t) for t in types] == ["F", "R", "C", "P"]
    assert KIND_VIDEO == 1 and KIND_AUDIO == 2


def test_dtype_and_layout_tables_are_fixed():
    # the code is an index on the wire: reordering these tables breaks mixed versions
    assert [str(d) for d in DTYPES] == ["uint8", "int16", "float32", "int32", "float64", "uint16"]
    assert all(DTYPE_CODES[d] == i for i, d in enumerate(DTYPES))
    assert LAYOUTS == ("", "mono", "stereo")
    assert LAYOUT_CODES == {"": 0, "mono": 1, "stereo": 2}


# --- control messages ------------------------------------------------------------------------

EXAMPLES: dict[type[Control], list[Control]] = {
    Hello: [
        Hello("s1", "rtcpool-1-up", "rtcpool-1-down", "send-receive", "video"),
        Hello("s2", "u", "d", "receive", "audio-video", ["__webrtc_value__", 3, "x", None], True),
    ],
    Ready: [Ready(pid=1234), Ready(pid=2**31 - 1, node_id="ab" * 28, audio_in_rate=16_000, audio_in_layout="stereo")],
    Args: [Args([]), Args([1, 2.5, "three", None, True, {"k": [1, 2]}, b"\x00\xff"])],
    Outputs: [
        Outputs(1, []),
        Outputs(2**40, ["text", {"a": 1}, [1, [2, [3]]]]),
        Outputs(3, [[1, 2], "transcript"], OutputsKind.STREAM),
    ],
    Message: [Message("log"), Message("end_stream", "bye"), Message("send_input", {"x": 1})],
    Error: [Error(""), Error("ValueError: ünïcödé ✓")],
    ClearAudio: [ClearAudio()],
    Close: [Close(), Close("time limit reached"), Close("handler would not stop", retire=True)],
    HandlerStats: [
        HandlerStats([0] * wire.HANDLER_BUCKET_COUNT),
        HandlerStats([2**40, *range(1, wire.HANDLER_BUCKET_COUNT)], 1234.5),
    ],
    Snapshot: [Snapshot(b""), Snapshot(b"\x93\x01\x02\x03"), Snapshot(bytes(70_000))],
}
ALL_EXAMPLES = [m for msgs in EXAMPLES.values() for m in msgs]


def test_every_control_type_has_examples_here():
    # a new Control subclass must come with round-trip and truncation coverage in this file
    assert set(EXAMPLES) == set(wire._CONTROL_TYPES.values())
    assert {cls.TYPE for cls in EXAMPLES} == set(wire._CONTROL_TYPES)
    assert len(wire._CONTROL_TYPES) == len(EXAMPLES), "two controls share a TYPE"


@pytest.mark.parametrize("msg", ALL_EXAMPLES, ids=repr)
def test_control_round_trip(msg):
    data = msg.encode()
    assert data[0] == MSG_CONTROL
    back = Control.decode(data)
    assert type(back) is type(msg)
    assert back == msg
    # memoryview input (what the channel hands over) decodes the same
    assert Control.decode(memoryview(data)) == msg


@pytest.mark.parametrize("msg", ALL_EXAMPLES, ids=repr)
def test_control_body_is_a_msgpack_map_with_type(msg):
    body = msgpack.unpackb(msg.encode()[1:], raw=False)
    assert isinstance(body, dict)
    assert body.pop("t") == msg.TYPE
    assert set(body) == {f.name for f in dataclasses.fields(msg)}


@pytest.mark.parametrize("msg", ALL_EXAMPLES, ids=repr)
def test_truncated_control_at_every_length_raises_wire_error(msg):
    data = msg.encode()
    for n in range(len(data)):
        with pytest.raises(WireError, match="malformed control message"):
            Control.decode(data[:n])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"C",
        b"C\xc1",  # msgpack's never-used byte
        b"C" + msgpack.packb([1, 2, 3]),  # not a map
        b"C" + msgpack.packb(7),
        b"C" + msgpack.packb({"reason": "x"}),  # no type
        b"C" + msgpack.packb({"t": "nope"}),  # unknown type
        b"C" + msgpack.packb({"t": ""}),  # the base class is no message
        b"C" + msgpack.packb({"t": "close", "reason": "x", "extra": 1}),  # unknown field
        b"C" + msgpack.packb({"t": "ready"}),  # missing required field
        b"C" + msgpack.packb({"t": "close"}) + b"\x00",  # trailing bytes
        b"C" + msgpack.packb({"t": "args", "args": [msgpack.ExtType(1, b"\xc1")]}),  # bad array ext
        b"C" + msgpack.packb({"t": "args", "args": [msgpack.ExtType(1, msgpack.packb(["<i4", [3], b"\x00" * 4]))]}),  # shape/bytes mismatch
        b"C" + msgpack.packb({"t": "args", "args": [msgpack.ExtType(1, msgpack.packb(["|O", [1], b"\x00" * 8]))]}),  # object dtype from a peer
        b"F\x01\x00\x00",  # a slot message is not a control
        b"P" + msgpack.packb({"t": "close"}),  # neither is a fragment
    ],
)
def test_garbage_control_raises_wire_error(data):
    with pytest.raises(WireError):
        Control.decode(data)


def test_outputs_without_kind_from_an_older_peer_are_additional_outputs():
    old = b"C" + msgpack.packb({"t": "outputs", "seq": 7, "values": ["a", 1]})
    back = Control.decode(old)
    assert back == Outputs(7, ["a", 1]) and back.kind == OutputsKind.ADDITIONAL
    assert Outputs(7, ["a", 1]).encode() != Outputs(7, ["a", 1], OutputsKind.STREAM).encode()
    assert Control.decode(Outputs(8, ["s"], OutputsKind.STREAM).encode()).kind == OutputsKind.STREAM


def test_random_garbage_never_raises_anything_but_wire_error():
    rng = random.Random(1234)
    valid = [m.encode() for m in ALL_EXAMPLES]
    for i in range(3000):
        if i % 2:
            data = b"C" + rng.randbytes(rng.randrange(0, 64))
        else:  # flip bytes of a valid message: nearer to what a buggy peer sends
            data = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(1, len(data))] = rng.randrange(256)
            data = bytes(data)
        try:
            msg = Control.decode(data)
        except WireError:
            continue
        assert isinstance(msg, Control)


def test_wire_error_is_a_value_error():
    assert issubclass(WireError, ValueError)


# --- values inside controls ----------------------------------------------------------------------

ARRAYS = [
    np.arange(24, dtype=np.uint8).reshape(2, 4, 3),
    np.linspace(-1, 1, 10, dtype=np.float32),
    np.array([[1, -2], [3, -32768]], dtype=np.int16),
    np.array([True, False, True]),
    np.arange(6, dtype=">i4").reshape(2, 3),  # big-endian keeps its byte order
    np.arange(20, dtype=np.float64).reshape(4, 5)[::2, ::-2],  # not contiguous
    np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)),
    np.array(5, dtype=np.int64),  # 0-d
    np.zeros((0, 3), dtype=np.uint16),  # empty
    np.array([1 + 2j, 3 - 4j], dtype=np.complex64),
    np.array(["ab", "ü"]),  # unicode, fixed width
    np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8),
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_numpy_array_round_trips_inside_a_control(array):
    back = Control.decode(Outputs(1, [array, {"nested": [array]}]).encode())
    assert isinstance(back, Outputs)
    for got in (back.values[0], back.values[1]["nested"][0]):
        assert isinstance(got, np.ndarray)
        assert got.dtype == array.dtype
        assert got.shape == array.shape
        np.testing.assert_array_equal(got, array)
        assert got.flags.writeable, "a decoded array is the receiver's own, not a read-only view"


@pytest.mark.parametrize(
    ("scalar", "expected_type"),
    [
        (np.float32(1.5), float),
        (np.float64(-0.25), float),
        (np.int64(-(2**40)), int),
        (np.uint8(255), int),
        (np.int16(-3), int),
        (np.bool_(True), bool),
    ],
)
def test_numpy_scalars_become_python_values(scalar, expected_type):
    back = Control.decode(Args([scalar, {"k": scalar}]).encode())
    assert type(back.args[0]) is expected_type
    assert back.args[0] == scalar.item()
    assert back.args[1]["k"] == scalar.item()


def test_plain_values_round_trip():
    values = [None, True, 0, -1, 2**63 - 1, -(2**63), 1.25, "ü", b"\x00\x01", [], {}, {1: "int key", "s": [1, {"deep": None}]}]
    back = Control.decode(Args(values).encode())
    assert back.args == values
    assert type(back.args[8]) is bytes and type(back.args[7]) is str


def test_tuples_arrive_as_lists():
    back = Control.decode(Args([(1, (2, 3))]).encode())
    assert back.args == [[1, [2, 3]]]


class Opaque:
    pass


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (Opaque(), "Opaque"),
        ({1, 2}, "set"),
        (datetime.datetime(2024, 1, 1), "datetime"),
        (threading.Lock(), "lock"),
        (lambda: 0, "function"),
    ],
)
def test_unsupported_value_gives_a_clear_type_error(value, type_name):
    with pytest.raises(TypeError, match=f"cannot send a value of type {type_name} between processes"):
        Outputs(1, ["ok", {"inner": value}]).encode()


def test_object_array_is_refused_at_the_sender():
    # its bytes are pointers into the sender's heap: meaningless (and a leak) in another process
    with pytest.raises(TypeError, match="object"):
        Args([np.array(["a", 1], dtype=object)]).encode()


@dataclasses.dataclass
class Point:
    x: int
    y: np.ndarray


def test_a_users_dataclass_travels_as_a_map_of_its_fields():
    back = Control.decode(Outputs(1, [Point(1, np.arange(3))]).encode())
    assert set(back.values[0]) == {"x", "y"}
    assert back.values[0]["x"] == 1
    np.testing.assert_array_equal(back.values[0]["y"], np.arange(3))


def test_encoding_does_not_copy_or_change_the_message():
    big = np.zeros((100, 100), dtype=np.uint8)
    msg = Outputs(1, [big])
    msg.encode()
    assert msg.values[0] is big


@pytest.mark.parametrize(
    "body",
    [
        {"counts": [0] * (wire.HANDLER_BUCKET_COUNT - 1)},  # buckets of another build
        {"counts": [0] * (wire.HANDLER_BUCKET_COUNT + 1)},
        {"counts": [-1] + [0] * (wire.HANDLER_BUCKET_COUNT - 1)},  # totals would fall
        {"counts": [True] + [0] * (wire.HANDLER_BUCKET_COUNT - 1)},
        {"counts": [0.5] + [0] * (wire.HANDLER_BUCKET_COUNT - 1)},
        {"counts": "x" * wire.HANDLER_BUCKET_COUNT},
        {"counts": [0] * wire.HANDLER_BUCKET_COUNT, "sum_s": float("nan")},
        {"counts": [0] * wire.HANDLER_BUCKET_COUNT, "sum_s": float("inf")},
        {"counts": [0] * wire.HANDLER_BUCKET_COUNT, "sum_s": -1.0},
        {"counts": [0] * wire.HANDLER_BUCKET_COUNT, "sum_s": "1"},
    ],
    ids=repr,
)
def test_handler_stats_the_gateway_would_count_are_checked_on_decode(body):
    # the gateway adds these numbers into its metrics: a wrong one is a protocol error there
    with pytest.raises(WireError, match="malformed control message: handler_stats"):
        Control.decode(b"C" + msgpack.packb({"t": "handler_stats", **body}))


def test_handler_stats_as_the_gateway_keeps_them():
    counts = list(range(wire.HANDLER_BUCKET_COUNT))
    hist = Control.decode(HandlerStats(counts, 2.5).encode()).hist()
    assert hist == wire.HandlerHist(tuple(counts), 2.5) and hist.count == sum(counts)
    assert wire.EMPTY_HANDLER_HIST.count == 0 and len(wire.EMPTY_HANDLER_HIST.counts) == len(wire.HANDLER_BUCKETS_S) + 1
    assert list(wire.HANDLER_BUCKETS_S) == sorted(set(wire.HANDLER_BUCKETS_S))  # bisect needs them ascending
