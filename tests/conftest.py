"""Session-wide fixtures: one local Ray for the whole run, and gateways served on loopback.

Ray starts once per test session (~5 s); every gateway in the run shares it and its
scheduler. Each test app registers stream ids of its own, so pools never mix.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
SERVER_START_TIMEOUT_S = 30.0
RAY_START_TRIES = 3  # ray.init on a busy box: see ray_session


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shm_segments(pid: int | None = None) -> set[str]:
    """rtcpool segments in /dev/shm created by process ``pid`` (default: this one; segment
    names carry their creator's pid, so other processes' runs do not disturb a count)."""
    prefix = f"rtcpool-{os.getpid() if pid is None else pid}-"
    return {n for n in os.listdir("/dev/shm") if n.startswith(prefix)}


def open_fds() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/fd"))


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        time.sleep(interval)


async def async_wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    import ray

    from runtime import constants as C

    for attempt in range(RAY_START_TRIES):
        if ray.is_initialized():
            break
        before = {c.pid for c in psutil.Process().children(recursive=True)}
        try:
            # address="local": a Ray of this session's own, never one a `ray start` on the
            # machine (the cluster tests start some) or RAY_ADDRESS names
            ray.init(address="local", namespace=C.RAY_NAMESPACE, include_dashboard=False, log_to_driver=True)
        except Exception as exc:
            # Ray gives its raylet a fixed 30 s to register (ray/_private/node.py, 2.x); on
            # a 2-core box shared by several runs it sometimes needs longer (seen at load 20:
            # every test of the session errored). Start again rather than fail the session.
            if "timed out during startup" not in str(exc) or attempt == RAY_START_TRIES - 1:
                raise
            ray.shutdown()
            for child in psutil.Process().children(recursive=True):  # the failed start's GCS, raylet, ...
                if child.pid not in before:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        child.kill()
    yield ray
    ray.shutdown()


def joining_ray(ray_address: str, prefix: str = "app") -> dict[str, str]:
    """The environment that has an app process join the Ray at ``ray_address`` (as a
    deployment's ``ray.address`` does) in a namespace of its own, so its scheduler and
    workers are its alone and die with it (its scheduler is not detached)."""
    return {"RTCPOOL_RAY__ADDRESS": ray_address, "RTCPOOL_RAY__NAMESPACE": f"{prefix}-{uuid.uuid4().hex[:8]}"}


@pytest.fixture(scope="session")
def app_ray(ray_session: Any) -> str:
    """The address of this test session's Ray, for app processes to join: a Ray of each
    app's own costs ~8 s to start and ~2 s to stop, per app."""
    return ray_session.get_runtime_context().gcs_address


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@dataclass
class Served:
    """A gateway serving a FastAPI app on loopback, in a thread of this process."""

    gateway: Any
    url: str
    server: Any
    thread: threading.Thread
    app: Any

    def run(self, coro: Any, timeout: float = 60.0) -> Any:
        """Run a coroutine on the server's event loop (gateway state lives there)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.server.rtcpool_loop

    def status(self) -> dict[str, Any]:
        import ray

        return ray.get(self.gateway.scheduler.status.remote(), timeout=10).to_json()

    def leases(self) -> int:
        return sum(e["leases"] for eid, e in self.status()["events"].items() if eid in self.gateway.events)


def _loopback_config(**gateway: Any) -> Any:
    from runtime.config_loader import load_config

    return load_config(overrides={"gateway": {"ice_host_addresses": ["127.0.0.1"], **gateway}})


@contextlib.contextmanager
def serve_gateway(gateway: Any, warm: bool = True) -> Iterator[Served]:
    """Start ``gateway`` (Ray must be up), serve it with uvicorn+uvloop on a free port."""
    import uvicorn
    from fastapi import FastAPI

    gateway.start()
    if warm:
        gateway.wait_warm()
    app = FastAPI()
    gateway.mount(app)
    port = free_port()

    class Server(uvicorn.Server):
        rtcpool_loop: asyncio.AbstractEventLoop

        async def startup(self, sockets: Any = None) -> None:
            self.rtcpool_loop = asyncio.get_running_loop()
            await super().startup(sockets)

        def install_signal_handlers(self) -> None:  # runs in a thread
            pass

    server = Server(uvicorn.Config(app, host="127.0.0.1", port=port, loop="uvloop", log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="gateway-server", daemon=True)
    thread.start()
    if not wait_until(lambda: server.started, SERVER_START_TIMEOUT_S):
        raise RuntimeError("gateway server did not start")
    served = Served(gateway, f"http://127.0.0.1:{port}", server, thread, app)
    try:
        yield served
    finally:
        with contextlib.suppress(Exception):
            served.run(gateway.aclose(drop_pools=True), timeout=30)
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="session")
def make_gateway(ray_session: Any) -> Callable[..., Any]:
    """``with make_gateway(add_streams_fn, **gateway_cfg) as served:`` -- a fresh app."""

    @contextlib.contextmanager
    def factory(setup: Callable[[Any], None], warm: bool = True, **gateway_cfg: Any) -> Iterator[Served]:
        from runtime.front.gateway import Gateway

        gw = Gateway(_loopback_config(**gateway_cfg))
        setup(gw)
        with serve_gateway(gw, warm=warm) as served:
            yield served

    return factory


async def offer_sdp() -> str:
    """A real offer (video sendrecv and the "text" data channel) from an aiortc peer that
    is closed at once: an offer whose client never completes ICE."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="sendrecv")
    pc.createDataChannel("text")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


# --- the quick subset: pytest -m "not slow" -----------------------------------------------

# A test is slow when it starts something heavy: the session's Ray (directly or through a
# gateway), an app process, a browser or a cluster. Marked here from the fixtures it uses
# (transitively) and the folder it lives in, so a new test is classified without anyone
# remembering to: `pytest -m "not slow"` is the development loop, CI runs everything.
SLOW_FIXTURES = frozenset({"ray_session", "app_ray", "make_gateway", "browser", "new_page", "chromium", "chromium_page", "playwright_driver"})
SLOW_FOLDERS = ("e2e", "cluster")


# The files whose tests take longest (minutes: app start-ups, browsers, a second Ray node),
# longest first, from the suite's --durations (docs/testing.md). scripts/test.sh runs two test
# processes that take whole files in collection order (--dist loadfile, --no-loadscope-reorder:
# xdist would otherwise order files by how many tests they have, and a file of three slow
# tests came last, one process working alone at the end): these go first, the many quick
# files fill in behind them, and both processes finish together. Not the soak: it measures
# connect timeouts of 3 s, which the start-up storm of the first minutes made miss (CI-found).
LONGEST_FILES = (
    "e2e/test_examples.py",
    "front/test_serve.py",
    "control/test_queue_scheduler.py",
    "control/test_scheduler.py",
    "e2e/test_media_processes_browser.py",
    "media/test_failover.py",
    "ops/test_drain.py",
    "media/test_media_processes.py",
    "e2e/test_component_ui.py",
    "cluster/test_two_nodes.py",
    "e2e/test_browser.py",
    "e2e/test_component_events.py",
    "media/test_session_lifecycle.py",
    "front/test_websocket_audio.py",
    "front/test_telephone.py",
    "hostile/test_media.py",
    "e2e/test_queue_browser.py",
    "hostile/test_front.py",
    "media/test_resume.py",
    "media/test_voice_e2e.py",
    "e2e/test_wheel_install.py",
    "media/test_stall_guard.py",
    "media/test_gateway_e2e.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_root = Path(__file__).resolve().parent
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    where = {id(item): Path(str(item.fspath)).resolve().relative_to(tests_root).as_posix() for item in items}
    items.sort(key=lambda item: rank.get(where[id(item)], len(rank)))  # stable: the rest keep their order
    for item in items:
        folder = Path(str(item.fspath)).resolve().relative_to(tests_root).parts[0]
        fixtures = set(getattr(item, "fixturenames", ()))
        if folder in SLOW_FOLDERS or fixtures & SLOW_FIXTURES or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.slow)
