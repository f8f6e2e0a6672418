"""The one refusal every plane raises, the codes it names, and how sessions end.

A plane (media, guard, control's answers, the front's own checks) raises :class:`Refused`
with an :class:`ErrorCode` and no HTTP status; the front alone turns a code into an HTTP
status and headers, or a WebSocket close code (runtime/front/statuses.py). A Refused
crosses Ray as a plain value (a media process returns it rather than raising it).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """The JSON ``meta.error`` of every refusal rtcpool answers with."""

    # the request itself
    BAD_REQUEST = "bad_request"
    BAD_JSON = "bad_json"
    BAD_JSON_NUMBER = "bad_json_number"
    BAD_UTF8 = "bad_utf8"
    JSON_TOO_DEEP = "json_too_deep"
    JSON_TOO_LARGE = "json_too_large"
    BODY_TOO_LARGE = "body_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    BAD_HOST = "bad_host"
    BAD_WEBRTC_ID = "bad_webrtc_id"
    SESSION_KEY_IN_URL = "session_key_in_url"
    TICKET_IN_URL = "ticket_in_url"
    STREAM_ID_REQUIRED = "stream_id_required"
    QUEUE_TICKET_REQUIRED = "queue_ticket_required"
    BAD_QUEUE_TICKET = "bad_queue_ticket"
    # the offer's SDP and candidates (runtime/guard/sdp_check.py, limits.py)
    BAD_SDP = "bad_sdp"
    SDP_TOO_LARGE = "sdp_too_large"
    SDP_LINE_TOO_LONG = "sdp_line_too_long"
    TOO_MANY_MEDIA_SECTIONS = "too_many_media_sections"
    TOO_MANY_TRACKS = "too_many_tracks"
    TOO_MANY_SSRCS = "too_many_ssrcs"
    TOO_MANY_CANDIDATES = "too_many_candidates"
    UNSUPPORTED_MEDIA = "unsupported_media"
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"
    UNSUPPORTED_CODEC = "unsupported_codec"
    RTCP_MUX_REQUIRED = "rtcp_mux_required"
    BAD_FINGERPRINT = "bad_fingerprint"
    BAD_DTLS_SETUP = "bad_dtls_setup"
    BAD_ICE_CREDENTIALS = "bad_ice_credentials"
    BAD_CANDIDATE = "bad_candidate"
    FORBIDDEN_CANDIDATE_ADDRESS = "forbidden_candidate_address"
    OFFER_LACKS_MEDIA = "offer_lacks_media"
    NOT_AN_AUDIO_STREAM = "not_an_audio_stream"
    # who may ask (runtime/guard/auth.py, the session key, Twilio)
    AUTH_REQUIRED = "auth_required"
    BAD_TOKEN = "bad_token"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_WRONG_STREAM = "token_wrong_stream"
    ORIGIN_NOT_ALLOWED = "origin_not_allowed"
    HEADER_TIMEOUT = "header_timeout"  # a request's headers too slow (gateway.http.header_timeout_s)
    HOST_NOT_ALLOWED = "host_not_allowed"  # a Host header naming another server (DNS rebinding)
    SESSION_KEY_REQUIRED = "session_key_required"
    BAD_SESSION_KEY = "bad_session_key"
    BAD_TWILIO_SIGNATURE = "bad_twilio_signature"
    BAD_CALL_TOKEN = "bad_call_token"
    UNSIGNED_WEBHOOK = "unsigned_webhook"  # auth is on and there is no Twilio token to check with
    # what it names
    NO_STREAMS = "no_streams"
    UNKNOWN_STREAM = "unknown_stream"
    UNKNOWN_WEBRTC_ID = "unknown_webrtc_id"
    NOT_RESUMABLE = "not_resumable"  # a resume offer for a session that ended, or after its grace
    UNKNOWN_QUEUE_TICKET = "unknown_queue_ticket"
    DUPLICATE_WEBRTC_ID = "duplicate_webrtc_id"
    SESSION_ELSEWHERE = "session_elsewhere"
    QUEUE_TICKET_GONE = "queue_ticket_gone"
    # limits: waiting helps (429)
    CONCURRENCY_LIMIT_REACHED = "concurrency_limit_reached"
    QUEUE_FULL = "queue_full"
    TOO_MANY_QUEUED = "too_many_queued"
    TOO_MANY_PENDING_OFFERS = "too_many_pending_offers"
    TOO_MANY_SESSIONS = "too_many_sessions"
    OFFER_RATE_LIMITED = "offer_rate_limited"
    INPUT_RATE_LIMITED = "input_rate_limited"
    SESSION_REQUEST_RATE_LIMITED = "session_request_rate_limited"  # close/input/candidates/outputs per address
    TOO_MANY_CONNECTIONS = "too_many_connections"  # TCP connections per address (gateway.http)
    TOO_MANY_READERS = "too_many_readers"
    TOO_MANY_QUEUE_STREAMS = "too_many_queue_streams"
    TOO_MANY_UNSTARTED_SOCKETS = "too_many_unstarted_sockets"
    WEBHOOK_RATE_LIMITED = "webhook_rate_limited"
    TOO_MANY_CALL_TOKENS = "too_many_call_tokens"
    # the server's state
    DRAINING = "draining"
    WORKER_UNAVAILABLE = "worker_unavailable"
    SCHEDULER_UNAVAILABLE = "scheduler_unavailable"
    NO_MEDIA_PROCESS = "no_media_process"
    NO_WORKER = "no_worker"
    NO_NODE_FITS = "no_node_fits"
    EXPIRED = "expired"  # a lease expired while waiting; a queue ticket's held slot expired
    MEDIA_TIMEOUT = "media_timeout"
    AUTH_MISCONFIGURED = "auth_misconfigured"
    # a WebSocket client's place in line ended (runtime/control/waiting_room.py's reasons)
    LEFT = "left"
    VANISHED = "vanished"
    QUEUE_TIMEOUT = "queue_timeout"
    STREAM_CHANGED = "stream_changed"
    CLAIMED = "claimed"
    UNKNOWN_TICKET = "unknown_ticket"
    QUEUE_LEFT = "queue_left"
    # a WebSocket client that breaks the protocol
    START_TIMEOUT = "start_timeout"
    BINARY_MESSAGE = "binary_message"
    MESSAGE_TOO_LARGE = "message_too_large"
    TOO_MANY_BAD_MESSAGES = "too_many_bad_messages"


class Refused(Exception):
    """A request refused: ``code`` and a ``message`` for the client, ``meta`` merged into
    the JSON reason. ``retry_after_s``: when trying again may help; ``challenge``: the
    WWW-Authenticate challenge of a refused credential; ``unavailable``: the server cannot
    serve it now whatever the code says (a lease the scheduler could not give).

    Treated as a value: nothing sets its fields after construction, and it pickles by its
    fields (an Exception with its own constructor does not unpickle by default)."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        meta: dict[str, Any] | None = None,
        retry_after_s: int | None = None,
        challenge: str | None = None,
        unavailable: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.meta: dict[str, Any] = dict(meta or {})
        self.retry_after_s = retry_after_s
        self.challenge = challenge
        self.unavailable = unavailable

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), self.code.value, self.message, self.meta, self.retry_after_s, self.challenge, self.unavailable))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Refused):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((self.code, self.message))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.value!r}, {self.message!r})"

    def _fields(self) -> tuple[Any, ...]:
        return (type(self), self.code, self.message, self.meta, self.retry_after_s, self.challenge, self.unavailable)

    @property
    def error(self) -> str:
        """The JSON reason (``meta.error``)."""
        return self.code.value

    def body(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"error": self.code.value, "message": self.message}
        meta.update(self.meta)
        return {"status": "failed", "meta": meta}


