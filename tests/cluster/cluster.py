"""A real multi-node Ray cluster on this machine, and gateway processes that join it.

Each node is one ``ray start ... --block`` in a process group of its own, so a test can take
exactly that node away (every process of its tree, at once, as a machine that dies) and
teardown can stop exactly what it started: ``ray stop`` would stop every Ray on the machine,
the pytest session's own local Ray included.

Ray 2.60 takes ``--temp-dir`` per node, so every node keeps its sockets and logs apart. The
directories are short (``/tmp/rtcc-*``): a Unix socket path holds at most 107 bytes and Ray
nests ``session_<date>_<pid>/sockets/...`` inside. Every node has a loopback address of its
own (127.0.0.2, .3, ...), as machines of a cluster have: traffic between nodes stays on
loopback, and Ray keeps it (it swaps 127.0.0.1 itself for the host's outward address).

The pytest process is a driver of its own local Ray and cannot join a second cluster, so
everything that talks Ray here is a subprocess: the gateways (``rtcpool serve``) and a
:class:`Probe` that answers with ``rtcpool status``'s view of the deployment.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
APP = Path(__file__).resolve().parent / "app.py"
RAY_CLI = Path(sys.executable).with_name("ray")  # the venv's `ray` command
NODE_START_TIMEOUT_S = 90.0  # `ray start` until "Ray runtime started." (2 busy cores)
NODE_START_ATTEMPTS = 2  # a joining node that exits while starting is started again once
NODE_STOP_TIMEOUT_S = 15.0  # SIGKILL -> every process of the node reaped
GATEWAY_START_TIMEOUT_S = 120.0  # python + aiortc + ray.init + registration on 2 cores
GATEWAY_STOP_TIMEOUT_S = 20.0  # SIGINT -> sessions closed, leases given back, process gone
PROBE_TIMEOUT_S = 30.0  # one status answer (a GCS read and one scheduler call)
POLL_INTERVAL_S = 0.25
OBJECT_STORE_BYTES = 100_000_000  # per node; the tests pass no objects through it
NODE_READY_LINE = "Ray runtime started"
FIRST_NODE_IP = (127, 0, 0, 2)  # the head's; the next nodes count up from it
PROBE_PREFIX = b"PROBE "  # marks the probe's answers: Ray prints cluster events to stdout too
# Ray's GCS marks a node dead after health_check_failure_threshold missed checks, one every
# health_check_period_ms: 5 x 3 s by default. The tests take a node away and want to see it
# declared dead in seconds, not tens of them.
HEALTH_CHECK_ENV = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3"}
LOG_TAIL_LINES = 30


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment for a Ray or gateway subprocess: no inherited cluster address (it
    would point at the pytest session's own Ray), no token auth, no rtcpool overrides, and not
    the one-host switch an embedded gateway started in this test process sets (CI-found: with
    it, `ray start --address` refuses to join, "multi-node clusters are not supported")."""
    from runtime.front.ray_start import RAY_ONE_HOST_ENV

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_ADDRESS", "RTCPOOL_")) and k != RAY_ONE_HOST_ENV
    }
    env.update(
        {
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": str(REPO),
            **extra,
        }
    )
    return env


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def process_tree(pid: int) -> list[psutil.Process]:
    """``pid``, its descendants and its process group. Ray gives each worker a process group
    of its own, but a worker is the raylet's child, so the tree finds it."""
    procs: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        procs[pid] = root
        for child in root.children(recursive=True):
            procs[child.pid] = child
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            if os.getpgid(proc.pid) == pid:
                procs[proc.pid] = proc
    return list(procs.values())


def end_tree(pid: int, sig: signal.Signals, timeout: float) -> None:
    """Send ``sig`` to the root of ``pid``'s tree (SIGKILL: to every process of it, at once),
    wait up to ``timeout``, then SIGKILL whatever is left. Safe to call twice."""
    tree = process_tree(pid)
    targets = tree if sig == signal.SIGKILL else [p for p in tree if p.pid == pid]
    for proc in targets:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(sig)
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=timeout)


