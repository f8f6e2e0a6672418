"""Both ends of a session's link in one process, for the link's tests: two FrameChannels on a
socket pair with real shared memory (or the TCP form on a stream pair), a raw peer that writes
any bytes, and the helpers that drive them.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tests.workers.link.blocking import socket_pair
from workers.link.channel import FrameChannel
from workers.link.shm import SEGMENT_PREFIX, Geometry, LocalSegment, Segment
from workers.link.wire import (
    DTYPE_CODES,
    MSG_FRAME,
    SLOT_HEADER_BYTES,
    SLOT_MESSAGE,
    Control,
    SlotHeader,
)

H, W = 24, 32
AUDIO_N = 960
SMALL = Geometry(
    video_slots=4,
    video_slot_bytes=SLOT_HEADER_BYTES + H * W * 3,
    audio_slots=8,
    audio_slot_bytes=SLOT_HEADER_BYTES + AUDIO_N * 2 * 4,  # stereo float32 fits
)
WAIT_S = 10.0  # generous: a waiting loop ends as soon as its condition holds


def own_segments() -> set[str]:
    """Segments this process created (other test runs on the machine are not counted)."""
    prefix = f"{SEGMENT_PREFIX}{os.getpid()}-"
    return {n for n in os.listdir("/dev/shm") if n.startswith(prefix)}


def all_segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(SEGMENT_PREFIX)}


@dataclass
class Side:
    """One end of a link plus everything its callbacks saw."""

    ch: FrameChannel = None  # type: ignore[assignment]
    video_wakes: int = 0
    audio: list[tuple[SlotHeader, np.ndarray]] = field(default_factory=list)
    controls: list[Control] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_video": self._on_video,
            "on_audio": lambda h, a: self.audio.append((h, a)),
            "on_control": self.controls.append,
            "on_closed": self.closed.append,
        }

    def _on_video(self) -> None:
        self.video_wakes += 1


@dataclass
class Link:
    gw: Side  # owns both segments, as the gateway does
    wk: Side  # attached, as a worker is

    def close(self) -> None:
        self.wk.ch.close(notify=False)
        self.gw.ch.close(notify=False)


def make_link(geometry: Geometry = SMALL, tcp: bool = False) -> Link:
    """Both ends of a session's link. ``tcp``: the TCP form (a byte stream, each side with
    private segments), on a Unix stream pair, which frames and splits data as TCP does."""
    gw, wk = Side(), Side()
    if tcp:
        sa, sb = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        gw.ch = FrameChannel(sa, tx=LocalSegment(geometry), rx=LocalSegment(geometry), **gw.callbacks())
        wk.ch = FrameChannel(sb, tx=LocalSegment(geometry), rx=LocalSegment(geometry), **wk.callbacks())
        return Link(gw, wk)
    sa, sb = socket_pair()
    up = Segment.create(geometry)
    down = Segment.create(geometry)
    gw.ch = FrameChannel(sa, tx=up, rx=down, **gw.callbacks())
    wk.ch = FrameChannel(sb, tx=Segment.attach(down.name), rx=Segment.attach(up.name), **wk.callbacks())
    return Link(gw, wk)


@dataclass
class RawPeer:
    """A channel whose peer is a bare socket: the test writes whatever bytes it likes."""

    side: Side
    sock: socket.socket
    tx: Segment  # what the raw peer "produces" into (the channel's rx)
    rx: Segment

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def put_frame(self, kind: int, slot: int, array: np.ndarray, **header: Any) -> None:
        """Write a frame into a slot of the channel's rx segment, as a producer would."""
        fields = {
            "seq": 1,
            "pts": 0,
            "time_base_num": 1,
            "time_base_den": 90_000,
            "sample_rate": 0,
            "nbytes": array.nbytes,
            "kind": kind,
            "dtype": DTYPE_CODES[array.dtype],
            "layout": 0,
            "ndim": array.ndim,
            "shape": (tuple(array.shape) + (0, 0, 0))[:3],
        }
        fields.update(header)
        assert self.tx.buf is not None
        SlotHeader(**fields).pack_into(self.tx.buf, self.tx.geometry.offset(kind, slot))
        self.tx.view(kind, slot, array.shape, array.dtype)[...] = array

    def frame(self, kind: int, slot: int) -> None:
        self.send(SLOT_MESSAGE.pack(MSG_FRAME, kind, slot))


def pump_until(pred: Callable[[], Any], *channels: FrameChannel, timeout: float = WAIT_S) -> Any:
    """Pump (and flush) the channels until ``pred`` holds; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        for ch in channels:
            if not ch.closed:
                ch.pump()
                if ch.has_backlog:
                    ch.flush()
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        socks = [ch.sock for ch in channels if not ch.closed]
        if socks:
            select.select(socks, [], [], 0.01)


def frame_for(i: int, shape: tuple[int, int, int] = (H, W, 3)) -> np.ndarray:
    """A frame whose every pixel depends on ``i`` and its position: a stale or torn frame shows."""
    h, w, c = shape
    grid = np.arange(h * w * c, dtype=np.uint32).reshape(h, w, c)
    return ((grid * 7 + i * 131) % 251).astype(np.uint8)
