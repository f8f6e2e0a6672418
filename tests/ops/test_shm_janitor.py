"""The shared-memory janitor (runtime/ops/shm_janitor.py) on real /dev/shm segments, named as
Segment.create names them, with a creator that is dead, alive, alive but younger than the
segment (a reused pid), in another pid namespace, of the older name form, or another user's.
Only what a sweep must remove is removed; the names made here are the only ones asserted on
(other test runs on the machine have segments of their own)."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

import pytest

from runtime.ops import shm_janitor
from runtime.ops.shm_janitor import Janitor, creator_of, sweep
from tests.conftest import wait_until
from workers.link.shm import SEGMENT_PREFIX, Segment, pid_namespace

SHM = "/dev/shm"
SIZE = 64 * 1024  # bytes of each fake segment
HOUR_S = 3600.0
PERIODIC_S = 0.2  # the janitor's interval in the periodic test
REMOVED_S = 10.0  # bound for a periodic sweep to have removed a segment

pytestmark = pytest.mark.skipif(pid_namespace() is None or not os.path.isdir(SHM), reason="Linux /proc and /dev/shm")


# maps the segment named on stdin, says so, and waits (its resource tracker must not unlink it)
MAP_AND_WAIT = """
import sys, time
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
shm = SharedMemory(name=sys.stdin.readline().strip())
resource_tracker.unregister(shm._name, "shared_memory")
print("mapped", flush=True)
time.sleep(60)
"""


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def segments() -> Iterator[list[str]]:
    """make(pid, namespace) -> a real segment's name; every one is removed afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM, name))


def make(made: list[str], pid: int, namespace: str | None = "ours") -> str:
    ns = pid_namespace() if namespace == "ours" else namespace
    middle = f"{ns}-" if ns else ""
    name = f"{SEGMENT_PREFIX}{pid}-{middle}{uuid.uuid4().hex[:12]}"
    shm = SharedMemory(name=name, create=True, size=SIZE)
    # this test removes it (or the janitor does): not the resource tracker at exit
    resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    shm.buf[:4] = b"test"
    shm.close()
    made.append(name)
    return name


def present(name: str) -> bool:
    return os.path.exists(os.path.join(SHM, name))


def test_segment_names_carry_the_creator_pid_and_pid_namespace():
    seg = Segment.create()
    try:
        assert creator_of(seg.name, pid_namespace() or "") == os.getpid()
        assert creator_of(seg.name, "1") is None, "another namespace's"
    finally:
        seg.close()


def test_a_dead_creators_segment_is_removed_and_logged(segments, caplog):
    name = make(segments, dead_pid())
    with caplog.at_level(logging.WARNING, logger="rtcpool.shm"):
        done = sweep()
    assert not present(name)
    assert done.segments >= 1 and done.bytes >= SIZE
    [line] = [r.getMessage() for r in caplog.records if "segment(s)" in r.getMessage()]
    assert f"removed {done.segments} shared-memory segment(s)" in line


def test_a_live_creators_segment_is_kept(segments):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.1)  # the child is older than the segment by more than a clock tick
        mine, parents, childs = make(segments, os.getpid()), make(segments, os.getppid()), make(segments, child.pid)
        sweep()
        assert all(present(n) for n in (mine, parents, childs))
    finally:
        child.kill()
        child.wait()


def test_a_live_pid_younger_than_the_segment_is_a_reused_pid(segments):
    """The pid's process started an hour after the segment was last written: it cannot have
    made it, so the creator is gone though the pid is alive."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        old, fresh = make(segments, child.pid), make(segments, child.pid)
        then = time.time() - HOUR_S
        os.utime(os.path.join(SHM, old), (then, then))
        sweep()
        assert not present(old), "a segment older than its pid's process was kept"
        assert present(fresh), "the live creator's segment was removed"
    finally:
        child.kill()
        child.wait()


def test_a_live_pid_that_maps_the_segment_keeps_it_whatever_the_clocks_say(segments):
    """Its start time says it is younger than the segment (as after the wall clock was stepped
    forward), but it has the segment mapped: it is using it."""
    child = subprocess.Popen(
        [sys.executable, "-c", MAP_AND_WAIT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        name = make(segments, child.pid)
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(f"{name}\n".encode())
        child.stdin.flush()
        assert child.stdout.readline() == b"mapped\n"
        then = time.time() - HOUR_S
        os.utime(os.path.join(SHM, name), (then, then))
        sweep()
        assert present(name)
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("namespace", ["1", None], ids=["other-pid-namespace", "older-name-form"])
def test_a_segment_whose_pid_cannot_be_judged_here_is_kept(segments, namespace):
    name = make(segments, dead_pid(), namespace)
    sweep()
    assert present(name)


@pytest.mark.skipif(os.getuid() != 0, reason="making another user's segment needs root")
def test_another_users_segment_is_kept(segments):
    name = make(segments, dead_pid())
    os.chown(os.path.join(SHM, name), 65534, 65534)  # nobody
    sweep()
    assert present(name)


def test_other_files_are_not_touched(tmp_path):
    names = ["psm_12345", "rtcpool", "rtcpool-x-1-abc", f"other-{SEGMENT_PREFIX}{dead_pid()}-{pid_namespace()}-abc"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    assert sweep(str(tmp_path)).segments == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_the_janitor_sweeps_periodically_until_stopped(segments):
    janitor = Janitor(PERIODIC_S)
    janitor.start()
    try:
        name = make(segments, dead_pid())
        assert wait_until(lambda: not present(name), REMOVED_S), "the periodic sweep did not remove it"
    finally:
        janitor.stop()
        janitor.stop()  # twice: safe
    later = make(segments, dead_pid())
    time.sleep(3 * PERIODIC_S)
    assert present(later), "a stopped janitor swept"


def test_start_janitor_sweeps_at_once_and_starts_one_thread(segments, monkeypatch):
    monkeypatch.setattr(shm_janitor, "_janitor", None)
    name = make(segments, dead_pid())
    try:
        assert shm_janitor.start_janitor(HOUR_S).segments >= 1
        assert not present(name)
        first = shm_janitor._janitor
        shm_janitor.start_janitor(HOUR_S)
        assert shm_janitor._janitor is first, "a second gateway in the process reuses the thread"
    finally:
        if shm_janitor._janitor is not None:
            shm_janitor._janitor.stop()