@dataclass
class RayNode:
    name: str
    process: subprocess.Popen[bytes]
    temp_dir: Path
    log: Path
    node_id: str = ""

    def wait_started(self) -> None:
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while NODE_READY_LINE not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"ray node {self.name} exited with {self.process.returncode}:\n{tail(self.log)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"ray node {self.name} did not start in {NODE_START_TIMEOUT_S} s:\n{tail(self.log)}"
                )
            time.sleep(POLL_INTERVAL_S)
        self.node_id = self._raylet_node_id()

    def _raylet_node_id(self) -> str:
        for proc in process_tree(self.process.pid):
            with contextlib.suppress(psutil.NoSuchProcess):
                for arg in proc.cmdline():
                    m = re.match(r"--node_id=([0-9a-f]+)$", arg)
                    if m:
                        return m.group(1)
        raise RuntimeError(f"no raylet with a --node_id among node {self.name}'s processes")

    def kill(self) -> None:
        """The node dies: every one of its processes gets SIGKILL at once. Also teardown's
        way: `ray start --block` takes over 15 s to stop its processes on SIGTERM, and a
        cluster that is thrown away keeps nothing worth a graceful stop. Safe to call twice."""
        end_tree(self.process.pid, signal.SIGKILL, NODE_STOP_TIMEOUT_S)
        self.process.wait(NODE_STOP_TIMEOUT_S)


