"""The face-detection demo app, launched as a user would, reached by the Python client.

The client's camera is a still of a real face (scikit-image's astronaut): the frames that
come back must carry the demo's green box on the face, and the raw frames must not.
"""

from __future__ import annotations

import asyncio
import os
import runpy
from pathlib import Path

import numpy as np
import pytest

from runtime.client import Client
from tests.conftest import free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

APP = Path(__file__).resolve().parents[2] / "examples" / "face_detection" / "app.py"
FACE = (slice(20, 190), slice(200, 370))  # the astronaut's face and its label, at 640x480
STRICT = 1.0  # the demo's confidence never reaches 1: every box goes


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
    client = Client(url, image=astronaut(), fps=15)
    await client.connect()
    await asyncio.wait_for(client.first_frame.wait(), 120)
    await asyncio.sleep(2.0)
    at_default = client.frames[-1]
    sent = client.source.frame
    pid = gateway.sessions[client.webrtc_id].worker_pid
    # the slider at its top, as the page would send it: no detection passes
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{url}/webrtc/input", json=client.ids(args=[STRICT]))
        assert r.status_code == 200
    await asyncio.sleep(2.0)
    strict = client.frames[-1]
    await client.close()
    assert green(sent).sum() < 20, "the raw frame already had green (test picture changed?)"
    assert green(at_default)[FACE].sum() > 300, "no detection box on the face"
    assert green(strict).sum() < 50, "the threshold did not reach the worker: boxes are still drawn"
    status = __import__("ray").get(gateway.scheduler.status.remote(), timeout=10)
    workers = {w["pid"] for e in status["events"].values() for w in e["workers"]}
    assert pid in workers and pid != os.getpid()
