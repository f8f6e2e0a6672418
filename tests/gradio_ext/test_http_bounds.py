"""gradio_ext/http_bounds.py: Gradio's own uvicorn server (the one ``launch()`` builds) gets
gateway.http's bounds when the app has rtcpool streams: a connection that trickles its
headers is closed after the header timeout. A real ``gradio.http_server.Server`` on
127.0.0.1; the gateway is never started (no Ray)."""

from __future__ import annotations

import socket
import time

import gradio.http_server
import numpy as np
import pytest
import uvicorn

from gradio_ext import serving
from runtime.config_loader import load_config
from runtime.front.gateway import Gateway
from tests.conftest import free_port

HEADER_TIMEOUT_S = 0.5


def invert(frame: np.ndarray) -> np.ndarray:
    return 255 - frame


async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def gradio_server(port: int) -> gradio.http_server.Server:
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    return gradio.http_server.Server(config=config)  # as gradio.http_server.start_server makes it


def test_launchs_server_closes_a_trickling_connection(monkeypatch: pytest.MonkeyPatch):
    gateway = Gateway(load_config(overrides={"gateway": {"http": {"header_timeout_s": HEADER_TIMEOUT_S, "max_websocket_message_bytes": 65536}}}))
    gateway.add_stream(invert)
    monkeypatch.setattr(serving, "_gateway", gateway)
    port = free_port()
    server = gradio_server(port)
    assert server.config.ws_max_size == 65536  # not uvicorn's 16 MiB
    server.run_in_thread()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10 * HEADER_TIMEOUT_S) as sock:
            start = time.monotonic()
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            answer = b""
            for n in range(40):  # one header line every 0.1 s: never the blank line
                time.sleep(0.1)
                try:
                    sock.sendall(f"X-Slow-{n}: 1\r\n".encode())
                except OSError:
                    break
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
            assert time.monotonic() - start < 10 * HEADER_TIMEOUT_S
    finally:
        server.should_exit = True
        server.thread.join(10)


def test_an_app_without_streams_keeps_gradios_server_as_it_is(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(serving, "_gateway", None)
    server = gradio_server(free_port())
    assert server.config.http == "auto" and server.config.ws_max_size == 16 * 1024 * 1024
