"""The data plane's formats, defined once and imported by the gateway and the worker alike.

Three things cross between a gateway and a worker for a session:

* **Segments** (shared memory, one per direction). A 64-byte segment header, then the
  video slots, then the audio slots. Every slot is a 64-byte slot header followed by its
  payload (C-contiguous array bytes). A video slot's ``layout`` byte is its pixel format
  (``PIXFMT_*`` below): I420, the decoder's and the encoder's own layout, is the normal form
  (Y plane H x W, then U and V planes ceil(H/2) x ceil(W/2), rows packed without padding;
  ``ndim`` 2, ``shape`` (H, W, 0)); RGB24 (an (H, W, 3) uint8 array, ``ndim`` 3) is the
  fallback for frames that come in another format. For audio the same byte is the channel
  layout (``LAYOUTS``).
* **Link messages** on a connected Unix SOCK_SEQPACKET socket (the doorbell). Each message
  is one datagram whose first byte is its type:
  ``F`` a frame is ready in a slot, ``R`` a slot is given back, ``C`` a msgpack control map.
  The kernel orders them, so a slot's bytes are visible before its ``F`` arrives.
* **Control messages**: small dataclasses with an explicit ``encode``/``decode`` to and from
  msgpack. Nothing on the data plane is ever pickled. One of them, ``HandlerStats``, carries
  the worker's histogram of handler call durations (bucket bounds ``HANDLER_BUCKETS_S``,
  fixed here so both sides agree on them) at most every ``HANDLER_STATS_PERIOD_S``.

This module imports only the standard library, numpy and msgpack, so a worker process
loads nothing of the gateway.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field, fields, is_dataclass
from enum import StrEnum
from typing import Any, ClassVar

import msgpack
import numpy as np

from workers.link.shape import StreamShape, Transport

# --- segment layout -----------------------------------------------------------------------
SEGMENT_MAGIC = b"RTCP"
SEGMENT_VERSION = 2  # 2: video slots may hold I420 (a version-1 peer read every frame as RGB24)
# magic, version, video_slots, video_slot_bytes, audio_slots, audio_slot_bytes
SEGMENT_HEADER = struct.Struct("<4sHHIHI")
SEGMENT_HEADER_BYTES = 64  # the header struct, padded so slots start cache-line aligned

# seq, pts, time_base num, time_base den, sample_rate, nbytes, kind, dtype, layout, ndim, shape[3]
SLOT_HEADER = struct.Struct("<QqIIIIBBBB3I")
SLOT_HEADER_BYTES = 64  # the header struct (48 bytes), padded so the payload is aligned

KIND_VIDEO = 1
KIND_AUDIO = 2

# dtype codes: a fixed table, never a pickled dtype
DTYPES: tuple[np.dtype, ...] = (
    np.dtype("uint8"),
    np.dtype("int16"),
    np.dtype("float32"),
    np.dtype("int32"),
    np.dtype("float64"),
    np.dtype("uint16"),
)
DTYPE_CODES = {dt: i for i, dt in enumerate(DTYPES)}

LAYOUTS = ("", "mono", "stereo")
LAYOUT_CODES = {name: i for i, name in enumerate(LAYOUTS)}

# video pixel formats, in a video slot's layout byte. RGB24 is 0, the byte every video slot
# carried before I420 existed, so such a header still reads as what it holds.
PIXFMT_RGB24 = 0  # (H, W, 3) uint8 interleaved RGB
PIXFMT_I420 = 1  # yuv420p planar, BT.601 limited range: Y, U, V planes back to back
PIXFMTS = ("rgb24", "i420")
RGB24_CHANNELS = 3


def chroma_size(height: int, width: int) -> tuple[int, int]:
    """Rows and columns of an I420 frame's U (and V) plane: one sample per 2x2 pixels,
    rounded up, as libvpx and FFmpeg's yuv420p have it for odd sizes."""
    return (height + 1) // 2, (width + 1) // 2


def video_nbytes(pixfmt: int, height: int, width: int) -> int:
    """Payload bytes of a video frame of this size and pixel format."""
    if pixfmt == PIXFMT_I420:
        ch, cw = chroma_size(height, width)
        return height * width + 2 * ch * cw
    if pixfmt == PIXFMT_RGB24:
        return height * width * RGB24_CHANNELS
    raise WireError(f"unknown pixel format {pixfmt}")


