"""Helpers shared by the benchmark scripts: a GIL-bound workload, percentiles, CPU
accounting, tables and result files.

The workload is a fixed number of pure-Python loop iterations, sized once per run (on a
quiet machine, before any server starts) to take the wanted time. A wall-clock busy loop
would do less work when the machine is contended (it stops at a time, not at a work count)
and flatter a setup that overloads the CPU; a count fixed for the run makes every setup do
the same work per frame, and the results report the CPU time a frame really took.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench-results"

# spin() loop turns per millisecond on the 2-vCPU box these benchmarks were first run on, with
# both vCPUs busy (--fixed-rate). The next machine ran Python ~3x slower (15.7k/ms): a count
# fixed across machines made the "15 ms" handler take 43 ms there, so the scripts time the
# loop at start-up by default, and --fixed-rate keeps runs on one machine comparable.
ITERS_PER_MS = 45_000
CALIBRATION_PROBE_ITERS = 200_000  # loop iterations of the first, rough timing
CALIBRATION_S = 1.5  # seconds of full-length timings; their median is taken (this VM's speed wanders)


def spin(iters: int) -> int:
    """Pure-Python work that holds the GIL for the whole call (``iters`` loop turns)."""
    x = 0
    for i in range(iters):
        x += i
    return x


def busy_iters(target_ms: float, calibrate: bool) -> int:
    """Loop turns for a handler of ``target_ms``: the fixed rate, or a calibration here."""
    return calibrate_iters(target_ms) if calibrate else int(round(ITERS_PER_MS * target_ms))


def calibrate_iters(target_ms: float) -> int:
    """Loop iterations that :func:`spin` needs for ``target_ms`` on an idle core."""
    t0 = time.perf_counter()
    spin(CALIBRATION_PROBE_ITERS)
    iters = max(1, int(CALIBRATION_PROBE_ITERS * (target_ms / 1000.0) / (time.perf_counter() - t0)))
    rates: list[float] = []
    end = time.perf_counter() + CALIBRATION_S
    while time.perf_counter() < end or len(rates) < 3:
        t0 = time.perf_counter()
        spin(iters)
        rates.append(iters / (time.perf_counter() - t0))
    return max(1, int(round(statistics.median(rates) * target_ms / 1000.0)))


class SpinHandler:
    """A frame function: spin ``iters`` loop turns, then return the frame unchanged (so a
    painted counter survives). ``iters == 0`` is the no-op handler."""

    def __init__(self, iters: int) -> None:
        self.iters = iters

    def __call__(self, frame: Any, *args: Any) -> Any:
        if self.iters:
            spin(self.iters)
        return frame


def spin_frame(frame: Any, iters: int = 0) -> Any:
    """The same workload as a plain function taking the count as an input (``args``)."""
    if iters:
        spin(iters)
    return frame


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    data = sorted(values)
    return data[min(len(data) - 1, max(0, int(round(q / 100.0 * (len(data) - 1)))))]


def mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


# --- CPU accounting ---------------------------------------------------------------------


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """user+system CPU seconds used so far by each live pid."""
    import psutil

    out: dict[int, float] = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores), so far."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0) + getattr(t, "steal", 0.0)


class CpuWindow:
    """CPU% (100 = one core) of named groups of processes over a window of wall time, plus
    ``machine`` (every process, all cores) and ``others`` (machine less the groups: load
    from processes that are not part of the benchmark)."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = {k: list(v) for k, v in groups.items()}
        self.t0 = time.monotonic()
        self.machine0 = machine_busy_seconds()
        self.start = {k: cpu_seconds(v) for k, v in self.groups.items()}

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        out: dict[str, float] = {}
        for k, pids in self.groups.items():
            end = cpu_seconds(pids)
            used = sum(end[p] - self.start[k].get(p, end[p]) for p in end if p in self.start[k])
            out[k] = round(100.0 * used / wall, 1) if wall > 0 else 0.0
        out["machine"] = round(100.0 * (machine_busy_seconds() - self.machine0) / wall, 1) if wall > 0 else 0.0
        out["others"] = round(max(0.0, out["machine"] - sum(v for k, v in out.items() if k != "machine")), 1)
        return out


QUIET_SAMPLE_S = 1.0  # machine load is sampled over this long
QUIET_MARGIN_PCT = 10.0  # windows whose outside load is within this of the quietest one are pooled


