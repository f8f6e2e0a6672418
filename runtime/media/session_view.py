"""What a media process says of its live sessions (``GET /webrtc/sessions``, operators only):
a frozen value across Ray, JSON only at the HTTP edge."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SessionView:
    """One live session. No webrtc_id: it is the key to a session's inputs and outputs."""

    event_id: str
    worker_pid: int | None
    worker_node_id: str | None
    transport: str  # "shm" or "tcp" once the worker is connected, "" before
    media_pid: int
    video_codec: str = ""  # "h264" or "vp8" as the answer negotiated; "" for no video (audio, a WebSocket)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