def i420_views(payload: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Views of an I420 payload (1-D uint8 of ``video_nbytes(PIXFMT_I420, ...)`` bytes):
    ``(packed, y, u, v)``. ``packed`` is the (H * 3 / 2, W) array OpenCV's I420 conversions
    take when both sizes are even (its U and V rows then pack two to a row), the 1-D
    payload otherwise (OpenCV cannot take it as is)."""
    ch, cw = chroma_size(height, width)
    luma = height * width
    chroma = ch * cw
    y = payload[:luma].reshape(height, width)
    u = payload[luma : luma + chroma].reshape(ch, cw)
    v = payload[luma + chroma : luma + 2 * chroma].reshape(ch, cw)
    even = not (height | width) & 1
    packed = payload[: luma + 2 * chroma].reshape(height * 3 // 2, width) if even else payload
    return packed, y, u, v


@dataclass(slots=True)
class SlotHeader:
    """What a slot holds. ``shape`` has ``ndim`` meaningful entries."""

    seq: int
    pts: int
    time_base_num: int
    time_base_den: int
    sample_rate: int
    nbytes: int
    kind: int
    dtype: int
    layout: int
    ndim: int
    shape: tuple[int, int, int]

    def pack_into(self, buf: memoryview, offset: int) -> None:
        SLOT_HEADER.pack_into(
            buf,
            offset,
            self.seq,
            self.pts,
            self.time_base_num,
            self.time_base_den,
            self.sample_rate,
            self.nbytes,
            self.kind,
            self.dtype,
            self.layout,
            self.ndim,
            *self.shape,
        )

    @classmethod
    def unpack_from(cls, buf: memoryview, offset: int) -> SlotHeader:
        (seq, pts, tb_num, tb_den, rate, nbytes, kind, dtype, layout, ndim, s0, s1, s2) = (
            SLOT_HEADER.unpack_from(buf, offset)
        )
        return cls(seq, pts, tb_num, tb_den, rate, nbytes, kind, dtype, layout, ndim, (s0, s1, s2))


# --- link messages --------------------------------------------------------------------------
MSG_FRAME = ord("F")
MSG_RELEASE = ord("R")
MSG_CONTROL = ord("C")
SLOT_MESSAGE = struct.Struct("<BBH")  # type, kind, slot index
# TCP form (worker on another node): the same messages on a byte stream, each behind its
# length; an "F" carries its slot (header and payload) after the slot message, since the
# peer has no shared segment to read it from
STREAM_LENGTH = struct.Struct("<I")
# control messages larger than one datagram are fragmented: see workers/link/channel.py


class WireError(ValueError):
    """A message or segment that does not follow this module's layout."""


# --- handler call durations -------------------------------------------------------------------
# Upper bounds (seconds, inclusive, as Prometheus' "le") of the buckets a worker counts its
# handler calls in; one more bucket, +Inf, follows the last. 33 ms is a 30 fps frame period,
# 20 ms an audio frame: a handler above either falls behind its media.
HANDLER_BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.033, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
HANDLER_BUCKET_COUNT = len(HANDLER_BUCKETS_S) + 1  # counts a histogram carries: one per bound, then +Inf
HANDLER_STATS_PERIOD_S = 1.0  # a worker reports its handler histogram at most this often (and once at the end)


@dataclass(frozen=True, slots=True)
class HandlerHist:
    """A session's handler call durations, as the gateway last heard them: calls per bucket
    of ``HANDLER_BUCKETS_S`` (not cumulative; +Inf last) and their total seconds, since the
    session began. Immutable, so a scrape may read it from another thread."""

    counts: tuple[int, ...] = (0,) * HANDLER_BUCKET_COUNT
    sum_s: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)


EMPTY_HANDLER_HIST = HandlerHist()


# --- control messages -----------------------------------------------------------------------


