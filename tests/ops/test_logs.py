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


def test_aiortcs_per_frame_decode_warnings_are_held_to_one_per_interval(caplog, monkeypatch):
    """A client sending frames its decoder refuses would write aiortc's warning once per
    frame; one per interval passes, the next says how many were held back, and every other
    record of the logger passes untouched."""
    from runtime.ops import logs

    logger = logging.getLogger(logs.AIORTC_RECEIVER_LOGGER)
    monkeypatch.setattr(logger, "filters", [])
    logs.quiet_decode_failures()
    logs.quiet_decode_failures()  # once per process
    (flt,) = [f for f in logger.filters if isinstance(f, logs.DecodeFailureFilter)]
    caplog.set_level(logging.WARNING, logger=logs.AIORTC_RECEIVER_LOGGER)
    for _ in range(100):
        logger.warning("RTCRtpReceiver(%s) failed to decode %s frame: %s", "video", "H264", "Invalid data")
    logger.warning("something else: %s", 1)
    assert [r.getMessage() for r in caplog.records] == [
        "RTCRtpReceiver(video) failed to decode H264 frame: Invalid data",
        "something else: 1",
    ]
    assert flt.held == 99
    flt._next_at = 0.0  # the interval is over
    logger.warning("RTCRtpReceiver(%s) failed to decode %s frame: %s", "video", "VP8", "x")
    assert caplog.records[-1].getMessage().endswith("(99 more such warnings held back in the last 10 s)")
    # the message this matches is aiortc's own
    import inspect

    from aiortc import rtcrtpreceiver

    assert logs.DECODE_FAILURE_PREFIX in inspect.getsource(rtcrtpreceiver)
