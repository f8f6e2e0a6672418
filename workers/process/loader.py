"""How a user's handler reaches a worker process.

Two ways, tried in order:

1. **By value** (cloudpickle): functions and handlers whose state pickles, including ones
   defined in ``__main__`` or a test module. The worker needs nothing of the app.
2. **By re-import**, like ``multiprocessing``'s spawn: the worker runs the app's file under
   another module name, with ``RTCPOOL_WORKER_IMPORT`` set so that stream registrations
   record their handler instead of starting a gateway and ``launch()`` does nothing. The
   handler is then the ``event_index``-th one the file registered. This serves handlers
   that close over unpicklable globals (an OpenCV network, a ``queue.Queue``), which the
   seed examples do.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import runpy
import sys
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from workers.handlers import VideoStreamHandler

log = logging.getLogger("rtcpool.loader")

WORKER_IMPORT_ENV = "RTCPOOL_WORKER_IMPORT"
APP_MODULE_NAME = "__rtcpool_app__"
OWN_PACKAGES = ("runtime", "workers", "gradio_ext")

# handlers registered while an app file is imported inside a worker, in registration order
REGISTRY: list[Any] = []

# The app file this process serves, when something else is its __main__ module. `rtcpool
# serve app.py` (and `python -m runtime.cli serve`) runs the file with runpy as "__main__":
# its classes say they live in "__main__", and once runpy returns, sys.modules["__main__"]
# is the runner again (the console script), so inspect.getfile() names the runner and a
# worker re-importing it registers no stream (issue 20, item 21).
_served_app: str | None = None


class HandlerLoadError(RuntimeError):
    pass


@dataclass
class StreamOutputs:
    """How a plain function's result maps onto its stream's ``outputs``, as a Gradio event
    maps a function's return value: one value per output, in order (a single output takes
    the whole result). The default, the WebRTC component as the only output, is the seeds'
    shape: the result is the media (plus any AdditionalOutputs)."""

    count: int = 1  # number of outputs
    media: int | None = 0  # the WebRTC component's position among them; None: not an output
    # output position -> position among the stream's other inputs (``latest_args[1:]``), for
    # the outputs that are also inputs: the worker feeds the returned value to the next call
    feedback: dict[int, int] = field(default_factory=dict)

    @property
    def mapped(self) -> bool:
        """True when the result is one value per output rather than the media itself."""
        return not (self.count == 1 and self.media == 0)


@dataclass
class HandlerSpec:
    blob: bytes | None = None
    app_path: str | None = None
    event_index: int = 0
    sys_path: list[str] = field(default_factory=list)
    name: str = ""
    # per stream event, not per frame: how often a plain function takes input (seconds;
    # None: every frame / audio chunk as it comes) and where its results go
    stream_every: float | None = None
    outputs: StreamOutputs = field(default_factory=StreamOutputs)
    # sha256 of the app file when the spec was made: a re-import must not silently run
    # another version of it, and two gateways serving one app agree on it
    source_sha256: str = ""

    def identity(self) -> tuple[Any, ...]:
        """What makes two specs the same handler, stable across processes: two gateways
        serving one app give equal identities, a changed app file a new one. Not the blob:
        cloudpickle gives each class defined in an app file a per-process id, so two pickles of
        one handler differ; and a spec with no blob (re-import) would not change when the
        file does. The blob counts only for a handler that has no file to hash."""
        code = self.source_sha256 or (
            "" if self.blob is None else "blob:" + hashlib.sha256(self.blob).hexdigest()
        )
        outputs = (self.outputs.count, self.outputs.media, tuple(sorted(self.outputs.feedback.items())))
        return (self.name, self.app_path, code, self.event_index, self.stream_every, outputs)


def source_hash(path: str) -> str:
    """sha256 of a file's bytes ("" if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return ""


def in_worker_import() -> bool:
    return os.environ.get(WORKER_IMPORT_ENV) == "1"


def register(handler: Any) -> int:
    """Record a stream's handler while an app is imported in a worker; returns its index."""
    REGISTRY.append(handler)
    return len(REGISTRY) - 1


def record_app_file(path: str) -> None:
    """Say which file this process runs as ``__main__`` on someone else's behalf (the runner
    calls it before running the file): what a worker re-imports for the classes defined there."""
    global _served_app
    _served_app = os.path.abspath(path)


def _class_file(cls: type) -> str | None:
    """The file whose code defines ``cls``. A class defined in the served app file names
    that file, not whatever sys.modules["__main__"] is now (see _served_app); otherwise the
    code objects of its own methods know their file even when its module is gone (runpy)."""
    if cls.__module__ == "__main__" and _served_app is not None:
        return _served_app
    own = _own_code_file(cls)
    if cls.__module__ == "__main__" and own is not None:
        return own
    try:
        return inspect.getfile(cls)
    except (TypeError, OSError):
        return own