def _encode_default(obj: Any) -> Any:
    """msgpack fallback for values users put in args and AdditionalOutputs."""
    if isinstance(obj, np.ndarray):
        return msgpack.ExtType(1, _pack_array(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        # a user's dataclass travels as a map of its fields, as it did under asdict()
        return {f.name: getattr(obj, f.name) for f in fields(obj)}
    raise TypeError(f"cannot send a value of type {type(obj).__name__} between processes")


def _pack_array(a: np.ndarray) -> bytes:
    # Test-found: an object array's bytes are pointers into this process's heap (garbage to the
    # peer, which then dropped the whole link as a protocol error): refuse it here instead.
    if a.dtype.hasobject:
        raise TypeError(f"cannot send a numpy array of dtype {a.dtype} (object) between processes")
    # tobytes() is C order whatever the layout; np.ascontiguousarray (used before) turned a
    # 0-d array into shape (1,), so the shape is taken from the array itself
    packed: bytes = msgpack.packb([a.dtype.str, list(a.shape), a.tobytes()])
    return packed


def _ext_hook(code: int, data: bytes) -> Any:
    if code == 1:
        dtype, shape, raw = msgpack.unpackb(data)
        return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
    return msgpack.ExtType(code, data)


def packb(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, default=_encode_default, use_bin_type=True)
    return packed


def unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


_CONTROL_TYPES: dict[str, type[Control]] = {}


@dataclass
class Control:
    """Base of control messages; ``TYPE`` is the id written on the wire."""

    TYPE: ClassVar[str] = ""

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        _CONTROL_TYPES[cls.TYPE] = cls

    def encode(self) -> bytes:
        # shallow on purpose: dataclasses.asdict deep-copied every value first, which copied
        # arrays for nothing and turned an unsupported value (a lock) into a confusing
        # "cannot pickle" error instead of _encode_default's TypeError
        body = {f.name: getattr(self, f.name) for f in fields(self)}
        body["t"] = self.TYPE
        return bytes((MSG_CONTROL,)) + packb(body)

    @staticmethod
    def decode(data: bytes | memoryview) -> Control:
        if not data or data[0] != MSG_CONTROL:
            # the type byte was ignored before: a fragment ("P") or slot message parsed as a map
            raise WireError(f"malformed control message: type byte {bytes(data[:1])!r}, not 'C'")
        try:
            body = unpackb(bytes(data[1:]))
            cls = _CONTROL_TYPES[body.pop("t")]
            return cls(**body)
        except Exception as exc:  # any malformed map is one kind of error to the caller
            raise WireError(f"malformed control message: {exc}") from exc


WEBSOCKET_SEND = "websocket_send"  # a Message whose data (text) goes to a WebSocket client as it is


@dataclass
class Hello(Control):
    """Gateway -> worker, first message of a session: where its segments are, what it streams.

    Over TCP there are no shared segments: the names are empty and ``geometry`` gives the
    slot layout both sides mirror (video_slots, video_slot_bytes, audio_slots,
    audio_slot_bytes). ``token`` is the worker's secret, learnt through Ray: a TCP port is
    open to the network, so a connection that does not know it is refused."""

    TYPE: ClassVar[str] = "hello"
    session_id: str
    up_segment: str  # gateway writes, worker reads
    down_segment: str  # worker writes, gateway reads
    mode: str
    modality: str
    args: list[Any] = field(default_factory=list)
    args_set: bool = False
    token: str = ""
    geometry: list[int] = field(default_factory=list)
    # how the client reached the gateway: the handler sees it (``phone_mode``, and
    # ``get_current_context().websocket`` for the two WebSocket kinds)
    client_kind: str = Transport.WEBRTC  # a Transport's value
    # failover (docs/failover.md): the handler's latest snapshot (packed, opaque to the media
    # process) for a worker that takes over a session, restored before the first frame;
    # how often to send snapshots (0: never) and how large one may be
    state: bytes | None = None
    snapshot_interval_s: float = 0.0
    max_snapshot_bytes: int = 0
    restarts: int = 0  # workers this session had before this one
    # a lost link (its media process died) leaves the handler held this long for a resume;
    # ``resume``: this hello takes over such a session (same session_id), handler and all
    resume_grace_s: float = 0.0
    resume: bool = False
    memory_limit_mb: int = 0  # past this RSS the worker ends the session between frames (0: none)

    @property
    def shape(self) -> StreamShape:
        """What flows which way (a ValueError for a mode or modality rtcpool does not know)."""
        return StreamShape.parse(self.mode, self.modality)

    @property
    def transport(self) -> Transport:
        """How the client reached the gateway (a ValueError for a kind rtcpool does not know)."""
        try:
            return Transport(self.client_kind)
        except ValueError:
            raise ValueError(f"client_kind must be one of {[x.value for x in Transport]}, not {self.client_kind!r}") from None


@dataclass
class Ready(Control):
    """Worker -> gateway: the handler copy exists and the segments are attached."""

    TYPE: ClassVar[str] = "ready"
    pid: int
    node_id: str = ""
    audio_in_rate: int = 0  # the handler's input_sample_rate (0: it takes no audio)
    audio_in_layout: str = "mono"
    audio_out_rate: int = 0  # the handler's output_sample_rate (0: a plain function's, set per chunk)


@dataclass
class Args(Control):
    """Gateway -> worker: the stream's additional inputs changed (``latest_args[1:]``)."""

    TYPE: ClassVar[str] = "args"
    args: list[Any]


class OutputsKind(StrEnum):
    """Whose values an ``Outputs`` carries (a ``StrEnum``: its value is the string on the wire)."""

    ADDITIONAL = "additional"  # an AdditionalOutputs: for on_additional_outputs' components
    STREAM = "stream"  # the values a function returned for its stream's other outputs


@dataclass
class Outputs(Control):
    """Worker -> gateway: values for components of the page, in order. ``kind`` says whose:
    an ``AdditionalOutputs`` the handler yielded (for ``on_additional_outputs``), or the
    values a function returned for the stream's own non-WebRTC ``outputs`` (in their order,
    the WebRTC component's position left out). A message without ``kind`` (an older peer)
    is an AdditionalOutputs."""

    TYPE: ClassVar[str] = "outputs"
    seq: int
    values: list[Any]
    kind: str = OutputsKind.ADDITIONAL  # an OutputsKind's value


@dataclass
class Message(Control):
    """Worker -> gateway: a message for the client's data channel (``{"type", "data"}``)."""

    TYPE: ClassVar[str] = "message"
    type: str
    data: Any = None


@dataclass
class Error(Control):
    """Worker -> gateway: the handler raised; the session goes on."""

    TYPE: ClassVar[str] = "error"
    message: str


@dataclass
class ClearAudio(Control):
    """Worker -> gateway: drop the audio queued for the client (a reply was interrupted)."""

    TYPE: ClassVar[str] = "clear_audio"


@dataclass
class Close(Control):
    """Either way: the session ends. The worker answers a gateway's Close with its own;
    ``retire``: the worker will exit after this session (its handler would not stop)."""

    TYPE: ClassVar[str] = "close"
    reason: str = ""
    retire: bool = False
    # the worker's own reason to end, when the media process should act on it:
    # CLOSE_MEMORY_LIMIT (its handler passed the pool's memory limit: failover, docs/failover.md)
    cause: str = ""


CLOSE_MEMORY_LIMIT = "memory_limit"  # a Close.cause


@dataclass
class Snapshot(Control):
    """Worker -> gateway: the handler's state (``snapshot()``, packed), for the worker that
    takes the session over if this one dies. The media process keeps the latest and never
    unpacks it: it is the handler's to read."""

    TYPE: ClassVar[str] = "snapshot"
    state: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.state, bytes):
            raise WireError("a snapshot's state must be bytes")


@dataclass
class HandlerStats(Control):
    """Worker -> gateway: the session's handler call durations so far (totals, not a delta,
    so a report the gateway never reads loses nothing); at most every HANDLER_STATS_PERIOD_S
    while calls happen, and once more just before the worker's Close. Checked on decode: the
    gateway hands these numbers to its metrics."""

    TYPE: ClassVar[str] = "handler_stats"
    counts: list[int]  # per bucket of HANDLER_BUCKETS_S, then +Inf
    sum_s: float = 0.0

    def __post_init__(self) -> None:
        counts = self.counts
        if not isinstance(counts, list) or len(counts) != HANDLER_BUCKET_COUNT:
            raise WireError(f"handler_stats needs {HANDLER_BUCKET_COUNT} bucket counts")
        for c in counts:
            # bool is an int to Python; a negative count would make the gateway's totals fall
            if type(c) is not int or c < 0:
                raise WireError(f"handler_stats bucket count {c!r} is not a count")
        s = self.sum_s
        if type(s) not in (int, float) or not math.isfinite(s) or s < 0:
            raise WireError(f"handler_stats sum {s!r} is not a duration")

    def hist(self) -> HandlerHist:
        return HandlerHist(tuple(self.counts), float(self.sum_s))
