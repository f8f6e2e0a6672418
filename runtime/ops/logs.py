"""rtcpool's own log lines: where they go and in which format (``gateway.log_format``).

An app that configures logging itself (a handler on the root or the ``rtcpool`` logger)
keeps its set-up; otherwise rtcpool's INFO lines (one per session start and end, drains,
media processes) go to stderr, as text for a terminal or as one JSON object per line for a
log shipper. Fields passed with ``extra={"rtcpool": {...}}`` become JSON keys (the session
lines carry stream, duration, reason, frames and worker this way). No session key is ever
logged: the key is the session, the id is only its name.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGER = "rtcpool"
FIELDS_ATTR = "rtcpool"  # the ``extra`` key whose dict becomes JSON fields
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MAX_SHOWN_CHARS = 80  # of a client-supplied string in a log line; the rest is cut ("...")
# aiortc's receiver logs a warning for every frame its decoder refuses; a client sending
# garbage (checked by the frame guard only where it would cost memory) would write a line per
# frame. One line per this many seconds per process, with the count of those held back.
AIORTC_RECEIVER_LOGGER = "aiortc.rtcrtpreceiver"
DECODE_FAILURE_PREFIX = "RTCRtpReceiver(%s) failed to decode"  # aiortc 1.16.0's message
DECODE_WARNING_INTERVAL_S = 10.0


class JSONFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def shown(value: object, limit: int = MAX_SHOWN_CHARS) -> str:
    """A client-supplied value as a log line may carry it: repr-quoted (a newline or a
    control character is escaped, so it cannot forge a line) and cut to ``limit``
    characters before quoting (a megabyte of text costs no more than its first ``limit``)."""
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    text = repr(value)
    return text[:limit] + ("..." if len(text) > limit else "")


class DecodeFailureFilter(logging.Filter):
    """Lets one of aiortc's "failed to decode" warnings through per interval; the next one
    that passes says how many were held back. Other records pass untouched."""

    def __init__(self, interval_s: float = DECODE_WARNING_INTERVAL_S) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._next_at = 0.0
        self.held = 0  # held back since the last one let through

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith(DECODE_FAILURE_PREFIX)):
            return True
        now = time.monotonic()
        if now < self._next_at:
            self.held += 1
            return False
        self._next_at = now + self.interval_s
        if self.held:
            record.msg = f"{record.msg} ({self.held} more such warnings held back in the last {self.interval_s:.0f} s)"
            self.held = 0
        return True


def quiet_decode_failures() -> None:
    """Install :class:`DecodeFailureFilter` on aiortc's receiver logger, once per process."""
    logger = logging.getLogger(AIORTC_RECEIVER_LOGGER)
    if not any(isinstance(f, DecodeFailureFilter) for f in logger.filters):
        logger.addFilter(DecodeFailureFilter())


def configure(log_format: str) -> None:
    """Give rtcpool's logger a stderr handler in ``log_format`` ("text" or "json"), unless
    the app has set up logging itself, and rate-limit aiortc's per-frame decode warnings
    either way. Idempotent."""
    quiet_decode_failures()
    logger = logging.getLogger(LOGGER)
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