@dataclass
class LocalCluster:
    """A head node and worker nodes, each ``ray start --block`` on a loopback address."""

    logs: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rtcc-", dir="/tmp")))
    port: int = field(default_factory=free_port)
    nodes: dict[str, RayNode] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self._ip(0)}:{self.port}"

    @staticmethod
    def _ip(index: int) -> str:
        a, b, c, d = FIRST_NODE_IP
        return f"{a}.{b}.{c}.{d + index}"

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> RayNode:
        temp_dir = self.root / name
        log = self.logs / f"ray-{name}.log"
        cmd = [
            str(RAY_CLI), "start", "--block",
            "--node-ip-address", self._ip(len(self.nodes)),
            "--temp-dir", str(temp_dir),
            "--object-store-memory", str(OBJECT_STORE_BYTES),
            "--disable-usage-stats",
            # fixed defaults would collide with another node or Ray on this machine
            "--dashboard-agent-listen-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
            *args,
        ]  # fmt: skip
        with log.open("wb") as out:
            process = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        node = RayNode(name, process, temp_dir, log)
        self.nodes[name] = node
        return node

    def start_head(self, num_cpus: int) -> RayNode:
        args = [
            "--head", "--port", str(self.port), "--num-cpus", str(num_cpus),
            "--include-dashboard", "false",
            "--dashboard-port", str(free_port()),
            "--ray-client-server-port", str(free_port()),
        ]  # fmt: skip
        node = self._start("head", args, subprocess_env(**HEALTH_CHECK_ENV))
        node.wait_started()
        return node

    def add_node(self, name: str, num_cpus: int, resources: dict[str, float]) -> RayNode:
        args = [
            "--address",
            self.address,
            "--num-cpus",
            str(num_cpus),
            "--resources",
            json.dumps(resources),
        ]
        # CI once saw a joining `ray start` exit with "the current node timed out during
        # startup" on a busy box: a node that dies starting is started once more
        for attempt in range(NODE_START_ATTEMPTS):
            node = self._start(name, args, subprocess_env())
            try:
                node.wait_started()
                return node
            except RuntimeError:
                if node.process.poll() is None or attempt + 1 == NODE_START_ATTEMPTS:
                    raise  # still running (too slow), or out of attempts
                node.kill()
                del self.nodes[name]  # the next attempt gets this one's address
        raise AssertionError("unreachable")

    def shutdown(self) -> None:
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class GatewayProcess:
    """``rtcpool serve tests/cluster/app.py`` joined to the cluster, on a loopback port."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def sessions(self) -> list[dict[str, Any]]:
        resp = httpx.get(f"{self.url}/webrtc/sessions", timeout=10)
        assert resp.status_code == 200, (
            f"GET /webrtc/sessions: HTTP {resp.status_code} {resp.text[:200]}"
        )
        return resp.json()

    def stop(self) -> None:
        # SIGINT: uvicorn shuts down, the app's lifespan closes the gateway (leases back)
        end_tree(self.process.pid, signal.SIGINT, GATEWAY_STOP_TIMEOUT_S)
        self.process.wait(GATEWAY_STOP_TIMEOUT_S)


def start_gateway(name: str, cluster: LocalCluster, config: Path, logs: Path) -> GatewayProcess:
    port = free_port()
    log = logs / f"gateway-{name}.log"
    cmd = [
        sys.executable, "-m", "runtime.cli", "serve", str(APP),
        "--config", str(config),
        "--port", str(port),
        "--address", cluster.address,
        "--ice-host-address", "127.0.0.1",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=subprocess_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return GatewayProcess(name, f"http://127.0.0.1:{port}", process, log)


def wait_serving(gateway: GatewayProcess) -> None:
    deadline = time.monotonic() + GATEWAY_START_TIMEOUT_S
    while True:
        if gateway.process.poll() is not None:
            raise RuntimeError(
                f"gateway {gateway.name} exited with {gateway.process.returncode}:\n{tail(gateway.log)}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{gateway.url}/webrtc/streams", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"gateway {gateway.name} did not serve in {GATEWAY_START_TIMEOUT_S} s:\n{tail(gateway.log)}"
            )
        time.sleep(POLL_INTERVAL_S)


class Probe:
    """A Ray driver in a subprocess (tests/cluster/probe.py): each :meth:`view` is the
    ``rtcpool status --json`` view of the deployment, without a new ``ray.init`` per look."""

    def __init__(self, cluster: LocalCluster, log: Path, namespace: str) -> None:
        self.log = log
        self._err = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.cluster.probe", cluster.address, namespace],
            cwd=REPO,
            env=subprocess_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            start_new_session=True,
        )
        self._lines: queue.Queue[bytes] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="probe-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(PROBE_PREFIX):
                self._lines.put(line[len(PROBE_PREFIX) :])

    def view(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(b"status\n")
            self.process.stdin.flush()
            line = self._lines.get(timeout=PROBE_TIMEOUT_S)
        except (queue.Empty, BrokenPipeError) as exc:
            raise RuntimeError(
                f"the probe did not answer in {PROBE_TIMEOUT_S} s:\n{tail(self.log)}"
            ) from exc
        return json.loads(line)

    def event(self, event_id: str) -> dict[str, Any]:
        return self.view()["events"].get(event_id, {})

    def wait(
        self, pred: Callable[[dict[str, Any]], Any], timeout: float, what: str
    ) -> dict[str, Any]:
        """Poll the view until ``pred(view)`` holds; fail naming ``what`` and the last view."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.view()
            if pred(view):
                return view
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what}: not within {timeout} s; last view:\n{json.dumps(view, indent=1)[:4000]}"
                )
            time.sleep(POLL_INTERVAL_S)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.process.stdin is not None
            self.process.stdin.close()  # end of input: the probe disconnects and exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(GATEWAY_STOP_TIMEOUT_S)
        end_tree(self.process.pid, signal.SIGKILL, GATEWAY_STOP_TIMEOUT_S)
        self._err.close()


@contextlib.contextmanager
def gateways(
    names: list[str], cluster: LocalCluster, config: Path, logs: Path
) -> Iterator[list[GatewayProcess]]:
    """Start the gateways side by side (their imports and ray.init overlap); stop them all."""
    started: list[GatewayProcess] = []
    try:
        for name in names:
            started.append(start_gateway(name, cluster, config, logs))
        for gw in started:
            wait_serving(gw)
        yield started
    finally:
        for gw in started:
            with contextlib.suppress(Exception):
                gw.stop()
