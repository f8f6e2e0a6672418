"""Draining: what SIGTERM (and ``rtcpool drain``) does to a process serving rtcpool gateways.

An orchestrator stops a pod or a unit with SIGTERM and, some seconds later, SIGKILL. A
gateway that exits at once cuts every user's stream mid-sentence and tells each that its
worker failed; one that waits on open streams with no deadline is killed anyway. So the
first SIGTERM starts a drain: every gateway of the process stops taking offers (503 with
Retry-After, so a load balancer sends new users elsewhere), tells each live client (a
warning on the data channel, shown by the page), lets the sessions run up to
``gateway.drain_timeout_s`` and then ends the rest cleanly (end_stream, slots and workers
back). Then the server stops as it would on Ctrl-C and the process exits 0. A second
SIGTERM, or SIGINT at any time, ends the sessions now, still releasing everything.

Three ways of serving, one behaviour:

* uvicorn in the main thread (``rtcpool serve`` of a FastAPI/Stream app, ``uvicorn
  app:app``, ``uvicorn.run``): uvicorn takes SIGTERM with ``Server.handle_exit``, which
  is wrapped here (uvicorn 0.30-0.55 checked, tests/test_patched_internals.py: ``handle_exit(sig, frame)`` sets
  ``should_exit``; tests/ops/test_drain.py fails if it is gone) so that the first
  SIGTERM drains before ``should_exit`` is set, and is not re-raised at exit (uvicorn
  re-raises the signals it shut down on, which would make the exit status 143).
* Gradio's ``launch()``: Gradio serves uvicorn in a thread and leaves SIGTERM to Python's
  default (exit at once, status 143). A handler installed here, in the main thread, drains
  and then interrupts the main thread, which Gradio's ``block_thread`` takes as Ctrl-C: it
  closes the server, whose lifespan closes the gateway. The interrupt goes through this
  SIGTERM handler, not SIGINT's: a process started by a shell's ``cmd &`` (and many container
  entrypoints) inherits SIGINT ignored, and ``_thread.interrupt_main()`` then does nothing
  (issue 20 item 23: "drained: stopping", and the process stayed in ``block_thread``).
* ``rtcpool drain``: sends SIGTERM to the gateway processes of this host, found by the
  records each writes into its user's run directory (runtime/ops/run_dir.py: a directory
  of this user's alone, a record trusted only for the very process that wrote it), and
  waits for them.
"""

from __future__ import annotations

import _thread
import asyncio
import atexit
import contextlib
import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime import constants as C
from runtime.ops import run_dir

log = logging.getLogger("rtcpool.drain")

DRAIN_JOIN_MARGIN_S = 30.0  # after its drain timeout, how long a drain's sessions may take to close

SERVING, DRAINING, STOPPING = "serving", "draining", "stopping"

_lock = threading.Lock()
_gateways: weakref.WeakSet[Any] = weakref.WeakSet()
_phase = SERVING
_installed = False
_pidfile: Path | None = None
_original_handle_exit: Callable[..., Any] | None = None
_previous_sigterm: Any = None
_interrupt_pending = False  # the next _on_sigterm call is _interrupt_main's, not a real signal


def phase() -> str:
    return _phase


def register(gateway: Any) -> None:
    """A gateway of this process has started: SIGTERM drains it from now on."""
    with _lock:
        _gateways.add(gateway)
    install()
    _announce(gateway)


def unregister(gateway: Any) -> None:
    with _lock:
        _gateways.discard(gateway)
        empty = not _gateways
    if empty:
        _withdraw()


def install() -> None:
    """Wrap uvicorn's exit handler and, from the main thread, take SIGTERM. Idempotent."""
    global _installed, _original_handle_exit
    with _lock:
        if _installed:
            return
        _installed = True
    try:
        import uvicorn

        _original_handle_exit = uvicorn.Server.handle_exit
        uvicorn.Server.handle_exit = _uvicorn_handle_exit  # type: ignore[method-assign,assignment]
    except ImportError:  # uvicorn ships with Gradio and FastAPI's standard extra; not required
        pass
    if threading.current_thread() is threading.main_thread():
        # over whatever was there: ray.init() sets sys.exit(15) (the "exits with status 15 at
        # once" of issue 11), Python's default kills; a third SIGTERM still gets that one
        global _previous_sigterm
        _previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)


def _uvicorn_handle_exit(server: Any, sig: int, frame: Any) -> None:
    if sig == signal.SIGTERM and _phase == SERVING and _live_gateways():
        start_drain(then=lambda: setattr(server, "should_exit", True))
        return
    if _phase == DRAINING:
        stop_now()
    assert _original_handle_exit is not None
    _original_handle_exit(server, sig, frame)


