"""The gateway's own page: try a stream in the browser without Gradio.

:func:`mount_standalone` adds two pages to an app (``Gateway.mount`` adds it, so every
rtcpool app has them, Gradio or not):

* ``GET /webrtc/ui`` -- an index of the app's stream events, each a link to its page;
* ``GET /webrtc/ui?stream=<stream_id>`` -- that stream's page: start/stop, the time-limit
  bar, the audio level meter, camera and microphone lists, the processed media.

The page runs the Gradio component's own client, ``gradio_ext/static/webrtc.{html,css,js}``,
the way ``gr.HTML`` runs it: the script as the body of a function of ``(element, trigger,
props)``, with ``props.rtc`` built here from the stream event. There is one client to
maintain. The files are read by path, not imported: importing ``gradio_ext`` imports
Gradio, which an app without Gradio does not need (nothing below ``gradio_ext`` imports it);
``gradio_ext/static/*`` ships in the same distribution as this package.
"""

from __future__ import annotations

import functools
import html
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse

from runtime.errors import ErrorCode, Refused
from runtime.front.api import GatewayAPI
from runtime.front.http_util import error_response
from runtime.media.stream_event import StreamEvent

CLIENT_DIR = Path(__file__).resolve().parents[2] / "gradio_ext" / "static"
UI_PATH = "/webrtc/ui"
# the offer route beside the page, relative to it, so the page works under any root path
OFFER_URL_FROM_PAGE = "offer"
HOST_ID = "rtc-host"

PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 0; color: #222; background: #fff; }
main { max-width: 720px; margin: 24px auto; padding: 0 16px; }
h1 { font-size: 1.4em; margin: 0 0 4px; }
.meta { margin: 0 0 14px; opacity: 0.75; font-size: 0.9em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid #e4e4e7; }
button, select { font: inherit; }
"""


@functools.lru_cache(maxsize=1)
def client_files() -> tuple[str, str, str]:
    """The component's markup, stylesheet and script, as Gradio gets them."""
    return tuple(  # type: ignore[return-value]
        (CLIENT_DIR / name).read_text(encoding="utf-8")
        for name in ("webrtc.html", "webrtc.css", "webrtc.js")
    )


def page_config(event: StreamEvent, gateway: GatewayAPI) -> dict[str, Any]:
    """``props.rtc`` for a stream's page: what a WebRTC component with default options would
    get, plus where the offer goes."""
    return {
        "stream_id": event.event_id,
        "mode": event.mode,
        "modality": event.modality,
        "rtc_configuration": {
            "iceServers": [
                s.model_dump(exclude_none=True) for s in gateway.config.gateway.ice_servers
            ]
        },
        "time_limit": event.time_limit,
        "mirror_webcam": True,
        # no other component can show the processed video elsewhere: let the user keep a frame
        "show_download_button": event.has_video and event.mode != "send",
        "offer_url": OFFER_URL_FROM_PAGE,
    }


def _script_json(value: Any) -> str:
    # JSON inside <script>: "</script>" in a string must not end the element
    return json.dumps(value).replace("<", "\\u003c")


def _limits(event: StreamEvent) -> str:
    parts: list[str] = [event.mode, event.modality]
    if event.concurrency_limit is not None:
        parts.append(f"{event.concurrency_limit} session(s) at once")
    if event.time_limit is not None:
        parts.append(f"{event.time_limit:g} s per session")
    return " · ".join(parts)


def _document(title: str, body: str, head: str = "") -> str:
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{PAGE_CSS}</style>{head}</head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def stream_page(event: StreamEvent, gateway: GatewayAPI) -> str:
    markup, css, script = client_files()
    props = {"rtc": page_config(event, gateway), "value": None}
    body = (
        f"<h1>{html.escape(event.event_id)}</h1>"
        f'<p class="meta">{html.escape(_limits(event))} · <a href="ui">all streams</a></p>'
        f'<div id="{HOST_ID}">{markup}</div>'
        "<script>\n"
        # as gr.HTML runs js_on_load; there are no other components here, so nothing
        # listens to the client's events ("webrtc_args", "webrtc_outputs", "tick"), and no
        # server functions: the connection's configuration is the static one in props
        "(function (element, trigger, props, server) {\n"
        f"{script}\n"
        f"}})(document.getElementById({json.dumps(HOST_ID)}), function () {{}}, {_script_json(props)}, {{}});\n"
        "</script>"
    )
    return _document(f"rtcpool · {event.event_id}", body, head=f"<style>{css}</style>")


def index_page(gateway: GatewayAPI) -> str:
    rows = "".join(
        f'<tr><td><a href="ui?stream={quote(e.event_id, safe="")}">{html.escape(e.event_id)}</a></td>'
        f"<td>{html.escape(_limits(e))}</td></tr>"
        for e in gateway.events.values()
    )
    table = (
        f"<table><tr><th>stream</th><th>what</th></tr>{rows}</table>"
        if rows
        else "<p>This app has no stream events.</p>"
    )
    return _document("rtcpool streams", f"<h1>Streams</h1>{table}")


def mount_standalone(app: Any, gateway: GatewayAPI) -> None:
    """Add ``GET /webrtc/ui`` (index, or one stream's page with ``?stream=``) to ``app``.

    Behind the same check as the signalling routes (Host, Origin, gateway.auth): the page
    holds the ICE servers' configuration (TURN credentials) and the stream list. In the
    token modes the credential is the ``Authorization`` header, never a query parameter: a
    token in a URL stays in access logs, browser history and Referer headers. A browser
    navigating there sends none, so with tokens the page is reached through a proxy that
    adds the header (or the app's own page, which posts its offers with one); with auth
    ``none`` or a Gradio login (its cookie is sent) it opens as it is."""

    async def ui(request: Request, stream: str | None = None) -> Any:
        try:
            await gateway.check_access(request)
        except Refused as err:
            return error_response(err)
        if stream is None:
            return HTMLResponse(index_page(gateway))
        event = gateway.events.get(stream)
        if event is None:
            return error_response(Refused(ErrorCode.UNKNOWN_STREAM, f"no stream {stream!r} (GET /webrtc/streams)"))
        return HTMLResponse(stream_page(event, gateway))

    app.add_api_route(UI_PATH, ui, methods=["GET"], include_in_schema=False)
