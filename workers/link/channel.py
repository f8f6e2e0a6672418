"""FrameChannel: a session's data plane between the gateway and its worker.

Same host: every direction has one shared-memory segment of fixed-size slots
(``workers/link/shm.py``, layout in ``workers/link/wire.py``); a connected Unix SOCK_SEQPACKET
socket is the doorbell and carries the slot hand-offs and the msgpack control messages.
Worker on another host: the same messages go over TCP, each behind its length, and a frame
message carries its slot's bytes; each side keeps a private copy of both segments
(:class:`~workers.link.shm.LocalSegment`), so the slot protocol, the ownership checks and
everything above them are one code path for both forms: only the framing differs
(``workers/link/framing.py``). What goes out waits its turn in ``workers/link/outbox.py``;
starting a session is ``workers/link/connect.py``.

Ownership of a slot moves with messages:
the producer writes a free slot and sends ``F``; the consumer sends ``R`` when it is done.
No shared counters, so no atomics are needed: the kernel's message order is the barrier.

Video crosses in the decoder's I420 (``send_i420``, or ``reserve_video``/``commit_video`` to
write a slot in place), half the bytes of RGB24 (``send_video``), which stays as the fallback
form; both forms of the link carry the slot as written.

Video is latest-frame-wins: a frame that arrives while an older one still waits is kept
and the older slot is given back at once (counted in ``stats.video_superseded``), so the
consumer always takes the newest frame and latency stays at about one handler call. A
producer with no free video slot drops the new frame (``stats.video_dropped``); it never
waits. Audio is copied out of its slot on arrival and the slot given back, so audio slots
run out only when the consumer stops reading (``stats.audio_dropped``).

A worker reports how long its handler calls take (``HandlerStats``, about once a second);
the gateway's side keeps the last report in ``handler_hist`` for a metrics scrape to read.

The same class serves both sides. The gateway calls :meth:`pump` from its event loop's
reader callback; the worker calls it from a reader thread. A lock makes the few shared
fields safe between that thread and the handler thread (the outbox has its own for the
backlog; no path holds both); uncontended it costs ~50 ns.
"""

from __future__ import annotations

import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from workers.link import constants as C
from workers.link.framing import (
    CONTROL_FRAGMENT_BYTES,
    MSG_PART,
    ControlParts,
    control_fragments,
    framing_for,
)
from workers.link.outbox import Outbox
from workers.link.shm import Segment
from workers.link.wire import (
    DTYPE_CODES,
    DTYPES,
    EMPTY_HANDLER_HIST,
    KIND_AUDIO,
    KIND_VIDEO,
    LAYOUT_CODES,
    MSG_CONTROL,
    MSG_FRAME,
    MSG_RELEASE,
    PIXFMT_I420,
    PIXFMT_RGB24,
    SLOT_HEADER_BYTES,
    SLOT_MESSAGE,
    Close,
    Control,
    HandlerHist,
    HandlerStats,
    SlotHeader,
    WireError,
    video_nbytes,
)

CLOSE_FLUSH_TIMEOUT_S = 2.0  # close(notify=True) waits this long for the peer to take the backlog


@dataclass
class ChannelStats:
    video_sent: int = 0
    video_received: int = 0
    video_dropped: int = 0  # producer had no free slot
    video_superseded: int = 0  # consumer got a newer frame before taking this one
    audio_sent: int = 0
    audio_received: int = 0
    audio_dropped: int = 0  # producer had no free slot: the consumer stopped reading
    oversize: int = 0  # frames larger than a slot, refused


Frame = tuple[SlotHeader, np.ndarray]


