"""workers/process/loader.py: how a handler gets from the app's process into a worker's.

"By value" is proven in a fresh interpreter that cannot import the code's module (its file is
gone and its directory is not on the path); "by re-import" runs a real app file under
RTCPOOL_WORKER_IMPORT=1.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys
import textwrap
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from workers.handlers import StreamHandler
from workers.process import loader
from workers.process.loader import (
    APP_MODULE_NAME,
    WORKER_IMPORT_ENV,
    HandlerLoadError,
    HandlerSpec,
    in_worker_import,
    load,
    make_spec,
)

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def clean_loader_state() -> Iterator[None]:
    saved_path = list(sys.path)
    yield
    loader.REGISTRY.clear()
    sys.path[:] = saved_path
    assert WORKER_IMPORT_ENV not in os.environ, "the import flag outlived the import"


def import_file(path: Path) -> types.ModuleType:
    """Import an app file the way ``python app.py`` would make it a module of this process."""
    name = f"rtcpool_test_app_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_elsewhere(spec: HandlerSpec, call: str, tmp_path: Path) -> str:
    """Load ``spec`` in a fresh interpreter started in /, evaluate ``call`` on the handler ``h``."""
    blob = tmp_path / f"spec-{uuid.uuid4().hex[:6]}.pickle"
    blob.write_bytes(pickle.dumps(spec))
    code = textwrap.dedent(
        f"""
        import pickle, sys
        import numpy as np
        from workers.process.loader import load
        h = load(pickle.loads(open({str(blob)!r}, "rb").read()))
        print(repr({call}))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# --- by value ---------------------------------------------------------------------------------

BY_VALUE_APP = """
import numpy as np

SCALE = 3

def handler(frame):
    return frame * SCALE + helper()

def helper():
    return 1
"""


def test_a_function_travels_by_value(tmp_path):
    app = tmp_path / "by_value_app.py"
    app.write_text(BY_VALUE_APP)
    module = import_file(app)
    spec = make_spec(module.handler, 0)
    assert spec.blob is not None
    assert spec.app_path == str(app)
    assert spec.name == "handler"
    # the worker host has no copy of the app, and could not import it by name anyway
    app.unlink()
    del sys.modules[module.__name__]
    spec.sys_path = []
    assert load_elsewhere(spec, "h(2)", tmp_path) == "7"


def test_a_lambda_with_captured_state_travels_by_value(tmp_path):
    offset = np.array([1, 2, 3])
    spec = make_spec(lambda frame: frame + offset, 0)
    assert spec.blob is not None
    assert spec.name == "test_a_lambda_with_captured_state_travels_by_value.<locals>.<lambda>"
    # in this process
    np.testing.assert_array_equal(load(spec)(np.zeros(3, dtype=int)), [1, 2, 3])
    # and where this test module cannot be imported
    spec.sys_path = []
    assert load_elsewhere(spec, "h(np.zeros(3, dtype=int)).tolist()", tmp_path) == "[1, 2, 3]"


class Doubler(StreamHandler):
    def __init__(self, factor: int = 2) -> None:
        super().__init__(input_sample_rate=16_000)
        self.factor = factor

    def receive(self, frame: Any) -> None:
        self.last = frame

    def emit(self) -> Any:
        return None

    def copy(self) -> Doubler:
        return Doubler(self.factor)


def test_a_handler_object_keeps_the_identity_of_our_base_classes():
    handler = Doubler(5)
    handler.args_set.set()
    loaded = load(make_spec(handler, 0))
    assert isinstance(loaded, StreamHandler), "the base class is imported, not copied by value"
    assert loaded is not handler
    assert loaded.factor == 5 and loaded.input_sample_rate == 16_000
    assert not loaded.args_set.is_set(), "per-session state is rebuilt, not carried over"


def test_spec_carries_the_app_search_path(tmp_path):
    extra = tmp_path / "libdir"
    extra.mkdir()
    sys.path.append(str(extra))
    spec = make_spec(lambda f: f, 0)
    assert str(extra) in spec.sys_path
    assert all(os.path.isdir(p) for p in spec.sys_path)
    sys.path.remove(str(extra))
    load(spec)
    assert str(extra) in sys.path, "a worker can import what the app could"


# --- by re-import ---------------------------------------------------------------------------------

