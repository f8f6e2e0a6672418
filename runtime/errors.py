"""The one error a route answers with, and its form for crossing a process boundary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class HTTPError(Exception):
    """A request refused: ``status`` and a JSON reason (``error``, ``message``, ``meta``)."""

    def __init__(self, status: int, error: str, message: str, headers: dict[str, str] | None = None, meta: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers or {}
        self.meta = meta

    def body(self) -> dict[str, Any]:
        meta = {"error": self.error, "message": self.message}
        if self.meta:
            meta.update(self.meta)
        return {"status": "failed", "meta": meta}

    def refusal(self) -> Refusal:
        return Refusal(self.status, self.error, self.message, dict(self.headers), dict(self.meta or {}))


@dataclass(frozen=True)
class Refusal:
    """An HTTPError as a plain value: what a media process returns over Ray (an exception
    with its own constructor does not survive pickling, and Ray would wrap it anyway)."""

    status: int
    error: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def error_(self) -> HTTPError:
        return HTTPError(self.status, self.error, self.message, self.headers, self.meta or None)
