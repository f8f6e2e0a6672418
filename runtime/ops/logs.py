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


def configure(log_format: str) -> None:
    """Give rtcpool's logger a stderr handler in ``log_format`` ("text" or "json"), unless
    the app has set up logging itself. Idempotent."""
    logger = logging.getLogger(LOGGER)
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
