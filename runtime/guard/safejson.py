"""JSON from the open internet: every parse of a client's bytes goes through :func:`loads`.

The stdlib parser is fast and correct but trusts its input's shape: a body nested 5,000
deep raises RecursionError (a 500 on a route, an exception in aiortc's data-channel
callback), ``1e999`` parses to inf and a 10,000-digit integer costs quadratic time (or
ValueError past Python's digit limit), ``NaN`` is accepted, and ``"\\ud800"`` gives a
string that cannot be encoded again (it fails later, in a log line or in msgpack on the
way to a worker). :func:`loads` turns each of these into a :class:`JSONRejected` with a
reason the routes answer 400 with and the data channel warns with.
"""

from __future__ import annotations

import json
from typing import Any

from runtime.errors import ErrorCode

MAX_JSON_DEPTH = 32  # nesting of arrays/objects a client may send; real messages use 3-4
MAX_NUMBER_CHARS = 64  # digits of one JSON number; a float64 needs at most 24
MAX_JSON_NODES = 200_000  # values in one document (a 1 MiB body of [0,0,...] has ~500 k)


class JSONRejected(ValueError):
    """A client's JSON that is refused: ``reason`` is the machine-readable kind."""

    def __init__(self, reason: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise JSONRejected(ErrorCode.BAD_JSON_NUMBER, f"a JSON number may have at most {MAX_NUMBER_CHARS} digits")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise JSONRejected(ErrorCode.BAD_JSON_NUMBER, f"a JSON number may have at most {MAX_NUMBER_CHARS} digits")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise JSONRejected(ErrorCode.BAD_JSON_NUMBER, f"the JSON number {text[:20]} is out of range")
    return value


def _parse_constant(text: str) -> Any:
    raise JSONRejected(ErrorCode.BAD_JSON_NUMBER, f"{text} is not JSON")


_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)


def loads(raw: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a client's JSON, or raise :class:`JSONRejected` (never another exception)."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONRejected(ErrorCode.BAD_UTF8, f"the body is not UTF-8 (byte {exc.start})") from None
    else:
        text = raw
    try:
        value = _DECODER.decode(text)
    except JSONRejected:
        raise
    except RecursionError:
        raise JSONRejected(ErrorCode.JSON_TOO_DEEP, f"JSON may be nested at most {max_depth} deep") from None
    except (ValueError, TypeError) as exc:
        raise JSONRejected(ErrorCode.BAD_JSON, f"not JSON: {exc}") from None
    _check_shape(value, max_depth)
    return value


def _check_shape(value: Any, max_depth: int) -> None:
    """Depth and encodability, iteratively (no recursion for a hostile document to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > MAX_JSON_NODES:
            raise JSONRejected(ErrorCode.JSON_TOO_LARGE, f"JSON may hold at most {MAX_JSON_NODES} values")
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, (list, dict)):
            if depth >= max_depth:
                raise JSONRejected(ErrorCode.JSON_TOO_DEEP, f"JSON may be nested at most {max_depth} deep")
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise JSONRejected(ErrorCode.BAD_UTF8, "a JSON string holds a lone surrogate (\\ud800-\\udfff)") from None