REIMPORT_APP = """
import threading
from workers.process.loader import in_worker_import, register

LOCK = threading.Lock()  # closes the handlers over something that cannot be pickled
SEEN_FLAG = in_worker_import()

def first(frame):
    with LOCK:
        return frame + 1

def second(frame):
    with LOCK:
        return frame - 1

if in_worker_import():
    register(first)
    register(second)
else:
    GATEWAY_STARTED = True  # an app starts its server here; in a worker it must not
"""


@pytest.fixture
def reimport_app(tmp_path: Path) -> tuple[Path, types.ModuleType]:
    app = tmp_path / "reimport_app.py"
    app.write_text(REIMPORT_APP)
    return app, import_file(app)


def test_unpicklable_closure_falls_back_to_reimport(reimport_app):
    app, module = reimport_app
    assert module.SEEN_FLAG is False and module.GATEWAY_STARTED
    spec = make_spec(module.first, 0)
    assert spec.blob is None, "a lock does not pickle"
    assert spec.app_path == str(app)
    handler = load(spec)
    assert handler is not module.first
    assert handler(1) == 2
    g = handler.__globals__
    assert g["__name__"] == APP_MODULE_NAME
    assert g["SEEN_FLAG"] is True, "the app saw RTCPOOL_WORKER_IMPORT=1 while it was imported"
    assert "GATEWAY_STARTED" not in g
    assert not in_worker_import()


def test_event_index_picks_the_registration(reimport_app):
    _, module = reimport_app
    spec = make_spec(module.second, 1)
    assert spec.blob is None
    assert load(spec)(1) == 0


def test_wrong_event_index_is_a_load_error(reimport_app):
    app, module = reimport_app
    spec = make_spec(module.first, 5)
    with pytest.raises(HandlerLoadError, match=r"registered 2 stream\(s\) in a worker, expected stream #5 \(first\)"):
        load(spec)


def test_an_app_that_registers_nothing(tmp_path):
    app = tmp_path / "silent_app.py"
    app.write_text("X = 1\n")
    with pytest.raises(HandlerLoadError, match=r"registered 0 stream\(s\)"):
        load(HandlerSpec(blob=None, app_path=str(app), event_index=0, name="x"))


def test_a_missing_app_file_is_a_load_error(tmp_path):
    missing = tmp_path / "gone.py"
    with pytest.raises(HandlerLoadError, match="is not on this host"):
        load(HandlerSpec(blob=None, app_path=str(missing), name="gone"))


def test_an_app_that_fails_to_import_restores_the_environment(tmp_path):
    app = tmp_path / "broken_app.py"
    app.write_text("raise RuntimeError('app cannot start here')\n")
    with pytest.raises(RuntimeError, match="app cannot start here"):
        load(HandlerSpec(blob=None, app_path=str(app), name="x"))
    assert not in_worker_import()


def test_each_reimport_starts_from_an_empty_registry(tmp_path, reimport_app):
    _, module = reimport_app
    other = tmp_path / "other_app.py"
    other.write_text("from workers.process.loader import register\nregister(lambda f: 'other')\n")
    assert load(HandlerSpec(blob=None, app_path=str(other), name="o"))(0) == "other"
    assert load(make_spec(module.first, 0))(1) == 2
    assert load(HandlerSpec(blob=None, app_path=str(other), name="o"))(0) == "other"


def test_a_blob_that_cannot_load_falls_back_to_the_app(reimport_app):
    app, _ = reimport_app
    spec = HandlerSpec(blob=b"not a pickle", app_path=str(app), event_index=0, name="first")
    assert load(spec)(1) == 2


def test_a_blob_that_cannot_load_without_an_app_is_a_load_error():
    with pytest.raises(HandlerLoadError, match="cannot unpickle handler garbled"):
        load(HandlerSpec(blob=b"not a pickle", app_path=None, name="garbled"))


def test_a_handler_that_neither_pickles_nor_has_a_file():
    module = types.ModuleType(f"rtcpool_test_nofile_{uuid.uuid4().hex[:6]}")
    # code made at run time (a notebook cell, exec): no module a worker could import
    exec("import threading\nLOCK = threading.Lock()\ndef handler(f):\n    with LOCK:\n        return f\n", module.__dict__)
    with pytest.raises(HandlerLoadError, match="neither pickles nor lives in a file"):
        make_spec(module.handler, 0)


