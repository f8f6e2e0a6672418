"""An offer's checks before any lease is taken, and the answers that are not a session
(queued, refused, draining).

The request's values as the routes pass them on (a webrtc_id, a session key, an SDP offer,
the Gradio component's handle) are checked here, so a bad one costs no lease, no worker and
no peer connection; the refusals are :class:`runtime.errors.Refused`, which the front turns into its responses.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Any

from runtime import constants as C
from runtime.config import Config
from runtime.control.leases import LeaseDenied, LeaseQueued
from runtime.errors import ErrorCode, Refused
from runtime.guard.limits import check_candidate_address
from runtime.guard.sdp_check import check_offer_sdp
from runtime.media.stream_event import StreamEvent

WEBRTC_ID_RE = re.compile(rf"[A-Za-z0-9_.:-]{{1,{C.MAX_WEBRTC_ID_CHARS}}}")  # fullmatch: "$" takes a final newline


def check_id(webrtc_id: Any) -> str:
    if not isinstance(webrtc_id, str) or not WEBRTC_ID_RE.fullmatch(webrtc_id):
        raise Refused(ErrorCode.BAD_WEBRTC_ID, f"'webrtc_id' must be 1-{C.MAX_WEBRTC_ID_CHARS} characters of [A-Za-z0-9_.:-]")
    return webrtc_id


def check_key(config: Config, expected: str, key: Any) -> None:
    if not config.gateway.require_session_key:
        return
    if not isinstance(key, str) or not key:
        raise Refused(ErrorCode.SESSION_KEY_REQUIRED, "send the session's key (the answer's 'session_key') with every request about it")
    # constant time: a key compared byte by byte would leak its prefix to a patient prober
    if not hmac.compare_digest(expected.encode(), key.encode("utf-8", "replace")):
        raise Refused(ErrorCode.BAD_SESSION_KEY, "the session key does not match the session")


def key_digest(key: str) -> str:
    """What the scheduler keeps of a session key, to check a resume offer's against: the key
    itself stays with the engine and its client."""
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()


def strip_forbidden_candidates(sdp: str, allow_loopback: bool) -> str:
    """The offer without its ICE candidates to addresses the gateway must not probe (see
    check_candidate_address): candidates in the SDP are trickled ones by another name."""
    if "a=candidate:" not in sdp:
        return sdp
    kept = []
    for line in sdp.splitlines(keepends=True):
        if line.startswith("a=candidate:"):
            try:
                check_candidate_address(line[2:].strip(), allow_loopback=allow_loopback)
            except Refused:
                continue
        kept.append(line)
    return "".join(kept)


def queued_answer(webrtc_id: str, place: LeaseQueued) -> dict[str, Any]:
    """The 202 body of an offer that waits in its stream's line (runtime/control/waiting_room.py)."""
    return {
        "status": "queued",
        "webrtc_id": webrtc_id,
        "queue": {
            "ticket": place.ticket,
            "position": place.position,
            "size": place.size,
            "eta_s": place.eta_s,
            "updates": QUEUE_UPDATES_ROUTE,
        },
    }


QUEUE_UPDATES_ROUTE = "/webrtc/queue"  # where a queued client follows its place (server-sent events)


def denied_error(lease: LeaseDenied) -> Refused:
    """What the client is told of a lease the scheduler refused."""
    code = lease.error
    if code in (ErrorCode.CONCURRENCY_LIMIT_REACHED, ErrorCode.QUEUE_FULL, ErrorCode.TOO_MANY_QUEUED, ErrorCode.TOO_MANY_SESSIONS):
        retry = lease.retry_after or C.RETRY_AFTER_S
        meta = {"limit": lease.limit, "retry_after": retry}
        if lease.queue_size is not None:
            meta["queue_size"] = lease.queue_size
        first = (
            f"this stream serves at most {lease.limit} session(s) at once"
            if code == ErrorCode.CONCURRENCY_LIMIT_REACHED
            else lease.message
        )
        return Refused(code, f"{first}; retry in {retry} s", retry_after_s=retry, meta=meta)
    if code in (
        ErrorCode.QUEUE_TICKET_GONE,
        ErrorCode.DUPLICATE_WEBRTC_ID,
        # a resume's (docs/failover.md): the client's own mistake or a session gone for good
        ErrorCode.BAD_SESSION_KEY,
        ErrorCode.SESSION_KEY_REQUIRED,
        ErrorCode.NOT_RESUMABLE,
    ):
        return Refused(code, lease.message)
    # the scheduler could not serve it (unknown_stream, no_node_fits, no_worker, expired)
    return Refused(code, lease.message or "no worker available", unavailable=True)


def draining_error() -> Refused:
    # 503 + Retry-After: a load balancer (or the page's retry) sends the user elsewhere
    return Refused(
        ErrorCode.DRAINING,
        "this server is restarting and takes no new streams; try again",
        retry_after_s=C.DRAIN_RETRY_AFTER_S,
        meta={"retry_after": C.DRAIN_RETRY_AFTER_S},
    )


HANDLE_SEP = "/"  # in neither a webrtc_id ([A-Za-z0-9_.:-]) nor a key (base64url)


def split_handle(value: Any) -> tuple[str, str | None]:
    """A session's handle, as the Gradio component's value carries it: ``webrtc_id/key``
    (a bare id, from a client that has no key, gives key None)."""
    if not isinstance(value, str):
        return "", None
    webrtc_id, sep, key = value.partition(HANDLE_SEP)
    return webrtc_id, (key if sep else None)


def check_sdp(sdp: Any, event: StreamEvent, max_bytes: int, video_codecs: Sequence[str] = C.VIDEO_CODECS) -> str:
    """The offer parsed and checked (runtime/guard/sdp_check.py) before any lease or worker is
    taken, and with a section for each kind of media the stream carries."""
    summary = check_offer_sdp(sdp, max_bytes=max_bytes, video_codecs=video_codecs)
    wanted = {"video"} if event.has_video else set()
    wanted |= {"audio"} if event.has_audio else set()
    missing = sorted(wanted - set(summary.kinds))
    if missing:
        raise Refused(ErrorCode.OFFER_LACKS_MEDIA, f"stream {event.event_id!r} carries {event.modality}: the offer has no {' or '.join(missing)} section")
    assert isinstance(sdp, str)
    return sdp

