"""A Worker in a subprocess of its own, for handlers whose failure makes the worker call
os._exit (that would end the pytest process), driven over its real link.

A test's script defines its handlers and ends with :data:`SERVE` (formatted with the repo
path and the name of a dict of handlers): the subprocess prints ``ENDPOINT <name>``, then
arms one session token per ``arm <token>`` line on stdin, as the scheduler arms one per
lease. :attr:`WorkerProcess.token` arms a fresh one each time it is read.
"""

from __future__ import annotations

import select
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
START_TIMEOUT_S = 60.0  # python + numpy + the worker module on a busy machine
EXPECT_TIMEOUT_S = 60.0

HEADER = """
import sys, threading, time
sys.path.insert(0, {repo!r})
from workers.process.loader import in_worker_import, make_spec, register
from workers.process.actor import Worker
"""

# the worker recovers a handler that does not pickle by importing the script again
# (workers/process/loader.py): then it only registers the handler
SERVE = """
handler = HANDLERS[sys.argv[1]]
if in_worker_import():
    register(handler)
else:
    w = Worker(make_spec(handler, 0))
    print("ENDPOINT", w.endpoint[1:], flush=True)
    for line in sys.stdin:
        w.arm(line.split()[1])
        print("ARMED", flush=True)
"""


class WorkerProcess:
    def __init__(self, script: Path, handler: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(script), handler],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            self.endpoint = "\0" + self.expect("ENDPOINT", START_TIMEOUT_S)
        except BaseException:
            self.kill()  # not yet the fixture's to kill
            raise

    @property
    def token(self) -> str:
        """A fresh session token, armed in the worker (one token opens one session)."""
        if self.proc.poll() is not None:
            raise ConnectionRefusedError(f"the worker process exited with {self.proc.returncode}")
        token = uuid.uuid4().hex
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"arm {token}\n")
        self.proc.stdin.flush()
        self.expect("ARMED")
        return token

    def expect(self, word: str, timeout: float = EXPECT_TIMEOUT_S) -> str:
        """The rest of the next line the worker prints that starts with ``word``."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    break
                if line.startswith(word):
                    return line[len(word) :].strip()
        err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
        raise AssertionError(f"worker process never said {word}: {err}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def worker_process_fixture(body: str) -> Callable[..., Iterator[Callable[[str], WorkerProcess]]]:
    """A pytest fixture starting WorkerProcesses of a script whose handlers are ``body``
    (it defines ``HANDLERS``, a dict of name -> handler)."""

    @pytest.fixture
    def worker_process(tmp_path: Path) -> Iterator[Callable[[str], WorkerProcess]]:
        script = tmp_path / "worker_main.py"
        script.write_text(HEADER.format(repo=str(REPO)) + body + SERVE)
        made: list[WorkerProcess] = []

        def factory(handler: str) -> WorkerProcess:
            wp = WorkerProcess(script, handler)
            made.append(wp)
            return wp

        yield factory
        for wp in made:
            wp.kill()

    return worker_process
