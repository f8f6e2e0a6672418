"""gateway.log_format: rtcpool's lines as text or one JSON object per line, with the fields
a log shipper indexes; an app's own logging set-up is left alone."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from runtime.ops.logs import JSONFormatter

REPO = Path(__file__).resolve().parents[2]


def test_a_record_with_fields_is_one_json_object():
    record = logging.LogRecord("rtcpool.session", logging.INFO, __file__, 1, "session %s ended", ("abc",), None)
    record.rtcpool = {"event": "session_end", "duration_s": 1.5, "frames_in": 30}
    out = json.loads(JSONFormatter().format(record))
    assert out["message"] == "session abc ended" and out["level"] == "info" and out["logger"] == "rtcpool.session"
    assert out["event"] == "session_end" and out["duration_s"] == 1.5 and out["frames_in"] == 30
    assert out["ts"].endswith("Z")


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_configure_writes_json_lines_to_stderr_unless_the_app_set_up_logging():
    emit = "import logging; logging.getLogger('rtcpool.x').info('hello', extra={'rtcpool': {'stream': 's'}})"
    line = _run(f"from runtime.ops import logs; logs.configure('json'); {emit}").strip()
    assert json.loads(line)["stream"] == "s"
    assert "hello" in _run(f"from runtime.ops import logs; logs.configure('text'); {emit}")
    # the app's own set-up (a root handler) wins: rtcpool adds nothing of its own
    own = _run(f"import logging, sys; logging.basicConfig(stream=sys.stderr, level=logging.INFO, format='APP %(message)s'); from runtime.ops import logs; logs.configure('json'); {emit}")
    assert own.strip() == "APP hello"