class FrameChannel:
    """One side of a session's data plane: writes ``tx``, reads ``rx``, talks on ``sock``.

    Callbacks run on whichever thread calls :meth:`pump`:
    ``on_video()`` a new frame waits in :meth:`take_video`; ``on_audio(header, array)`` with a
    copy of the samples; ``on_control(msg)``; ``on_closed(reason)`` once.
    """

    def __init__(
        self,
        sock: socket.socket,
        tx: Segment,
        rx: Segment,
        *,
        on_video: Callable[[], None] | None = None,
        on_audio: Callable[[SlotHeader, np.ndarray], None] | None = None,
        on_control: Callable[[Control], None] | None = None,
        on_closed: Callable[[str], None] | None = None,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        # the TCP form: messages carry their length, frames their slot bytes
        self.stream = sock.type == socket.SOCK_STREAM
        # the largest message the peer may send: a frame message with a whole slot on TCP
        max_message = max(
            CONTROL_FRAGMENT_BYTES + 1,
            SLOT_MESSAGE.size + max(rx.geometry.video_slot_bytes, rx.geometry.audio_slot_bytes),
        )
        self.framing = framing_for(sock)(sock, max_message)
        self.outbox = Outbox(sock, self.framing)
        self.tx = tx
        self.rx = rx
        self.on_video = on_video
        self.on_audio = on_audio
        self.on_control = on_control
        self.on_closed = on_closed
        self.on_video_slot_free: Callable[[], None] | None = None  # the peer gave a video slot back
        self.stats = ChannelStats()
        # the peer's handler call durations (a worker's HandlerStats), replaced whole on each
        # report: a scrape on another thread reads one consistent value, never a half update
        self.handler_hist: HandlerHist = EMPTY_HANDLER_HIST
        self.closed = False
        self.close_reason = ""
        self.peer_close: Close | None = None  # the peer's Close, when it ended the link cleanly
        self._lock = threading.Lock()
        # Test-found: one control's fragments must go out back to back. Two threads sending
        # controls (the worker's handler loops, its reader's warnings) interleaved them, and a
        # small "C" between another message's "P"s was read as its last part: protocol error.
        # Reentrant: a failed send calls on_closed, which may itself send.
        self._control_lock = threading.RLock()
        self._free = {
            KIND_VIDEO: deque(range(tx.geometry.video_slots)),
            KIND_AUDIO: deque(range(tx.geometry.audio_slots)),
        }
        self._seq = 0
        self._pending_video: int | None = None  # newest received video slot, not yet taken
        self._held_video: int | None = None  # slot taken by the consumer, not yet released
        self._parts = ControlParts("control message")

    # --- producing -----------------------------------------------------------------------

    def send_video(
        self, frame: np.ndarray, pts: int = 0, time_base: tuple[int, int] = (1, C.VIDEO_CLOCK_RATE)
    ) -> bool:
        """Copy an (H, W, 3) uint8 RGB frame into a free slot (the RGB24 form) and ring.
        False if it was dropped."""
        return self._send_frame(KIND_VIDEO, frame, pts, time_base, 0, PIXFMT_RGB24)

    def send_i420(
        self,
        y: np.ndarray,
        u: np.ndarray,
        v: np.ndarray,
        pts: int = 0,
        time_base: tuple[int, int] = (1, C.VIDEO_CLOCK_RATE),
    ) -> bool:
        """Copy the three planes of an I420 frame (2-D uint8 arrays of any strides, such as
        views of a decoder's padded rows) into a free slot and ring. False if dropped."""
        height, width = y.shape
        slot = self.reserve_video(height, width)
        if slot is None:
            return False
        _, ys, us, vs = self.tx.i420(slot, height, width)
        try:
            np.copyto(ys, y, casting="no")
            np.copyto(us, u, casting="no")
            np.copyto(vs, v, casting="no")
        except Exception:
            self.cancel_video(slot)  # planes of the wrong size or type: the slot is free again
            raise
        return self.commit_video(slot, height, width, PIXFMT_I420, pts, time_base)

    def reserve_video(self, height: int, width: int, pixfmt: int = PIXFMT_I420) -> int | None:
        """A free video slot for a frame to be written in place (``tx.i420(slot, ...)`` for
        I420), then :meth:`commit_video` or :meth:`cancel_video`. None, counted, when the
        channel is closed, the frame is larger than a slot, or no slot is free."""
        return self._reserve(KIND_VIDEO, video_nbytes(pixfmt, height, width))

    def commit_video(
        self,
        slot: int,
        height: int,
        width: int,
        pixfmt: int = PIXFMT_I420,
        pts: int = 0,
        time_base: tuple[int, int] = (1, C.VIDEO_CLOCK_RATE),
    ) -> bool:
        """Ring for a frame written into a reserved slot. False if the link failed."""
        if pixfmt == PIXFMT_I420:
            ndim, shape = 2, (height, width, 0)
        else:
            ndim, shape = 3, (height, width, 3)
        nbytes = video_nbytes(pixfmt, height, width)
        return self._commit(KIND_VIDEO, slot, nbytes, pts, time_base, 0, DTYPE_CODES[np.dtype(np.uint8)], pixfmt, ndim, shape)

    def cancel_video(self, slot: int) -> None:
        """Give a reserved slot back unsent."""
        with self._lock:
            self._free[KIND_VIDEO].append(slot)

    def send_audio(
        self,
        samples: np.ndarray,
        sample_rate: int,
        layout: str = "mono",
        pts: int = 0,
        time_base: tuple[int, int] | None = None,
    ) -> bool:
        """Copy a (channels, N) audio array into a free slot and ring. False if dropped."""
        tb = time_base or (1, sample_rate)
        return self._send_frame(KIND_AUDIO, samples, pts, tb, sample_rate, LAYOUT_CODES.get(layout, 0))

    def _send_frame(
        self,
        kind: int,
        array: np.ndarray,
        pts: int,
        time_base: tuple[int, int],
        sample_rate: int,
        layout: int,
    ) -> bool:
        if self.closed:
            return False
        dtype_code = DTYPE_CODES.get(array.dtype)
        if dtype_code is None or array.ndim > 3:
            self.stats.oversize += 1
            return False
        slot = self._reserve(kind, array.nbytes)
        if slot is None:
            return False
        shape = array.shape
        dst = self.tx.view(kind, slot, shape, array.dtype)
        np.copyto(dst, array, casting="no")
        return self._commit(
            kind, slot, array.nbytes, pts, time_base, sample_rate, dtype_code, layout, array.ndim,
            (shape + (0, 0, 0))[:3],
        )

    def _reserve(self, kind: int, nbytes: int) -> int | None:
        if self.closed:
            return None
        if nbytes > self.tx.geometry.capacity(kind):
            self.stats.oversize += 1
            return None
        with self._lock:
            free = self._free[kind]
            if not free:
                if kind == KIND_VIDEO:
                    self.stats.video_dropped += 1
                else:
                    self.stats.audio_dropped += 1
                return None
            return free.popleft()

    def _commit(
        self,
        kind: int,
        slot: int,
        nbytes: int,
        pts: int,
        time_base: tuple[int, int],
        sample_rate: int,
        dtype_code: int,
        layout: int,
        ndim: int,
        shape: tuple[int, int, int],
    ) -> bool:
        """Write the slot's header and ring; the payload is in the slot already."""
        if self.closed or self.tx.buf is None:
            return False  # closed while the payload was written: nothing to give the slot back to
        with self._lock:
            # numbered when sent, not when reserved: a reserved slot may be cancelled
            self._seq += 1
            seq = self._seq
        SlotHeader(
            seq,
            pts,
            time_base[0],
            time_base[1],
            sample_rate,
            nbytes,
            kind,
            dtype_code,
            layout,
            ndim,
            shape,
        ).pack_into(self.tx.buf, self.tx.geometry.offset(kind, slot))
        payload = None
        if self.stream:
            # the TCP form carries the slot as written: an I420 frame's header and planes
            offset = self.tx.geometry.offset(kind, slot)
            payload = self.tx.buf[offset : offset + SLOT_HEADER_BYTES + nbytes]
        if not self._send_slot_message(MSG_FRAME, kind, slot, payload):
            with self._lock:
                self._free[kind].append(slot)
            return False
        if kind == KIND_VIDEO:
            self.stats.video_sent += 1
        else:
            self.stats.audio_sent += 1
        return True

    def send_control(self, msg: Control) -> None:
        """Send a control message; a large one goes in fragments. Never blocks."""
        fragments = control_fragments(msg.encode())
        with self._control_lock:
            for parts in fragments:
                self._send_raw(self.framing.message(*parts), must=True)

    def _send_slot_message(self, mtype: int, kind: int, slot: int, payload: memoryview | None = None) -> bool:
        # pack() rather than a shared buffer: the reader and handler threads both send.
        # A frame message waits in the backlog like a release. Test-found: frames were dropped,
        # uncounted, whenever a large control (an AdditionalOutputs) was still going out,
        # though the consumer kept up: a handler returning (frame, AdditionalOutputs(big))
        # lost every frame. The backlog stays bounded: each waiting "F" holds a slot.
        if self.stream:
            head = SLOT_MESSAGE.pack(mtype, kind, slot)
            return self._send_raw(self.framing.message(head) if payload is None else self.framing.message(head, payload), must=True)
        return self._send_raw(SLOT_MESSAGE.pack(mtype, kind, slot), must=True)

    def _send_raw(self, data: bytes | memoryview, must: bool) -> bool:
        """Send one message through the outbox. Every one sent today (frame, release, control)
        must arrive: it waits behind earlier ones when the socket is full. False once the link
        is closed or failed."""
        if self.closed:
            return False
        try:
            return self.outbox.send(data, must)
        except OSError as error:
            if not self.outbox.peer_left(error):
                self._closed(f"link error: {error}")
            return False

    @property
    def hung_up(self) -> bool:
        """Datagram form: the peer has closed its end; what it sent before is still read."""
        return self.framing.hung_up

    # --- consuming -------------------------------------------------------------------------

    def take_video(self) -> Frame | None:
        """The newest received frame as a view into its slot, or None. The slot stays the
        caller's until :meth:`release_video`; a frame taken before is released first."""
        with self._lock:
            slot = self._pending_video
            if slot is None:
                return None
            self._pending_video = None
            previous, self._held_video = self._held_video, slot
        if previous is not None:
            self._send_slot_message(MSG_RELEASE, KIND_VIDEO, previous)
        assert self.rx.buf is not None
        header = SlotHeader.unpack_from(self.rx.buf, self.rx.geometry.offset(KIND_VIDEO, slot))
        return header, self._view_of(KIND_VIDEO, slot, header)

    def i420_planes(self, header: SlotHeader) -> tuple[np.ndarray, ...]:
        """``(packed, y, u, v)`` views of the I420 frame :meth:`take_video` gave with ``header``
        (valid until :meth:`release_video`); cached per slot, so the per-frame path makes none."""
        slot = self._held_video
        if slot is None:
            raise WireError("no video frame is held")
        return self.rx.i420(slot, header.shape[0], header.shape[1])

    def release_video(self) -> None:
        with self._lock:
            slot, self._held_video = self._held_video, None
        if slot is not None:
            self._send_slot_message(MSG_RELEASE, KIND_VIDEO, slot)

    def has_video(self) -> bool:
        return self._pending_video is not None

    def _view_of(self, kind: int, slot: int, header: SlotHeader) -> np.ndarray:
        if kind == KIND_VIDEO and header.layout == PIXFMT_I420:
            # the 1-D payload; i420_planes() gives its planes
            height, width = header.shape[0], header.shape[1]
            nbytes = video_nbytes(PIXFMT_I420, height, width)
            if header.ndim != 2 or header.dtype != DTYPE_CODES[np.dtype(np.uint8)] or header.nbytes != nbytes:
                raise WireError(f"I420 slot header with ndim {header.ndim}, dtype {header.dtype}, {header.nbytes} bytes for {width}x{height}")
            if nbytes > self.rx.geometry.capacity(kind):
                raise WireError(f"I420 frame of {width}x{height} exceeds the slot")
            return self.rx.view(kind, slot, (nbytes,), np.dtype(np.uint8))
        if kind == KIND_VIDEO and header.layout != PIXFMT_RGB24:
            raise WireError(f"video slot header names pixel format {header.layout}")
        if header.dtype >= len(DTYPES) or header.ndim > 3:
            raise WireError(f"slot header names dtype {header.dtype}, ndim {header.ndim}")
        shape = header.shape[: header.ndim]
        dtype = DTYPES[header.dtype]
        if int(np.prod(shape)) * dtype.itemsize > self.rx.geometry.capacity(kind):
            raise WireError(f"slot header shape {shape} exceeds the slot")
        return self.rx.view(kind, slot, shape, dtype)

    def pump(self) -> None:
        """Read every message waiting on the link and act on it. Never blocks."""
        reason = self.framing.receive(self._dispatch, self._is_closed)
        if reason is not None:
            self._closed(reason)
        if self.outbox.waiting and not self.closed:
            self.flush()

    def _is_closed(self) -> bool:
        return self.closed

    def _dispatch(self, view: memoryview, n: int) -> None:
        """Act on one message of ``n`` bytes at the start of ``view``."""
        mtype = view[0]
        if mtype == MSG_FRAME or mtype == MSG_RELEASE:
            # Test-found: unpack_from read past a short datagram into the previous message's
            # bytes, so a truncated "F" replayed an old frame. Over TCP an "F" carries its slot.
            with_slot = self.stream and mtype == MSG_FRAME
            if with_slot and n < SLOT_MESSAGE.size + SLOT_HEADER_BYTES:
                raise WireError(f"frame message of {n} bytes, shorter than its slot header")
            if not with_slot and n != SLOT_MESSAGE.size:
                raise WireError(f"slot message of {n} bytes, not {SLOT_MESSAGE.size}")
            _, kind, slot = SLOT_MESSAGE.unpack_from(view, 0)
            if mtype == MSG_FRAME:
                self._on_frame(kind, slot, view[SLOT_MESSAGE.size : n] if with_slot else None)
            else:
                self._on_release(kind, slot)
        elif mtype == MSG_PART:
            self._parts.add(view[1:n])
        elif mtype == MSG_CONTROL:
            if self._parts:
                data = self._parts.join(view[:n])
            else:
                data = bytes(view[:n])
            msg = Control.decode(data)
            if isinstance(msg, Close):
                self.peer_close = msg
                self._closed(msg.reason or "peer closed the session")
                return
            if isinstance(msg, HandlerStats):
                # the channel's own stats, like ChannelStats: kept here, not an owner's business
                self.handler_hist = msg.hist()
                return
            if self.on_control is not None:
                self.on_control(msg)
        else:
            raise WireError(f"unknown link message type {mtype}")

    @property
    def has_backlog(self) -> bool:
        """Messages wait for the link to become writable: the owner should call :meth:`flush`
        when it is (the gateway with ``loop.add_writer``, the worker from its poll loop)."""
        return self.outbox.waiting

    def flush(self) -> None:
        if self.closed:
            return
        try:
            self.outbox.flush()
        except ConnectionError as exc:
            if not self.outbox.peer_left(exc):
                self._closed(str(exc))

    def _on_frame(self, kind: int, slot: int, payload: memoryview | None = None) -> None:
        if kind not in (KIND_VIDEO, KIND_AUDIO):
            raise WireError(f"unknown frame kind {kind}")
        if slot >= self.rx.geometry.count(kind):
            raise WireError(f"frame in slot {slot} of kind {kind}: no such slot")
        if kind == KIND_VIDEO:
            with self._lock:
                # the producer owns only slots given back to it: a frame in a slot this side
                # still holds would be overwritten under its reader
                if slot == self._pending_video or slot == self._held_video:
                    raise WireError(f"frame in video slot {slot}, which is not the producer's")
            if payload is not None:
                self._copy_in(kind, slot, payload)
            with self._lock:
                superseded, self._pending_video = self._pending_video, slot
            self.stats.video_received += 1
            if superseded is not None:
                self.stats.video_superseded += 1
                self._send_slot_message(MSG_RELEASE, KIND_VIDEO, superseded)
            if self.on_video is not None:
                self.on_video()
        else:
            if payload is not None:
                self._copy_in(kind, slot, payload)
            assert self.rx.buf is not None
            header = SlotHeader.unpack_from(self.rx.buf, self.rx.geometry.offset(KIND_AUDIO, slot))
            samples = self._view_of(KIND_AUDIO, slot, header).copy()
            self._send_slot_message(MSG_RELEASE, KIND_AUDIO, slot)
            self.stats.audio_received += 1
            if self.on_audio is not None:
                self.on_audio(header, samples)

    def _copy_in(self, kind: int, slot: int, payload: memoryview) -> None:
        """TCP form: a frame's slot bytes into this side's copy of the peer's segment."""
        if len(payload) > self.rx.geometry.capacity(kind) + SLOT_HEADER_BYTES:
            raise WireError(f"frame of {len(payload)} bytes exceeds its slot")
        assert self.rx.buf is not None
        offset = self.rx.geometry.offset(kind, slot)
        self.rx.buf[offset : offset + len(payload)] = payload

    def _on_release(self, kind: int, slot: int) -> None:
        if kind not in self._free or slot >= self.tx.geometry.count(kind):
            raise WireError(f"release of slot {slot} of kind {kind}: no such slot")
        with self._lock:
            if slot in self._free[kind]:
                raise WireError(f"slot {slot} of kind {kind} released twice")
            self._free[kind].append(slot)
        if kind == KIND_VIDEO and self.on_video_slot_free is not None:
            self.on_video_slot_free()

    def video_in_flight(self) -> int:
        """Video slots this side has sent and the peer has not given back yet."""
        return self.tx.geometry.video_slots - len(self._free[KIND_VIDEO])

    # --- ending ---------------------------------------------------------------------------

    def _closed(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        if self.on_closed is not None:
            self.on_closed(reason)

    def close(
        self, reason: str = "closed", *, notify: bool = True, retire: bool = False, last: Control | None = None, cause: str = ""
    ) -> None:
        """Tell the peer (best effort), close the link and both segments. Safe to call twice.
        ``last``: a small control (one fragment) that goes out just ahead of the Close, even
        when the peer closed first (the worker's final HandlerStats, sent in answer to the
        gateway's Close: send_control() refuses once the channel is closed)."""
        # the peer may have closed first: a Close still goes out, as the answer (it carries
        # ``retire``), unless the socket itself is gone
        if notify and self.sock.fileno() != -1:
            with self._control_lock:
                # Test-found: the Close went out ahead of the backlog and the socket closed on
                # the rest, so an end_stream queued behind a large AdditionalOutputs was lost
                # and the peer saw a crash. What was queued goes first, for a bounded time
                # (only blocking callers notify: the worker's serve thread, tools); a Close
                # after part of a fragmented message would corrupt it, so then none is sent.
                if self.outbox.drain(CLOSE_FLUSH_TIMEOUT_S):
                    messages = [Close(reason, retire, cause).encode()]
                    if last is not None:
                        data = last.encode()
                        if len(data) <= CONTROL_FRAGMENT_BYTES:
                            messages.insert(0, data)
                    try:
                        for out in self.framing.back_to_back(messages):
                            self.sock.send(out)
                    except OSError:
                        pass
        self.closed = True
        if not self.close_reason:
            self.close_reason = reason
        try:
            self.sock.close()
        except OSError:
            pass
        self.tx.close()
        self.rx.close()