def test_register_returns_the_index():
    assert loader.register("a") == 0
    assert loader.register("b") == 1
    assert loader.REGISTRY == ["a", "b"]


# --- identity: what makes two specs the same handler ------------------------------------------------

CLASS_APP = """
class Inverter:
    def __call__(self, frame):
        return 255 - frame
"""


def test_two_processes_pickling_one_class_handler_agree_on_its_identity(tmp_path):
    """cloudpickle gives a class defined in an app file a per-process id: the bytes differ,
    the identity must not (two gateways serving one app share one pool)."""
    app = tmp_path / "class_app.py"
    app.write_text(CLASS_APP)
    code = textwrap.dedent(
        f"""
        import importlib.util, pickle, sys
        from workers.process.loader import make_spec
        spec = importlib.util.spec_from_file_location("rtcpool_class_app", {str(app)!r})
        module = importlib.util.module_from_spec(spec)
        sys.modules["rtcpool_class_app"] = module
        spec.loader.exec_module(module)
        sys.stdout.buffer.write(pickle.dumps(make_spec(module.Inverter(), 0)))
        """
    )
    specs = []
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=120)
        assert result.returncode == 0, result.stderr.decode()
        specs.append(pickle.loads(result.stdout))
    a, b = specs
    assert a.blob != b.blob
    assert a.identity() == b.identity()
    assert a.source_sha256 and a.app_path == str(app)


def test_an_app_file_that_changes_changes_the_identity(reimport_app):
    app, module = reimport_app
    before = make_spec(module.first, 0)
    assert before.blob is None, "the premise: a handler that goes by re-import has no bytes of its own"
    assert make_spec(module.first, 0).identity() == before.identity()
    app.write_text(REIMPORT_APP.replace("frame + 1", "frame + 2"))
    assert make_spec(module.first, 0).identity() != before.identity()
    # so do the options that travel with it, and the position of the registration
    assert make_spec(module.first, 1).identity() != make_spec(module.first, 0).identity()
    assert make_spec(module.first, 0, stream_every=0.5).identity() != make_spec(module.first, 0).identity()


def test_a_handler_without_a_file_is_known_by_its_bytes():
    one, other = make_spec(lambda f: f + 1, 0), make_spec(lambda f: f + 2, 0)
    assert one.app_path is not None  # this test module; a lambda typed at a prompt has none
    one.app_path = other.app_path = None
    one.source_sha256 = other.source_sha256 = ""
    assert one.identity() != other.identity()


def test_a_reimport_of_a_changed_file_still_loads_and_says_so(reimport_app, caplog):
    app, module = reimport_app
    spec = make_spec(module.second, 1)
    app.write_text(REIMPORT_APP + "\n# edited\n")
    with caplog.at_level("WARNING", logger="rtcpool.loader"):
        assert load(spec)(5) == 4
    assert f"{app} on this host differs from the file the gateway registered second from" in caplog.text


# --- a class defined in a file run as __main__ by someone else (issue 20, item 21) ----------

RUN_AS_MAIN = """
import queue


class Base:
    def receive(self, frame):
        return frame


class Echo:
    def __init__(self):
        self.queue = queue.Queue()  # does not pickle: a worker re-imports this file


class Bare(Base):
    pass  # no method of its own: only the recorded file names where it lives
"""


def test_a_class_of_a_file_run_as_main_by_a_runner_is_found_in_that_file(tmp_path, monkeypatch):
    """`rtcpool serve app.py` runs the file with runpy as "__main__"; when runpy returns,
    sys.modules["__main__"] is the runner (here pytest's), which a worker would re-import."""
    app = tmp_path / "app.py"
    app.write_text(RUN_AS_MAIN)
    monkeypatch.setattr(loader, "_served_app", None)
    import runpy

    found = runpy.run_path(str(app), run_name="__main__")
    assert loader.app_file_of(found["Echo"]()) == str(app), "from its own methods' code"
    assert make_spec(found["Echo"](), 0).app_path == str(app)
    loader.record_app_file(str(app))
    assert loader.app_file_of(found["Bare"]()) == str(app), "from the file recorded as served"
