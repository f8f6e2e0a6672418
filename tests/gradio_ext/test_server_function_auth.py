"""The component's server function that hands out the ICE configuration (TURN credentials)
answers through Gradio's /gradio_api/component_server behind the signalling routes' own
check: Host (DNS rebinding), then gateway.auth. A real Gradio app on 127.0.0.1, real HTTP;
no Ray (the gateway is never started)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import gradio as gr
import httpx
import pytest

from gradio_ext import WebRTC, serving
from runtime.config_loader import load_config
from runtime.front.gateway import Gateway
from runtime.guard.auth import JOIN_SECRET_ENV
from tests.conftest import free_port

TURN = {"iceServers": [{"urls": "turn:turn.example.org", "username": "u", "credential": "secret-credential"}]}


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, WebRTC, list[int], Gateway]]:
    secret = secrets.token_urlsafe(32)
    monkeypatch.setenv(JOIN_SECRET_ENV, secret)
    gateway = Gateway(load_config(overrides={"gateway": {"auth": {"mode": "join_token"}}}))
    monkeypatch.setattr(serving, "_gateway", gateway)
    calls: list[int] = []

    def credentials() -> dict:
        calls.append(1)
        return TURN

    with gr.Blocks() as demo:
        w = WebRTC(rtc_configuration=credentials)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}", w, calls, gateway
    finally:
        demo.close()


def call(url: str, w: WebRTC, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"data": [], "component_id": w._id, "session_hash": "s1", "fn_name": "webrtc_configuration"}
    return httpx.post(f"{url}/gradio_api/component_server", json=body, headers=headers or {}, timeout=10)


def test_turn_credentials_need_the_routes_credentials(app):
    url, w, calls, gateway = app
    anonymous = call(url, w)
    assert anonymous.status_code == 401
    assert anonymous.json()["detail"]["meta"]["error"] == "auth_required"
    assert "secret-credential" not in anonymous.text
    bad = call(url, w, {"Authorization": "Bearer not.a-token"})
    assert bad.status_code == 401 and bad.json()["detail"]["meta"]["error"] == "bad_token"
    assert calls == []  # the credentials service was never asked
    token = gateway.auth.mint_join_token()
    ok = call(url, w, {"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200, ok.text
    assert ok.json() == TURN
    assert calls == [1]


def test_a_rebinding_page_gets_no_credentials(app):
    url, w, calls, gateway = app
    token = gateway.auth.mint_join_token()
    rebound = call(url, w, {"Host": "evil.example", "Origin": "http://evil.example", "Authorization": f"Bearer {token}"})
    assert rebound.status_code == 421
    assert rebound.json()["detail"]["meta"]["error"] == "host_not_allowed"
    assert calls == []