def quiet_windows(others: Sequence[float]) -> list[int]:
    """Indices of the windows to report: the quietest one (least CPU used by processes
    outside the benchmark) and every other within ``QUIET_MARGIN_PCT`` of it."""
    floor = min(others)
    return [i for i, v in enumerate(others) if v <= floor + QUIET_MARGIN_PCT]


def mean_cpu(cpus: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = {k for c in cpus for k in c}
    return {k: round(statistics.fmean(c.get(k, 0.0) for c in cpus), 1) for k in sorted(keys)}


def wait_quiet(threshold_pct: float, max_wait_s: float) -> float:
    """Wait (at most ``max_wait_s``) until the whole machine is busy less than
    ``threshold_pct`` (100 = one core) over a sample; returns the last sample. The machine
    may be shared with other work, which would skew a measurement."""
    deadline = time.monotonic() + max_wait_s
    while True:
        b0 = machine_busy_seconds()
        time.sleep(QUIET_SAMPLE_S)
        busy = 100.0 * (machine_busy_seconds() - b0) / QUIET_SAMPLE_S
        if busy < threshold_pct or time.monotonic() >= deadline:
            return round(busy, 1)


# --- output ---------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (it reads well in a terminal and pastes into README.md)."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        lines.append("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def results_path(name: str) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    return RESULTS_DIR / name


def stop_server(proc: Any, timeout_s: float) -> None:
    """Stop a server subprocess and everything it started (Ray's daemons and workers, for
    rtcpool): SIGINT first so it shuts down cleanly, then kill what is left, by pid."""
    import signal
    import subprocess

    import psutil

    family = [proc.pid, *descendants(proc.pid)]
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # uvicorn shuts down; the gateway then Ray
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in family[1:]:
        try:
            p = psutil.Process(pid)
            try:
                p.wait(timeout_s / 6)
                continue
            except psutil.TimeoutExpired:
                p.kill()
        except psutil.NoSuchProcess:
            pass



# --- fastrtc, the baseline, in a venv of its own ------------------------------------------------

FASTRTC_VENV = RESULTS_DIR / "fastrtc-venv"
FASTRTC_PACKAGES = ("fastrtc",)  # what bench_e2e needs; bench_voice adds the VAD extra
# fastrtc's ReplyOnPause downloads Silero VAD v4 (inputs input, sr, h, c) from the Hugging
# Face hub at first use, which this machine cannot reach; faster-whisper 1.0.2's wheel on
# PyPI ships that model generation as a file (1.0.3 moved to v5, whose inputs differ)
FASTRTC_VAD_WHEEL = ("faster-whisper", "1.0.2", "faster_whisper/assets/silero_vad.onnx")
FASTRTC_VAD_SHA256 = "591f853590d11ddde2f2a54f9e7ccecb2533a8af7716330e8adfa6f3849787a9"
FASTRTC_VAD_FILE = "silero_vad_v4.onnx"


def ensure_fastrtc_venv(packages: Sequence[str] = FASTRTC_PACKAGES, imports: Sequence[str] = ("fastrtc",)) -> Path:
    """The python of bench-results/fastrtc-venv, made (``pip install <packages>``) or
    topped up the first time ``imports`` are not all importable there."""
    import subprocess

    python = FASTRTC_VENV / "bin" / "python"
    check = "import " + ", ".join(imports)
    if python.exists() and subprocess.run([str(python), "-c", check], capture_output=True).returncode == 0:
        return python
    if not python.exists():
        print(f"creating {FASTRTC_VENV} (pip install {' '.join(packages)}) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(FASTRTC_VENV)], check=True)
    else:
        print(f"pip install {' '.join(packages)} into {FASTRTC_VENV} ...", flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    return python


def fastrtc_vad_model() -> Path:
    """A local Silero VAD v4 .onnx for fastrtc's loader (bench-results/silero_vad_v4.onnx),
    taken once from the faster-whisper wheel on PyPI (``pip download``, no install) and
    checked against its known sha256."""
    import hashlib
    import subprocess
    import tempfile
    import zipfile

    path = results_path(FASTRTC_VAD_FILE)
    if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == FASTRTC_VAD_SHA256:
        return path
    name, version, member = FASTRTC_VAD_WHEEL
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        f"{name}=={version}", "-d", tmp], check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as z:
            data = z.read(member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != FASTRTC_VAD_SHA256:
        raise RuntimeError(f"{name} {version}'s {member} has sha256 {digest}, not {FASTRTC_VAD_SHA256}")
    path.write_bytes(data)
    return path
