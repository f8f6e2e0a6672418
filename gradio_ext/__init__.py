"""rtcpool for Gradio apps: ``from gradio_ext import WebRTC, ReplyOnPause, ...``.

The names and meaning are gradio_webrtc's; each stream's handler runs in a worker process.
Importing this package hooks Gradio's app creation and launch (see gradio_ext/serving.py)
and its uvicorn server's bounds (gradio_ext/http_bounds.py).
"""

# TURN credentials for rtc_configuration, exported with the handler API (explicit re-exports)
from runtime.guard.turn import TURN_API
from runtime.guard.turn import get_hf_turn_credentials as get_hf_turn_credentials
from runtime.guard.turn import get_turn_credentials as get_turn_credentials
from runtime.guard.turn import get_twilio_turn_credentials as get_twilio_turn_credentials
from workers.api import *  # noqa: F403  (the handler API, listed once in workers/api.py)
from workers.api import __all__ as HANDLER_API

from . import http_bounds, serving
from .webrtc import WebRTC

serving.install()
http_bounds.install()  # launch()'s uvicorn gets gateway.http's bounds, as rtcpool serve's

__all__ = [*HANDLER_API, *TURN_API, "WebRTC"]
