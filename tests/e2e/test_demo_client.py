"""The face-detection demo app, launched as a user would, reached by the Python client.

The client's camera is a still of a real face (scikit-image's astronaut): the frames that
come back must carry the demo's green box on the face, every one of them (the detector runs
on each frame it is given), and the raw frames must not. A threshold of 1.0 takes the box
away; a picture with no face (scikit-image's coffee cups) never gets one.
"""

from __future__ import annotations

import asyncio
import os
import runpy
from pathlib import Path

import numpy as np
import pytest

from runtime.clients.webrtc import Client
from tests.conftest import free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

APP = Path(__file__).resolve().parents[2] / "examples" / "face_detection" / "app.py"
FACE = (slice(20, 190), slice(200, 370))  # the astronaut's face and its label, at 640x480
STRICT = 1.0  # the demo's confidence never reaches 1: every box goes
STREAM_FPS = 15
KEPT_FRAMES = 15  # the last second of processed frames, each checked for the box
SETTLE_S = 2.0  # after the first frame, and after an input: the stream has caught up
MIN_BOX_PIXELS = 300  # green pixels of the box and label on the face, after VP8 both ways
MAX_STRAY_PIXELS = 50  # green pixels VP8 may invent where nothing was drawn


def green(frame: np.ndarray) -> np.ndarray:
    f = frame.astype(int)
    return (f[..., 1] > 180) & (f[..., 0] < 90) & (f[..., 2] < 90)


@pytest.fixture(scope="module")
def demo_url(ray_session, monkeypatch_module):
    import ray

    from gradio_ext import serving

    monkeypatch_module.setenv("RTCPOOL_GATEWAY__ICE_HOST_ADDRESSES", "[127.0.0.1]")
    monkeypatch_module.setattr(serving, "_gateway", None)
    app = runpy.run_path(str(APP), run_name="face_demo")
    demo = app["demo"]
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    gateway = serving.get_gateway()
    gateway.wait_warm()
    yield f"http://127.0.0.1:{port}", gateway
    demo.close()
    for eid in gateway.events:
        ray.get(gateway.scheduler.unregister.remote(eid), timeout=30)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


async def test_demo_draws_the_box_on_the_face_and_follows_the_threshold(demo_url):
    import httpx
    from skimage.data import astronaut

    url, gateway = demo_url
    client = Client(url, image=astronaut(), fps=STREAM_FPS, keep_frames=KEPT_FRAMES)
    await client.connect()
    await asyncio.wait_for(client.first_frame.wait(), 120)
    await asyncio.sleep(SETTLE_S)
    at_default = list(client.frames)
    sent = client.source.frame
    pid = gateway.sessions[client.webrtc_id].worker_pid
    # the slider at its top, as the page would send it: no detection passes
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{url}/webrtc/input", json=client.ids(args=[STRICT]))
        assert r.status_code == 200
    await asyncio.sleep(SETTLE_S)
    strict = client.frames[-1]
    await client.close()
    assert green(sent).sum() < 20, "the raw frame already had green (test picture changed?)"
    assert len(at_default) == KEPT_FRAMES
    boxed = [int(green(f)[FACE].sum()) for f in at_default]
    assert min(boxed) > MIN_BOX_PIXELS, f"frames without the box on the face: {boxed}"
    stray = [int(green(f).sum() - green(f)[FACE].sum()) for f in at_default]
    assert max(stray) < MAX_STRAY_PIXELS, f"green away from the face: {stray}"
    assert green(strict).sum() < MAX_STRAY_PIXELS, "the threshold did not reach the worker: boxes are still drawn"
    status = __import__("ray").get(gateway.scheduler.status.remote(), timeout=10).to_json()
    workers = {w["pid"] for e in status["events"].values() for w in e["workers"]}
    assert pid in workers and pid != os.getpid()


async def test_demo_draws_no_box_on_a_picture_without_a_face(demo_url):
    from skimage.data import coffee

    url, _ = demo_url
    client = Client(url, image=coffee(), fps=STREAM_FPS, keep_frames=KEPT_FRAMES)
    await client.connect()
    await asyncio.wait_for(client.first_frame.wait(), 120)
    await asyncio.sleep(SETTLE_S)
    frames = list(client.frames)
    await client.close()
    assert len(frames) == KEPT_FRAMES
    # the frames did go through the handler and back: the coffee picture, not black
    assert all(abs(f.astype(int).mean() - client.source.base.mean()) < 10 for f in frames)
    assert max(int(green(f).sum()) for f in frames) < MAX_STRAY_PIXELS, "a box on a picture with no face"