def _on_sigterm(signum: int, frame: Any) -> None:
    """Main-thread SIGTERM (Gradio's launch(), or a process that serves no uvicorn itself)."""
    global _interrupt_pending
    if _interrupt_pending:  # _interrupt_main() asked for it: Ctrl-C's effect, in the main thread
        _interrupt_pending = False
        raise KeyboardInterrupt
    if _phase == SERVING and _live_gateways():
        start_drain(then=_interrupt_main)
    elif _phase == DRAINING:
        stop_now()
    elif _phase == SERVING:
        _interrupt_main()  # nothing to drain: stop as on Ctrl-C (exit 0 where that is clean)
    elif callable(_previous_sigterm):
        _previous_sigterm(signum, frame)
    else:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)


def _interrupt_main() -> None:
    """Raise KeyboardInterrupt in the main thread, as Ctrl-C would, whatever SIGINT's
    disposition: ``_thread.interrupt_main(SIGTERM)`` runs :func:`_on_sigterm` there (Python's
    handler, installed by install()), which raises it. The SIGINT form does nothing when SIGINT
    is ignored, and signal.signal() cannot take SIGINT back from this (the drain's) thread."""
    global _interrupt_pending
    _interrupt_pending = True
    _thread.interrupt_main(signal.SIGTERM)


def _live_gateways() -> list[Any]:
    with _lock:
        return [g for g in _gateways if g.loop is not None and g.loop.is_running()]


def start_drain(then: Callable[[], None] | None = None, timeout_s: float | None = None) -> threading.Thread:
    """Drain every gateway of this process on its own loop, then call ``then`` (from the
    drain's thread). Signal-safe: it only starts a thread."""
    global _phase
    _phase = DRAINING

    def run() -> None:
        gateways = _live_gateways()
        log.warning("SIGTERM: draining %d gateway(s)", len(gateways))
        futures = [asyncio.run_coroutine_threadsafe(g.adrain(timeout_s), g.loop) for g in gateways]
        for g, fut in zip(gateways, futures, strict=True):
            limit = (timeout_s if timeout_s is not None else g.config.gateway.drain_timeout_s) + DRAIN_JOIN_MARGIN_S
            try:
                fut.result(limit)
            except Exception as exc:
                log.warning("drain of gateway %s did not finish: %s", g.gateway_id, exc)
        log.warning("drained: stopping")
        if then is not None:
            then()

    thread = threading.Thread(target=run, name="rtcpool-drain", daemon=True)
    thread.start()
    return thread


def stop_now() -> None:
    """A second SIGTERM (or SIGINT) during a drain: end the sessions now."""
    global _phase
    _phase = STOPPING
    for g in _live_gateways():
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(g.adrain_now(), g.loop)


# --- rtcpool drain: this host's gateway processes --------------------------------------------


def _announce(gateway: Any) -> None:
    global _pidfile
    if _pidfile is not None:
        return
    cfg = gateway.config.gateway
    try:
        _pidfile = run_dir.write_record(run_dir.this_process_record(gateway.gateway_id, cfg.host, cfg.port))
        atexit.register(_withdraw)
    except run_dir.UnsafeRunDir as exc:  # someone else's directory: serve on, unannounced
        log.warning("not announced to `rtcpool drain`: %s", exc)
    except OSError as exc:  # a read-only /tmp: only `rtcpool drain` is lost
        log.warning("cannot write %s for `rtcpool drain`: %s", run_dir.run_dir(), exc)


def _withdraw() -> None:
    global _pidfile
    path, _pidfile = _pidfile, None
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()


def gateway_processes() -> list[run_dir.GatewayRecord]:
    """The live gateway processes of this host, each verified (runtime/ops/run_dir.py).
    Raises run_dir.UnsafeRunDir."""
    return run_dir.gateway_records()


def drain_processes(records: list[run_dir.GatewayRecord], wait_s: float, poll_s: float = C.DRAIN_POLL_S) -> list[int]:
    """SIGTERM each verified gateway process, wait up to ``wait_s`` for them to exit; the
    pids still alive."""
    alive = [r.pid for r in records if run_dir.signal_gateway(r, signal.SIGTERM)]
    deadline = time.monotonic() + wait_s
    while alive and time.monotonic() < deadline:
        time.sleep(poll_s)
        alive = [p for p in alive if _alive(p)]
    return alive


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (our own child, not reaped yet) has exited
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True