def _rebuild(cls: type[Refused], code: str, message: str, meta: dict[str, Any], retry_after_s: int | None, challenge: str | None, unavailable: bool) -> Refused:
    return cls(ErrorCode(code), message, meta=meta, retry_after_s=retry_after_s, challenge=challenge, unavailable=unavailable)


class EndReason(StrEnum):
    """Why a session ended: the ``sessions_ended_total`` label (runtime/ops/metrics.py).
    A session closes with one, plus the text its log and its client are told."""

    CLIENT_CLOSED = "client_closed"
    ICE_FAILED = "ice_failed"
    CLIENT_GONE = "client_gone"
    CONNECT_TIMEOUT = "connect_timeout"
    TIME_LIMIT = "time_limit"
    HANDLER_ENDED = "handler_ended"
    WORKER_DIED = "worker_died"  # and no worker could take over
    CRASH_LOOP = "crash_loop"  # its workers died more than pool.max_restarts times in the window
    WORKER_UNAVAILABLE = "worker_unavailable"
    OFFER_FAILED = "offer_failed"
    DISPLACED = "displaced"
    LEASE_RECLAIMED = "lease_reclaimed"
    DRAINING = "draining"
    SHUTDOWN = "shutdown"
    OVER_BUDGET = "over_budget"  # media sent faster than real time, sustained (runtime/media/budget.py)
    OTHER = "other"


__all__ = ["EndReason", "ErrorCode", "Refused"]
