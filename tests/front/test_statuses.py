"""The one table from a refusal's code to its HTTP status, headers and WebSocket close code
(runtime/front/statuses.py), and the Refused that crosses Ray as a value."""

import pickle

import pytest

from runtime.control import waiting_room as wr
from runtime.errors import ErrorCode, Refused
from runtime.front.statuses import (
    CLOSE_CODE,
    HTTP_STATUS,
    LineLeft,
    close_code,
    http_headers,
    http_status,
)


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_code_has_a_client_or_server_error_status(code):
    assert 400 <= HTTP_STATUS[code] <= 599


def test_the_table_names_only_codes():
    assert set(HTTP_STATUS) == set(ErrorCode)
    assert set(CLOSE_CODE) <= set(ErrorCode)


@pytest.mark.parametrize(
    ("err", "status", "close"),
    [
        (Refused(ErrorCode.BAD_SDP, "x"), 400, 4400),
        (Refused(ErrorCode.BAD_SESSION_KEY, "x"), 403, 4403),
        (Refused(ErrorCode.UNKNOWN_STREAM, "x"), 404, 4404),
        # the scheduler's refusal of a lease: the server cannot serve it, whatever the code
        (Refused(ErrorCode.UNKNOWN_STREAM, "x", unavailable=True), 503, 4503),
        (Refused(ErrorCode.EXPIRED, "x", unavailable=True), 503, 4503),
        (Refused(ErrorCode.CONCURRENCY_LIMIT_REACHED, "x", retry_after_s=5), 429, 4429),
        (Refused(ErrorCode.MEDIA_TIMEOUT, "x"), 504, 4504),
        (Refused(ErrorCode.START_TIMEOUT, "x"), 400, 1008),
        (Refused(ErrorCode.TOO_MANY_BAD_MESSAGES, "x"), 400, 1008),
        (Refused(ErrorCode.BINARY_MESSAGE, "x"), 400, 1003),
        (Refused(ErrorCode.MESSAGE_TOO_LARGE, "x"), 413, 1009),
        (Refused(ErrorCode.BAD_CALL_TOKEN, "x"), 403, 4403),
        # a WebSocket client's place in line that ends: 4410 whatever the reason
        (LineLeft(ErrorCode.EXPIRED, "x"), 410, 4410),
        (LineLeft(ErrorCode.QUEUE_TIMEOUT, "x"), 410, 4410),
    ],
)
def test_status_and_close_code(err, status, close):
    assert http_status(err) == status
    assert close_code(err) == close


def test_headers():
    assert http_headers(Refused(ErrorCode.BAD_SDP, "x")) == {}
    assert http_headers(Refused(ErrorCode.TOO_MANY_SESSIONS, "x", retry_after_s=7)) == {"Retry-After": "7"}
    assert http_headers(Refused(ErrorCode.AUTH_REQUIRED, "x", challenge='Bearer realm="r"')) == {"WWW-Authenticate": 'Bearer realm="r"'}


def test_body_merges_meta():
    err = Refused(ErrorCode.CONCURRENCY_LIMIT_REACHED, "full", meta={"limit": 2})
    assert err.body() == {"status": "failed", "meta": {"error": "concurrency_limit_reached", "message": "full", "limit": 2}}
    assert Refused(ErrorCode.BAD_SDP, "no").body() == {"status": "failed", "meta": {"error": "bad_sdp", "message": "no"}}


def test_a_refusal_pickles_by_its_fields():
    err = Refused(ErrorCode.DRAINING, "later", meta={"retry_after": 10}, retry_after_s=10, challenge="c", unavailable=True)
    back = pickle.loads(pickle.dumps(err))
    assert back == err and type(back) is Refused and back.code is ErrorCode.DRAINING
    assert (back.message, back.meta, back.retry_after_s, back.challenge, back.unavailable) == ("later", {"retry_after": 10}, 10, "c", True)
    assert str(back) == "later"


def test_every_waiting_room_reason_is_a_code():
    for reason in (wr.LEFT, wr.VANISHED, wr.QUEUE_TIMEOUT, wr.HOLD_EXPIRED, wr.STREAM_CHANGED, wr.CLAIMED, wr.UNKNOWN_TICKET.reason):
        assert ErrorCode(reason) == reason
