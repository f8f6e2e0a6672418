"""Who may connect: gateway.auth on the signalling routes (bearer tokens, signed join tokens
from `rtcpool token`), the Origin allow-list, and a Gradio app launched with auth=, whose
login protects /webrtc/* as it protects Gradio's own routes. A refused request is a 401/403
with a JSON reason and changes nothing; an accepted one streams processed frames.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys

import httpx
import numpy as np
import pytest

from runtime.clients.webrtc import Client, OfferRejected
from runtime.guard.auth import mint_join_token
from tests.app_process import REPO, start_app
from tests.cluster.cluster import end_tree
from tests.conftest import async_wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")

START_S = 60.0
STREAM = "auth-invert"
BEARER = secrets.token_urlsafe(24)
SECRET = secrets.token_urlsafe(32)


def invert(frame: np.ndarray) -> np.ndarray:
    return 255 - frame


def _inverted(client: Client) -> bool:
    if not client.frames or client.source is None:
        return False
    return float(np.abs(client.frames[-1].astype(int) - (255 - client.source.frame.astype(int))).mean()) < 20


async def _refused(client: Client) -> tuple[int, str]:
    try:
        await client.connect()
    except OfferRejected as exc:
        return exc.status, exc.body["meta"]["error"]
    finally:
        await client.close()
    raise AssertionError("the offer was answered")


async def _streams(client: Client) -> None:
    await client.connect()
    try:
        assert await async_wait_until(lambda: _inverted(client), START_S), "no processed frames"
    finally:
        await client.hang_up()


@pytest.fixture(scope="module")
def bearer_app(make_gateway):
    os.environ["RTCPOOL_BEARER_TOKENS"] = f"{secrets.token_urlsafe(24)},{BEARER}"  # read when the gateway is made
    try:
        with make_gateway(lambda gw: gw.add_stream(invert, event_id=STREAM), auth={"mode": "bearer"}, allowed_origins=["https://app.example.org"]) as served:
            yield served
    finally:
        os.environ.pop("RTCPOOL_BEARER_TOKENS", None)


@pytest.fixture(scope="module")
def token_app(make_gateway):
    os.environ["RTCPOOL_JOIN_SECRET"] = SECRET
    try:
        with make_gateway(lambda gw: gw.add_stream(invert, event_id=STREAM), auth={"mode": "join_token"}) as served:
            yield served
    finally:
        os.environ.pop("RTCPOOL_JOIN_SECRET", None)


async def test_bearer_tokens_and_origins(bearer_app):
    url = bearer_app.url
    assert await _refused(Client(url)) == (401, "auth_required")
    assert await _refused(Client(url, token="x" * 30)) == (401, "bad_token")
    async with httpx.AsyncClient(timeout=10) as http:
        for route, method in (("streams", "GET"), ("sessions", "GET"), ("input", "POST"), ("close", "POST"), ("outputs", "POST")):
            r = await http.request(method, f"{url}/webrtc/{route}", json={"webrtc_id": "x"})
            assert r.status_code == 401 and r.json()["meta"]["error"] == "auth_required", (route, r.text)
        ok = {"Authorization": f"Bearer {BEARER}"}
        assert (await http.get(f"{url}/webrtc/streams", headers=ok)).status_code == 200
        # a page of a foreign origin is refused whatever token it has; a listed one is not
        r = await http.get(f"{url}/webrtc/streams", headers={**ok, "Origin": "https://evil.example.com"})
        assert r.status_code == 403 and r.json()["meta"]["error"] == "origin_not_allowed"
        assert (await http.get(f"{url}/webrtc/streams", headers={**ok, "Origin": "https://app.example.org"})).status_code == 200
        # probes stay open: a load balancer has no token
        assert (await http.get(f"{url}/webrtc/health")).status_code == 200
        assert (await http.get(f"{url}/webrtc/ready")).status_code == 200
    assert bearer_app.leases() == 0, "a refused offer took a slot"
    await _streams(Client(url, token=BEARER))


async def test_join_tokens_from_rtcpool_token(token_app):
    url = token_app.url
    env = {**os.environ, "RTCPOOL_JOIN_SECRET": SECRET, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "runtime.cli", "token", "--stream", STREAM, "--ttl", "60"]
    minted = await asyncio.to_thread(subprocess.run, cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    await _streams(Client(url, token=token))
    secret = SECRET.encode()
    assert await _refused(Client(url, token=mint_join_token(secret, stream_id="another-stream"))) == (403, "token_wrong_stream")
    assert await _refused(Client(url, token=mint_join_token(secret, ttl_s=1, now=1.0))) == (401, "token_expired")
    assert await _refused(Client(url, token=mint_join_token(b"not-the-secret-but-long-enough"))) == (401, "bad_token")
    assert await _refused(Client(url, token=token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))) == (401, "bad_token")
    assert token_app.leases() == 0


GRADIO_AUTH_APP = """
import os

import gradio as gr
import numpy as np

from gradio_ext import WebRTC


def invert(frame: np.ndarray) -> np.ndarray:
    return 255 - frame


with gr.Blocks() as demo:
    video = WebRTC(label="Stream", mode="send-receive", modality="video")
    video.stream(fn=invert, inputs=[video], outputs=[video])

demo.launch(server_name="127.0.0.1", server_port=int(os.environ["APP_PORT"]), auth=[("ada", "lovelace-1843")])
"""


async def test_a_gradio_apps_login_protects_the_signalling_routes(tmp_path, app_ray):
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    process, url, log = start_app(tmp_path, GRADIO_AUTH_APP, app_ray, serve=False)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("video", direction="recvonly")
        pc.createDataChannel("text")
        await pc.setLocalDescription(await pc.createOffer())
        body = {"type": "offer", "sdp": pc.localDescription.sdp, "webrtc_id": "gradio-login"}
        async with httpx.AsyncClient(timeout=60) as http:
            r = await http.post(f"{url}/webrtc/offer", json=body)
            assert r.status_code == 401 and r.json()["meta"]["error"] == "auth_required", r.text
            r = await http.post(f"{url}/login", data={"username": "ada", "password": "wrong"})
            r = await http.post(f"{url}/webrtc/offer", json=body)
            assert r.status_code == 401, "a failed login let the offer through"
            r = await http.post(f"{url}/login", data={"username": "ada", "password": "lovelace-1843"})
            assert r.status_code in (200, 302, 303), r.text
            r = await http.post(f"{url}/webrtc/offer", json=body)  # the login cookie is in the client now
            assert r.status_code == 200, r.text
            answer = r.json()
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
            r = await http.post(f"{url}/webrtc/close", json={"webrtc_id": "gradio-login", "session_key": answer["session_key"]})
            assert r.status_code == 200, r.text
    finally:
        await pc.close()
        process.send_signal(signal.SIGINT)
        await asyncio.to_thread(end_tree, process.pid, signal.SIGINT, 30)
        end_tree(process.pid, signal.SIGKILL, 10)
