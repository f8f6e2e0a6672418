"""The gateway's own page (runtime/front/standalone.py) without a browser or Ray: what it serves.

The page in Chromium, streaming, is tests/e2e/test_component_ui.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from runtime.config_loader import load_config
from runtime.front import standalone
from runtime.front.gateway import Gateway

STUN = "stun:stun.example.org:3478"


def invert(frame: Any) -> Any:
    return 255 - frame


def tone() -> Any:
    yield None


@pytest.fixture
def client() -> TestClient:
    config = load_config(overrides={"gateway": {"ice_servers": [{"urls": STUN}]}})
    gateway = Gateway(config)  # never started: serving the page needs no Ray
    gateway.add_stream(invert, time_limit=30, concurrency_limit=2)
    gateway.add_stream(tone, mode="receive", modality="audio", event_id="radio </script>")
    app = FastAPI()
    gateway.mount(app)
    # an address the Host allow-list knows (TestClient's default Host, "testserver", is not)
    return TestClient(app, base_url="http://127.0.0.1:7860")


def page_props(html: str) -> dict[str, Any]:
    """The props object the page passes to the client script."""
    match = re.search(
        r"document\.getElementById\(\"rtc-host\"\), function \(\) \{\}, (\{.*\}), \{\}\);", html
    )
    assert match, "the page does not call the client with its props"
    return json.loads(match.group(1))


def test_index_lists_every_stream_with_a_link(client: TestClient) -> None:
    resp = client.get("/webrtc/ui")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    assert 'href="ui?stream=stream-0"' in resp.text
    assert 'href="ui?stream=radio%20%3C%2Fscript%3E"' in resp.text
    assert "send-receive · video · 2 session(s) at once · 30 s per session" in resp.text
    assert "radio &lt;/script&gt;" in resp.text  # ids are text, not markup


def test_stream_page_runs_the_component_client_with_the_events_config(client: TestClient) -> None:
    html = client.get("/webrtc/ui", params={"stream": "stream-0"}).text
    markup, css, script = standalone.client_files()
    assert markup in html and css in html and script in html  # the very same client
    props = page_props(html)
    assert props["value"] is None
    # the configured ICE servers, as the RTCPeerConnection configuration (urls: a string or a list)
    (server,) = props["rtc"].pop("rtc_configuration").pop("iceServers")
    assert set(server) == {"urls"}
    assert STUN in ([server["urls"]] if isinstance(server["urls"], str) else server["urls"])
    assert props["rtc"] == {
        "stream_id": "stream-0",
        "mode": "send-receive",
        "modality": "video",
        "time_limit": 30,
        "mirror_webcam": True,
        "show_download_button": True,
        "offer_url": "offer",
    }


def test_stream_ids_cannot_break_out_of_the_page(client: TestClient) -> None:
    html = client.get("/webrtc/ui", params={"stream": "radio </script>"}).text
    # the only </script> is the one closing the client's element
    assert html.lower().count("</script") == 1
    props = page_props(html)
    assert props["rtc"]["stream_id"] == "radio </script>"
    assert props["rtc"]["show_download_button"] is False  # no video to save


@pytest.mark.parametrize("stream", ["nope", "", "STREAM-0"])
def test_unknown_stream_is_a_404_with_a_json_reason(client: TestClient, stream: str) -> None:
    resp = client.get("/webrtc/ui", params={"stream": stream})
    assert resp.status_code == 404
    assert resp.json() == {
        "status": "failed",
        "meta": {
            "error": "unknown_stream",
            "message": f"no stream {stream!r} (GET /webrtc/streams)",
        },
    }


@pytest.mark.slow  # over 2 s: out of the quick subset
def test_serving_the_page_does_not_import_gradio() -> None:
    # a FastAPI-only app gets the page without Gradio: a fresh interpreter serves it and
    # has not imported gradio (nor gradio_ext, which imports it)
    probe = textwrap.dedent(
        """
        import sys
        from fastapi import FastAPI
        from fastapi.testclient import TestClient
        from runtime.front.gateway import Gateway
        gw = Gateway()
        gw.add_stream(lambda frame: frame)
        app = FastAPI()
        gw.mount(app)
        assert TestClient(app, base_url="http://localhost").get("/webrtc/ui?stream=stream-0").status_code == 200
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("gradio", "gradio_ext")))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_the_page_is_behind_the_routes_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    # it holds the ICE servers (TURN credentials) and the stream list: before, anyone got it
    monkeypatch.setenv("RTCPOOL_JOIN_SECRET", "s" * 32)
    config = load_config(overrides={"gateway": {"ice_servers": [{"urls": STUN}], "auth": {"mode": "join_token"}}})
    gateway = Gateway(config)
    gateway.add_stream(invert)
    app = FastAPI()
    gateway.mount(app)
    http = TestClient(app, base_url="http://127.0.0.1:7860")
    for url in ("/webrtc/ui", "/webrtc/ui?stream=stream-0"):
        anonymous = http.get(url)
        assert anonymous.status_code == 401 and anonymous.json()["meta"]["error"] == "auth_required"
        assert STUN not in anonymous.text
        assert http.get(url, params={"token": gateway.auth.mint_join_token()}).status_code == 401  # never in the URL
        ok = http.get(url, headers={"Authorization": f"Bearer {gateway.auth.mint_join_token()}"})
        assert ok.status_code == 200
    assert http.get("/webrtc/ui", headers={"Host": "evil.example"}).status_code == 421