def _own_code_file(cls: type) -> str | None:
    for value in vars(cls).values():
        func = getattr(value, "__func__", value)  # staticmethod, classmethod
        code = getattr(func, "__code__", None)
        if code is not None:
            return str(code.co_filename)
    return None


def app_file_of(handler: Any) -> str | None:
    """The file that defines ``handler`` (its function, or its class for an instance). Code
    objects know their file even when the module is gone from sys.modules (runpy)."""
    if not inspect.isroutine(handler) and type(handler).__module__.split(".")[0] in OWN_PACKAGES:
        # our wrappers (ReplyOnPause's fn, VideoStreamHandler's callable) live in this
        # package: the app is where the function they wrap is
        inner = getattr(handler, "fn", None) or getattr(handler, "callable", None)
        return app_file_of(inner) if inner is not None else None
    path: str | None
    if inspect.isroutine(handler):
        try:
            path = inspect.getfile(handler)  # its code object's file
        except (TypeError, OSError):
            path = None
    else:
        path = _class_file(type(handler))
    if not path or path.startswith("<") or not os.path.isfile(path):
        return None
    return os.path.abspath(path)


def make_spec(
    handler: Any,
    event_index: int,
    *,
    stream_every: float | None = None,
    outputs: StreamOutputs | None = None,
) -> HandlerSpec:
    """Build the spec in the gateway. ``event_index`` counts the stream registrations made
    before this one by handlers of the same file: what re-importing that file reproduces."""
    name = getattr(handler, "__qualname__", type(handler).__qualname__)
    # VideoStreamHandler(fn) travels as fn would: fn's module by value, as for a plain function
    code = handler.callable if isinstance(handler, VideoStreamHandler) else handler
    module = sys.modules.get(getattr(code, "__module__", "") or type(code).__module__)
    app_path = app_file_of(handler)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    try:
        if module is not None and _defined_outside_site_packages(module):
            # code the worker may not be able to import goes by value
            cloudpickle.register_pickle_by_value(module)
        blob = cloudpickle.dumps(handler)
    except Exception:
        blob = None
    if blob is None and app_path is None:
        raise HandlerLoadError(
            f"handler {name} neither pickles nor lives in a file a worker could import"
        )
    return HandlerSpec(
        blob=blob,
        app_path=app_path,
        event_index=event_index,
        sys_path=paths,
        name=name,
        stream_every=stream_every,
        outputs=outputs or StreamOutputs(),
        source_sha256=source_hash(app_path) if app_path else "",
    )


def _defined_outside_site_packages(module: Any) -> bool:
    if module.__name__ == "__main__":
        return False  # cloudpickle already pickles __main__ by value
    if module.__name__.split(".")[0] in OWN_PACKAGES:
        return False  # by value, our base classes would lose their identity in the worker
    path = getattr(module, "__file__", "") or ""
    return bool(path) and "site-packages" not in path and "dist-packages" not in path


def load(spec: HandlerSpec) -> Any:
    """Recreate the handler in this (worker) process."""
    for p in reversed(spec.sys_path):
        if p not in sys.path:
            sys.path.append(p)
    if spec.blob is not None:
        try:
            return cloudpickle.loads(spec.blob)
        except Exception as exc:
            if spec.app_path is None:
                raise HandlerLoadError(f"cannot unpickle handler {spec.name}: {exc}") from exc
    return _load_by_import(spec)


def _load_by_import(spec: HandlerSpec) -> Any:
    assert spec.app_path is not None
    if not os.path.isfile(spec.app_path):
        raise HandlerLoadError(f"app file {spec.app_path} is not on this host")
    if spec.source_sha256 and source_hash(spec.app_path) != spec.source_sha256:
        # not refused: an app edited while it runs should go on serving; but the worker runs
        # code the gateway never registered, and the log must say so
        log.warning(
            "%s on this host differs from the file the gateway registered %s from",
            spec.app_path,
            spec.name,
        )
    REGISTRY.clear()
    os.environ[WORKER_IMPORT_ENV] = "1"
    app_dir = os.path.dirname(spec.app_path)
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        runpy.run_path(spec.app_path, run_name=APP_MODULE_NAME)
    finally:
        os.environ.pop(WORKER_IMPORT_ENV, None)
    if spec.event_index >= len(REGISTRY):
        raise HandlerLoadError(
            f"{spec.app_path} registered {len(REGISTRY)} stream(s) in a worker, "
            f"expected stream #{spec.event_index} ({spec.name})"
        )
    return REGISTRY[spec.event_index]
