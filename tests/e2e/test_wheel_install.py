"""rtcpool as a user installs it: build the sdist and the wheel from it, install the wheel
into a clean virtual environment (the locked versions, constraints.txt), and run an
example app from a folder that is not a checkout, against the Python client.

What this catches that the editable install of every other test cannot: a file the
package needs but does not ship (the embedded default config, the component's static
files), an import of the checkout's tests/ or scripts/, a dependency missing from
pyproject.toml, and a deprecation warning from our own packaging.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from runtime.clients.webrtc import Client
from tests.app_process import wait_serving
from tests.conftest import free_port
from tests.e2e.conftest import APP_START_TIMEOUT_S, face_picture, stop_process_tree

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).with_name("uv")  # scripts/setup.sh installs it into .venv
BUILD_TIMEOUT_S = 300.0  # uv build: an isolated setuptools, the sdist, the wheel from it
INSTALL_TIMEOUT_S = 600.0  # from uv's cache after set-up; from PyPI on a cold cache
COMMAND_TIMEOUT_S = 120.0  # `rtcpool config check`, an import of gradio_ext
FIRST_FRAME_S = 120.0  # Ray's first worker in the app's own local Ray, on 2 busy cores
SETTLE_S = 1.5  # frames keep coming: compare one from after the stream settled
# VP8 at the client's bitrate: a frame differs from its source by a few grey levels on
# average, and from the upside-down source by tens
SAME_PICTURE_MAX_MEAN_ABS = 12.0
DIFFERENT_PICTURE_MIN_MEAN_ABS = 30.0


def _run(cmd: list[str], timeout: float, **kw: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: nothing of the checkout or the test session."""
    drop = ("RTCPOOL_", "RAY_ADDRESS", "PYTHONPATH", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(GRADIO_ANALYTICS_ENABLED="False", RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ folder of a clean venv with the wheel of this checkout installed."""
    assert UV.exists(), f"{UV} missing: scripts/setup.sh installs uv into the venv"
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    built = _run([str(UV), "build", "--out-dir", str(dist), str(REPO)], BUILD_TIMEOUT_S)
    log = built.stdout + built.stderr
    assert "Deprecat" not in log and "BuildBackendWarning" not in log, log
    wheels = list(dist.glob("rtcpool-*.whl"))
    assert len(wheels) == 1 and list(dist.glob("rtcpool-*.tar.gz")), sorted(dist.iterdir())
    venv = root / "venv"
    _run([str(UV), "venv", "--quiet", "--python", sys.executable, str(venv)], COMMAND_TIMEOUT_S)
    _run(
        [str(UV), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
         "--constraints", str(REPO / "constraints.txt"), f"{wheels[0]}[examples]"],
        INSTALL_TIMEOUT_S,
    )
    return venv / "bin"


def test_the_wheel_ships_what_the_package_reads(installed: Path, tmp_path: Path):
    env = _clean_env()
    where = _run(
        [str(installed / "python"), "-c",
         "import runtime, gradio_ext; from gradio_ext import WebRTC; "
         "from runtime.config import DEFAULT_CONFIG; print(runtime.__file__); print(DEFAULT_CONFIG)"],
        COMMAND_TIMEOUT_S, cwd=tmp_path, env=env,
    ).stdout.split()
    site = installed.parent / "lib"
    assert all(Path(p).is_relative_to(site) for p in where), where  # not the checkout's files
    checked = _run([str(installed / "rtcpool"), "config", "check"], COMMAND_TIMEOUT_S, cwd=tmp_path, env=env)
    effective = json.loads(checked.stdout)
    assert effective["ray"]["address"] is None and effective["gateway"]["port"] == 7860


@pytest.fixture
def wheel_app(installed: Path, tmp_path: Path) -> Iterator[str]:
    """The filter example served by `python app.py` from a folder of its own, on the
    embedded default: the wheel's own local Ray, its workers re-importing the app file."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    shutil.copy(REPO / "examples" / "webcam_filters" / "app.py", app_dir / "app.py")
    port = free_port()
    env = _clean_env(
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),
        RTCPOOL_GATEWAY__ICE_HOST_ADDRESSES="[127.0.0.1]",
    )
    log = tmp_path / "app.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(installed / "python"), "app.py"], cwd=app_dir, env=env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(process, f"{url}/webrtc/ready", log, APP_START_TIMEOUT_S)
        yield url
    finally:
        stop_process_tree(process)
    # the app's own Ray (GCS, raylet, workers) went with it: they all inherited its environment
    assert not [p.pid for p in psutil.process_iter() if _environ(p).get("GRADIO_SERVER_PORT") == str(port)]


def _environ(process: psutil.Process) -> dict[str, str]:
    try:
        return process.environ()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return {}


@pytest.mark.asyncio(loop_scope="session")
async def test_an_example_app_runs_from_the_wheel_against_the_python_client(wheel_app: str):
    """The filter example's default is ``flip``: the frames that come back are the
    client's picture upside down."""
    client = Client(wheel_app, image=face_picture(), fps=15)
    await client.connect()
    try:
        await asyncio.wait_for(client.first_frame.wait(), FIRST_FRAME_S)
        await asyncio.sleep(SETTLE_S)
        back = client.frames[-1].astype(np.int16)
        sent = client.source.frame.astype(np.int16)
    finally:
        await client.close()
    flipped = np.abs(back - sent[::-1]).mean()
    upright = np.abs(back - sent).mean()
    assert flipped <= SAME_PICTURE_MAX_MEAN_ABS, f"not the flipped picture: mean |diff| {flipped:.1f}"
    assert upright >= DIFFERENT_PICTURE_MIN_MEAN_ABS, f"the picture came back unflipped: {upright:.1f}"
