"""TURN credentials for rtc_configuration: Twilio's REST API and the HF service, against a
local stand-in server, and the fallback to the configured ICE servers."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from runtime.guard import turn


class StandIn:
    """A local HTTP server answering every request with ``answer`` (status, JSON body)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answer: tuple[int, Any] = (200, {})
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                outer.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
                status, body = outer.answer
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _reply

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    s = StandIn()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def no_credentials_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (turn.TWILIO_SID_ENV, turn.TWILIO_TOKEN_ENV, turn.HF_TOKEN_ENV):
        monkeypatch.delenv(name, raising=False)


def test_twilio_credentials_come_from_its_token_api(stand_in: StandIn, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(turn, "TWILIO_API_BASE", stand_in.url)
    stand_in.answer = (201, {"ice_servers": [
        {"url": "stun:global.stun.twilio.com:3478", "urls": "stun:global.stun.twilio.com:3478"},
        {"url": "turn:global.turn.twilio.com:3478?transport=udp", "username": "u1", "credential": "c1"},
    ]})
    monkeypatch.setenv(turn.TWILIO_SID_ENV, "AC123")
    monkeypatch.setenv(turn.TWILIO_TOKEN_ENV, "secret")
    cfg = turn.get_twilio_turn_credentials()
    assert cfg == {
        "iceServers": [
            {"urls": "stun:global.stun.twilio.com:3478"},
            {"urls": "turn:global.turn.twilio.com:3478?transport=udp", "username": "u1", "credential": "c1"},
        ],
        "iceTransportPolicy": "relay",
    }
    (req,) = stand_in.requests
    assert req["method"] == "POST" and req["path"] == "/Accounts/AC123/Tokens.json"
    assert req["headers"]["Authorization"] == "Basic " + base64.b64encode(b"AC123:secret").decode()
    # the arguments beat the environment
    turn.get_turn_credentials("twilio", twilio_sid="AC9", twilio_token="t9")
    assert stand_in.requests[-1]["path"] == "/Accounts/AC9/Tokens.json"


def test_a_twilio_refusal_is_an_error_naming_the_service(stand_in: StandIn, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(turn, "TWILIO_API_BASE", stand_in.url)
    stand_in.answer = (401, {"message": "Authenticate"})
    with pytest.raises(turn.TurnCredentialsError, match="Twilio"):
        turn.get_twilio_turn_credentials("AC1", "wrong")


def test_hf_credentials_carry_the_token(stand_in: StandIn, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(turn, "HF_TURN_CREDENTIALS_URL", stand_in.url + "/credentials")
    stand_in.answer = (200, {"username": "hfu", "credential": "hfc"})
    cfg = turn.get_turn_credentials("hf", token="hf_abc")
    assert cfg == {"iceServers": [{"urls": turn.HF_TURN_URLS, "username": "hfu", "credential": "hfc"}]}
    assert stand_in.requests[0]["headers"]["X-HF-Access-Token"] == "hf_abc"


def test_without_credentials_the_configured_ice_servers_are_used(monkeypatch: pytest.MonkeyPatch, caplog):
    monkeypatch.setenv("RTCPOOL_GATEWAY__ICE_SERVERS", '[{urls: "turn:relay.example.org:3478", username: a, credential: b}]')
    expected = {"iceServers": [{"urls": ["turn:relay.example.org:3478"], "username": "a", "credential": "b"}]}
    with caplog.at_level("WARNING", logger="rtcpool.turn"):
        assert turn.get_twilio_turn_credentials() == expected
        assert turn.get_hf_turn_credentials() == expected
    assert "TWILIO_ACCOUNT_SID" in caplog.text and "HF_TOKEN" in caplog.text
    with pytest.raises(ValueError, match="method"):
        turn.get_turn_credentials("carrier-pigeon")  # type: ignore[arg-type]
