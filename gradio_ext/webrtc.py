"""The ``WebRTC`` component: gradio_webrtc's constructor and ``.stream()`` on a ``gr.HTML``.

The browser side is ``static/``: ``webrtc.html`` (the markup, gr.HTML's template),
``webrtc.css`` and ``webrtc.js`` (run as the component's ``js_on_load``), which opens the peer
connection and posts the offer to the gateway's ``/webrtc/offer`` route. All three are static
and every per-component option reaches the page in the ``rtc`` prop, so the gateway's own
page (runtime/front/standalone.py, for apps without Gradio) serves the very same client. Handlers
never run in this process; ``.stream()`` registers them with the process's gateway
(gradio_ext/serving.py), which runs each session in a worker.

How the stream's other inputs reach the worker: once connected, the page sets this
component's value to its ``webrtc_id`` and fires :data:`ARGS_EVENT`; that event (and the
``change`` of every other input) runs :func:`args_pusher` with the id and the inputs'
current values, and the gateway forwards them to the session's worker. The page fires the
event again whenever the handler asks for its inputs (``send_input`` on the data channel).

How results reach other components: each ``fetch_output`` on the data channel makes the page
fire :data:`OUTPUTS_EVENT` once. Two kinds of listeners take from the session's queues on
that event: ``on_additional_outputs`` (the AdditionalOutputs a handler yields) and, wired by
``.stream()`` itself, the stream's own non-WebRTC ``outputs`` (what a plain function returns
for them, as in a Gradio event). Each takes the oldest of its own kind, so neither steals
the other's and none is lost. The page fires the event for the next ``fetch_output`` only
once every listener of the last one has finished (each listener is followed by a browser-only
``.then`` that tells the page, :data:`OUTPUTS_DONE_JS`): concurrent fetches could complete
out of order and leave an older value on screen, and a listener whose ``inputs`` include
its own outputs (a Chatbot it appends to) must see the previous result applied.

How the browser's peer connection is configured: ``rtc_configuration`` as a dict goes to the
page as it is; as a callable (sync or async) it is called once per connection, by the
component's server function :meth:`WebRTC.webrtc_configuration`, which the page awaits before
each ``new RTCPeerConnection`` (short-lived TURN credentials stay fresh). None: the
deployment config's ``gateway.ice_servers``.
"""

from __future__ import annotations

import base64
import inspect
import json
import logging
import mimetypes
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread
import gradio as gr
from gradio.components.base import server
from starlette.requests import Request as StarletteRequest

from runtime.errors import Refused
from runtime.front.statuses import http_headers, http_status
from runtime.front.streams import check_stream_options
from workers.link.shape import StreamShape
from workers.process import loader
from workers.process.loader import StreamOutputs

from .events import (
    additional_outputs_fetcher,
    args_pusher,
    initial_value,
    stream_id_of,
    stream_outputs_fetcher,
)
from .serving import NoStubComponentMeta, get_gateway

log = logging.getLogger("rtcpool.gradio")

ARGS_EVENT = "webrtc_args"  # custom event the page fires when the inputs must reach the worker
OUTPUTS_EVENT = "webrtc_outputs"  # custom event the page fires once per fetch_output message
STATIC_DIR = Path(__file__).resolve().parent / "static"
JS_PATH = STATIC_DIR / "webrtc.js"
HTML_PATH = STATIC_DIR / "webrtc.html"
CSS_PATH = STATIC_DIR / "webrtc.css"
MAX_ICON_BYTES = 256 * 1024  # a local icon file is inlined in the page as a data: URL
DEFAULT_CONCURRENCY_LIMIT = 1  # what Gradio's concurrency_limit="default" means for an event
DEFAULT_MIN_WIDTH_PX = 160
DEFAULT_BUTTON_LABELS = {"start": "Start", "stop": "Stop", "waiting": "Connecting…"}
URL_SCHEMES = ("http://", "https://", "data:", "blob:")
# Runs in the browser after every listener of OUTPUTS_EVENT (as its ``.then``), with this
# component's value (the session's webrtc_id): the page fires the next fetch only then.
OUTPUTS_DONE_JS = (
    "(id) => { const r = window.__rtcpool; if (r && r.outputsDone) r.outputsDone(id); return []; }"
)
# Gradio's event keywords that ``.stream()`` accepts with no effect (its docstring says why),
# besides those it takes as parameters; anything else is a TypeError naming it.
STREAM_EVENT_KEYWORDS = frozenset(
    {
        "api_description",
        "api_visibility",
        "show_progress_on",
        "scroll_to_output",
        "trigger_mode",
        "batch",
        "max_batch_size",
        "preprocess",
        "postprocess",
        "cancels",
        "every",
        "key",
        "validator",
        "show_api",
    }
)

Mode = Literal["send-receive", "send", "receive"]
Modality = Literal["video", "audio", "audio-video"]


def _css_size(size: int | str | None) -> str | None:
    if size is None:
        return None
    return f"{size}px" if isinstance(size, (int, float)) else str(size)


def _icon_src(icon: str | Path | None) -> str | None:
    """What the page's <img> loads: a URL as given; a local image file inlined as a data: URL
    (the page has no route to the app's files, and the standalone page has no Gradio)."""
    if icon is None:
        return None
    text = str(icon)
    if text.startswith(URL_SCHEMES):
        return text
    path = Path(text).expanduser()
    if not path.is_file():
        # a path relative to the app's root URL (e.g. one Gradio serves); the page's <img>
        # hides itself if it does not load
        return text
    data = path.read_bytes()
    if len(data) > MAX_ICON_BYTES:
        raise ValueError(
            f"icon {text!r} is {len(data)} bytes; at most {MAX_ICON_BYTES} are inlined"
        )
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if not mime.startswith("image/"):
        raise ValueError(f"icon {text!r} is not an image ({mime})")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class WebRTC(gr.HTML, metaclass=NoStubComponentMeta):
    """Live audio/video between the browser and a handler running in a worker process.

    Accepts every parameter of gradio_webrtc's ``WebRTC``. What each does here:

    * ``mode``, ``modality``: what flows which way. ``modality="audio"`` shows a compact
      panel with a level meter instead of a video area; ``"audio-video"`` shows both.
    * ``height``, ``width``: the video area's size (pixels, or any CSS size); ``width`` also
      sizes the audio panel.
    * ``mirror_webcam``: mirror the user's own camera preview (never the processed video).
    * ``time_limit``: seconds per session, enforced by the server, shown as a shrinking bar.
    * ``rtc_configuration``: the browser's ``RTCPeerConnection`` configuration, whole
      (``iceServers``, ``iceTransportPolicy``, ...). A dict, or a callable (sync or async)
      returning one, called once per connection (each Start). None: the deployment
      config's ``gateway.ice_servers``.
    * ``track_constraints``: getUserMedia constraints, ``{"video": ..., "audio": ...}`` or
      those of the one track; a camera/microphone picked in the page's lists is added.
    * ``button_labels``: ``{"start", "stop", "waiting"}`` texts of the button.
    * ``icon``: an image (URL, or a local file, inlined) on the button when
      ``modality="audio"``; ``icon_button_color``: the button's background;
      ``pulse_color``: the audio level meter's colour.
    * ``show_download_button=True``: a button over the processed video that saves the
      frame on screen as a PNG (only where video is received).
    * ``interactive=False``: no start/stop button; the stream starts from ``trigger=``.
    * ``label``, ``show_label``, ``container``, ``scale``, ``min_width``, ``visible``,
      ``elem_id``, ``elem_classes``, ``render``, ``key``: as for any Gradio component.

    Accepted for compatibility, with no effect, because a live stream has nothing for them
    to act on:

    * ``value`` (and ``every``/``inputs``, which only recompute a callable ``value``): a
      default video file to show; the live component has none, and its value is the
      session's id, set by the page.
    * ``min_length``, ``max_length``: limits on the length of a recorded clip; nothing is
      recorded (``time_limit`` bounds a live session).
    * ``streaming``: gradio_webrtc's switch for assembling yielded ``.ts`` chunks into an
      output video; output here is always live over WebRTC.
    * ``show_share_button``: shares an output *file* to Hugging Face Spaces discussions
      through Gradio's own media components; a live stream has no file to share (the
      download button saves a frame instead).
    """

    def __init__(
        self,
        value: str | Path | tuple[str | Path, str | Path | None] | Callable[..., Any] | None = None,
        height: int | str | None = None,
        width: int | str | None = None,
        label: str | None = None,
        every: Any = None,
        inputs: Any = None,
        show_label: bool | None = None,
        container: bool = True,
        scale: int | None = None,
        min_width: int = DEFAULT_MIN_WIDTH_PX,
        interactive: bool | None = None,
        visible: bool = True,
        elem_id: str | None = None,
        elem_classes: list[str] | str | None = None,
        render: bool = True,
        key: int | str | None = None,
        mirror_webcam: bool = True,
        show_share_button: bool | None = None,
        show_download_button: bool | None = None,
        min_length: int | None = None,
        max_length: int | None = None,
        streaming: bool = False,
        *,
        mode: Mode = "send-receive",
        modality: Modality = "video",
        rtc_configuration: dict[str, Any] | Callable[[], Any] | None = None,
        time_limit: float | None = None,
        track_constraints: dict[str, Any] | None = None,
        icon: str | Path | None = None,
        icon_button_color: str | None = None,
        pulse_color: str | None = None,
        button_labels: dict[str, str] | None = None,
        _stream: dict[str, Any] | None = None,
    ) -> None:
        StreamShape.parse(mode, modality)  # a ValueError naming the accepted values
        if rtc_configuration is not None and not (
            isinstance(rtc_configuration, dict) or callable(rtc_configuration)
        ):
            raise TypeError(
                "rtc_configuration must be a dict like {'iceServers': [...]}, a function "
                f"(sync or async) returning one, or None; got {type(rtc_configuration).__name__}"
            )
        self.mode = mode
        self.modality = modality
        self.rtc_configuration = rtc_configuration
        self.time_limit = time_limit
        self.track_constraints = track_constraints
        self.mirror_webcam = mirror_webcam
        self.height = height
        self.width = width
        self.icon = icon
        self.icon_button_color = icon_button_color
        self.pulse_color = pulse_color
        self.button_labels = {**DEFAULT_BUTTON_LABELS, **(button_labels or {})}
        self.show_share_button = show_share_button
        self.show_download_button = show_download_button
        self.min_length = min_length
        self.max_length = max_length
        self.streaming = streaming
        self.icon_src = _icon_src(icon)
        self.display_only = interactive is False  # Gradio's own ``interactive`` is set below
        self.stream_event: Any = None  # the gateway's StreamEvent once .stream() ran
        # What the page needs of the stream once .stream() ran (see _remember_stream). Gradio
        # re-creates a component from its constructor arguments when an event updates it
        # (gr.update(visible=...)) and re-renders it with the copy's props: ``_stream``
        # carries these into that copy, or the re-rendered page would have no stream.
        stream = _stream or {}
        self.stream_id: str | None = stream.get("stream_id")
        # ICE servers when rtc_configuration is None: the deployment's
        self.default_ice_servers: list[dict[str, Any]] = stream.get("default_ice_servers", [])
        # listeners of OUTPUTS_EVENT: the page waits for this many ".then"s per fetch
        self.output_listeners: int = stream.get("output_listeners", 0)
        if "time_limit" in stream:
            self.time_limit = stream["time_limit"]  # the stream's, maybe a config override
        # ``value`` is accepted and dropped (see the class docstring): the page sets the
        # component's value to its session id, and a default video has nothing to show
        super().__init__(
            value=None,
            label=label,
            html_template=self._html(),
            css_template=self._css(),
            js_on_load=JS_PATH.read_text(encoding="utf-8"),
            every=every,
            inputs=inputs,
            # no label, no badge (Gradio would show an empty one)
            show_label=(label is not None) if show_label is None else show_label,
            container=container,
            scale=scale,
            min_width=min_width,
            visible=visible,
            elem_id=elem_id,
            elem_classes=elem_classes,
            render=render,
            key=key,
            # everything the page needs, under one prop so it cannot collide with Gradio's
            rtc=self._client_config(self.stream_id),
        )
        self.interactive = interactive

    # --- what the page gets ---------------------------------------------------------------

    def _client_config(self, stream_id: str | None) -> dict[str, Any]:
        per_connection = callable(self.rtc_configuration)
        if per_connection:
            static = None  # the page asks webrtc_configuration() at each Start
        elif self.rtc_configuration is not None:
            static = self.rtc_configuration
        else:
            static = {"iceServers": self.default_ice_servers}
        return {
            "stream_id": stream_id,
            "mode": self.mode,
            "modality": self.modality,
            "rtc_configuration": static,
            "rtc_configuration_per_connection": per_connection,
            "output_listeners": self.output_listeners,
            "time_limit": self.time_limit,
            "track_constraints": self.track_constraints,
            "mirror_webcam": self.mirror_webcam,
            "button_labels": self.button_labels,
            "height": _css_size(self.height),
            "width": _css_size(self.width),
            "icon": self.icon_src,
            "icon_button_color": self.icon_button_color,
            "pulse_color": self.pulse_color,
            "show_download_button": bool(self.show_download_button),
            "interactive": not self.display_only,
        }

    def _html(self) -> str:
        # static: gr.HTML renders its template through Handlebars and a JS template
        # literal, so nothing the app author wrote goes in; the page reads it all from ``rtc``
        return HTML_PATH.read_text(encoding="utf-8")

    def _css(self) -> str:
        # static for the same reason; per-component sizes and colours are CSS variables
        # that the page sets from ``rtc``
        return CSS_PATH.read_text(encoding="utf-8")

    @server
    async def webrtc_configuration(self, _args: Any = None, request: gr.Request | None = None) -> dict[str, Any]:
        """The ``RTCPeerConnection`` configuration for one connection (a gr.HTML server
        function: the page awaits it before each ``new RTCPeerConnection`` when
        ``rtc_configuration`` is a callable). A sync callable runs on a worker thread, as
        Gradio runs a sync event function: it may block on a credentials service.

        It hands out TURN credentials, so it is behind the signalling routes' own check
        (Host, Origin, ``gateway.auth``; the Gradio login of an app launched with ``auth=``,
        which Gradio's ``/component_server`` checks too): Gradio passes the HTTP ``request``
        (it fills a parameter annotated ``gr.Request``, here with the starlette request itself); a refusal is the routes' status and
        JSON reason. Called from Python (no request), nothing is checked."""
        if request is not None:
            # /component_server hands in the HTTP request itself; an event, Gradio's wrapper
            http = request if isinstance(request, StarletteRequest) else request.request
            if http is not None:
                await self._check_access(http)
        config = self.rtc_configuration
        if callable(config):
            if inspect.iscoroutinefunction(config):
                config = await config()
            else:
                config = await anyio.to_thread.run_sync(config)
                if inspect.isawaitable(config):  # an object whose __call__ is async
                    config = await config
        elif config is None:
            config = {"iceServers": self.default_ice_servers}
        if not isinstance(config, dict):
            raise TypeError(
                f"rtc_configuration() must return a dict like {{'iceServers': [...]}}, "
                f"got {type(config).__name__}"
            )
        return config

    @staticmethod
    async def _check_access(http_request: Any) -> None:
        from fastapi import HTTPException

        try:
            await get_gateway().check_access(http_request)
        except Refused as err:
            # Gradio answers an HTTPException as {"detail": ...} with its status
            raise HTTPException(http_status(err), detail=err.body(), headers=http_headers(err) or None) from None

    # --- the stream event -------------------------------------------------------------------

    # fastrtc's signature (the seeds call it so), not Gradio's: a WebRTC stream is no Gradio event
    def stream(  # type: ignore[override]
        self,
        fn: Callable[..., Any] | Any,
        inputs: Sequence[Any] | Any | None = None,
        outputs: Sequence[Any] | Any | None = None,
        *,
        time_limit: float | None = None,
        concurrency_limit: int | None | Literal["default"] = "default",
        trigger: Callable[..., Any] | None = None,
        stream_every: float | None = None,
        js: str | None = None,
        api_name: str | Literal[False] | None = None,
        concurrency_id: str | None = None,
        show_progress: Literal["full", "minimal", "hidden"] = "hidden",
        queue: bool = True,
        max_queue: int | None = None,
        **event_options: Any,
    ) -> Any:
        """Run ``fn`` (a frame function, generator or StreamHandler) on this stream, one
        worker process per session.

        ``inputs[0]`` is this component (its value for ``fn`` is ``"__webrtc_value__"``);
        the others are passed to ``fn`` after the frame, live.

        ``outputs``: a function's result is mapped onto them in order, as in a Gradio event
        (one output: the whole result). This component's position gets the media; the other
        components get their values on the page. An output that is also an input (a
        ``gr.State``, a transcript) is fed back inside the worker: the next call gets the
        returned value without a round trip through the browser, and once the function has
        returned a value for it, a value the page sends can no longer replace it (it could
        only be an older one). A StreamHandler's only output is this component: it updates
        others by yielding AdditionalOutputs.

        ``stream_every`` (seconds), as in Gradio's streaming inputs: a plain function takes
        input at most this often -- the newest video frame once per period (the processed
        video holds the last result in between), or audio in chunks of exactly this length.
        None: every frame the function keeps up with, audio as it arrives. A StreamHandler
        gets every frame regardless: its ``receive()`` is its input and it decides when to act.

        ``trigger`` (e.g. ``button.click``, for ``mode="receive"``) starts the stream from
        the page, like the component's own start button.

        Gradio's event keywords, as gradio_webrtc takes them:

        * ``api_name`` (else ``concurrency_id``) names the stream event: its ``stream_id``
          in ``POST /webrtc/offer``, ``GET /webrtc/streams`` and the deployment config's
          ``streams.<id>``. Unnamed streams are ``stream-0``, ``stream-1``, ... in the order
          the app registers them. (A stream is no Gradio API endpoint, and its sessions are
          limited by rtcpool's scheduler, not by Gradio's queue: those meanings of the two
          keywords have nothing to act on.)
        * ``js`` runs in the browser on the stream's input values before they go to the
          worker (it is the ``js`` of the events that send them), and returns the values
          to send.
        * ``show_progress``: the progress shown on the stream's other outputs while the page
          fetches their values (default ``"hidden"``).
        * ``queue`` (default True, as in Gradio): Start on a full stream puts the user in its
          line (one line for the whole deployment, kept by the scheduler), shown in the
          component as Gradio shows its queue (``queue: 2/4 | 3.1/40.0s``), and the stream
          starts by itself at the user's turn; ``queue=False``: "server full" with a retry
          time (HTTP 429). ``max_queue`` bounds the line, like ``Blocks.queue(max_size=)``
          (None: the config's ``queue.max_size``).
        * Accepted with no effect, because the media path has no Gradio event for them:
          ``trigger_mode``, ``batch``, ``max_batch_size``, ``preprocess``,
          ``postprocess``, ``cancels``, ``every``, ``scroll_to_output``,
          ``show_progress_on``, ``api_description``, ``api_visibility``, ``show_api``,
          ``key``, ``validator``. Any other keyword is a TypeError.
        """
        unknown = sorted(set(event_options) - STREAM_EVENT_KEYWORDS)
        if unknown:
            raise TypeError(f"WebRTC.stream() got unexpected keyword argument(s): {', '.join(unknown)}")
        event_id = stream_id_of(api_name, concurrency_id)
        if loader.in_worker_import():
            # the app file is being re-imported in a worker to recover this handler
            loader.register(fn)
            return None
        extra = self._extra_inputs(inputs)
        layout, others = self._check_outputs(outputs, extra)
        check_stream_options(fn, stream_every, layout)
        if self.stream_event is not None:
            raise ValueError(
                "this WebRTC component already has a stream; use one component per stream"
            )
        if concurrency_limit == "default":
            concurrency_limit = DEFAULT_CONCURRENCY_LIMIT
        gateway = get_gateway()
        if event_id is not None and event_id in gateway.events:
            raise ValueError(
                f"a stream named {event_id!r} (api_name/concurrency_id) is already registered; "
                "each stream needs its own name"
            )
        # Gradio events first: if they cannot be wired (no Blocks context), nothing is registered
        push = args_pusher(gateway)
        wiring = {
            "outputs": None,
            "queue": False,
            "show_progress": "hidden",
            "api_visibility": "private",
            "js": js,
        }
        getattr(self, ARGS_EVENT)(push, inputs=[self, *extra], **wiring)
        fed_back = [extra[pos] for pos in layout.feedback.values()]
        for component in extra:
            if any(component is c for c in fed_back):
                # its changes while streaming are the stream's own outputs arriving: pushing
                # them back would only echo (the worker already has the value, or a newer one)
                continue
            change = getattr(component, "change", None)
            if change is not None:
                change(push, inputs=[self, *extra], **wiring)
        if others:
            self._listen_for_outputs(
                stream_outputs_fetcher(gateway, len(others)),
                inputs=[self],
                outputs=others,
                queue=False,  # a quick UI update, like the seeds' on_additional_outputs
                show_progress=show_progress,
            )
        event = gateway.add_stream(
            fn,
            event_id=event_id,
            mode=self.mode,
            modality=self.modality,
            concurrency_limit=concurrency_limit,
            time_limit=time_limit if time_limit is not None else self.time_limit,
            initial_args=[initial_value(c) for c in extra],
            stream_every=stream_every,
            outputs=layout,
            queue=queue,
            max_queue=max_queue,
        )
        self.stream_event = event
        self.stream_trigger = trigger
        if trigger is not None:
            # the trigger starts this component's stream in the page (no server round trip);
            # the page then sends the inputs' current values to the new session
            trigger(
                None,
                None,
                None,
                js=f"() => {{ const r = window.__rtcpool; const c = r && r.streams[{json.dumps(event.event_id)}]; if (c) c.start(); }}",
                queue=False,
                show_progress="hidden",
            )
        self.time_limit = event.time_limit  # a config override may have changed it
        self.stream_id = event.event_id
        self.default_ice_servers = [
            s.model_dump(exclude_none=True) for s in gateway.config.gateway.ice_servers
        ]
        self._remember_stream()
        return event

    def _remember_stream(self) -> None:
        """Update the page's config, and the constructor arguments Gradio re-creates this
        component from (see ``_stream`` in __init__), with what the stream set."""
        self.props["rtc"] = self._client_config(self.stream_id)
        if self._constructor_args:
            self._constructor_args[0]["_stream"] = {
                "stream_id": self.stream_id,
                "time_limit": self.time_limit,
                "default_ice_servers": self.default_ice_servers,
                "output_listeners": self.output_listeners,
            }

    def _listen_for_outputs(self, fn: Callable[..., Any], **options: Any) -> Any:
        """Listen to OUTPUTS_EVENT with ``fn``, followed by the browser-only ``.then`` that
        tells the page this listener is done (the page fires the next fetch only when all
        are). ``trigger_mode="multiple"``: a fetch is never dropped for an earlier one still
        running (Gradio's default, "once", would skip it and leave its outputs queued)."""
        dep = getattr(self, OUTPUTS_EVENT)(
            fn, trigger_mode="multiple", api_visibility="private", **options
        )
        dep.then(
            None,
            inputs=[self],
            outputs=None,
            js=OUTPUTS_DONE_JS,
            queue=False,
            show_progress="hidden",
            api_visibility="private",
        )
        self.output_listeners += 1
        self._remember_stream()
        return dep

    def on_additional_outputs(
        self,
        fn: Callable[..., Any],
        inputs: Sequence[Any] | Any | None = None,
        outputs: Sequence[Any] | Any | None = None,
        js: str | None = None,
        concurrency_limit: int | None | Literal["default"] = "default",
        concurrency_id: str | None = None,
        show_progress: Literal["full", "minimal", "hidden"] = "full",
        queue: bool = True,
    ) -> Any:
        """Update other components with what the handler yields as ``AdditionalOutputs``:
        ``fn(*inputs, *additional_outputs.args)`` (the inputs' current values first, as in
        gradio_webrtc and fastrtc) runs once per AdditionalOutputs, in order, each after the
        last one's result is on the page. A sync ``fn`` runs on a worker thread, as Gradio
        runs sync event functions; an async one on the server's event loop."""
        if loader.in_worker_import():
            return None
        extra = list(inputs) if isinstance(inputs, (list, tuple, set)) else ([inputs] if inputs is not None else [])
        return self._listen_for_outputs(
            additional_outputs_fetcher(get_gateway(), fn),
            inputs=[self, *extra],
            outputs=outputs,
            js=js,
            concurrency_limit=concurrency_limit,
            concurrency_id=concurrency_id,
            show_progress=show_progress,
            queue=queue,
        )

    def webrtc_stream(
        self,
        fn: Callable[..., Any] | Any,
        inputs: Sequence[Any] | Any | None = None,
        js: str | None = None,
        concurrency_limit: int | None | Literal["default"] = "default",
        concurrency_id: str | None = None,
        stream_every: float | None = None,
        time_limit: float | None = None,
        **event_options: Any,
    ) -> Any:
        """gradio_webrtc 0.0.1's name for :meth:`stream`, in its parameter order: it had no
        ``outputs``, the processed video goes to this component."""
        return self.stream(
            fn,
            inputs,
            [self],
            js=js,
            concurrency_limit=concurrency_limit,
            concurrency_id=concurrency_id,
            stream_every=stream_every,
            time_limit=time_limit,
            **event_options,
        )

    def _extra_inputs(self, inputs: Sequence[Any] | Any | None) -> list[Any]:
        if inputs is None:
            return []
        items = list(inputs) if isinstance(inputs, (list, tuple, set)) else [inputs]
        # the seeds put this component first; a receive-only stream may leave it out
        rest = items[1:] if items and items[0] is self else items
        if any(c is self for c in rest):
            raise ValueError("the WebRTC component may only be the first of a stream's inputs")
        for c in rest:
            if not isinstance(c, gr.components.Component):
                raise TypeError(f"stream inputs must be Gradio components, got {type(c).__name__}")
        return rest

    def _check_outputs(
        self, outputs: Sequence[Any] | Any | None, extra: list[Any]
    ) -> tuple[StreamOutputs, list[Any]]:
        """How a result maps onto ``outputs``, and the components other than this one."""
        if outputs is None:
            items: list[Any] = []
        else:
            items = list(outputs) if isinstance(outputs, (list, tuple, set)) else [outputs]
        if not items:
            return StreamOutputs(), []
        for c in items:
            if not isinstance(c, gr.components.Component):
                raise TypeError(f"stream outputs must be Gradio components, got {type(c).__name__}")
            if isinstance(c, WebRTC) and c is not self:
                raise ValueError(
                    "a stream's media goes to its own WebRTC component, not another one"
                )
        if sum(c is self for c in items) > 1:
            raise ValueError("the WebRTC component may be only one of a stream's outputs")
        media = next((i for i, c in enumerate(items) if c is self), None)
        feedback = {i: j for i, c in enumerate(items) for j, e in enumerate(extra) if c is e}
        return StreamOutputs(len(items), media, feedback), [c for c in items if c is not self]

    def __repr__(self) -> str:
        stream = self.stream_event.event_id if self.stream_event is not None else None
        return f"WebRTC(mode={self.mode!r}, modality={self.modality!r}, stream={stream!r})"

    def api_info(self) -> dict[str, Any]:
        return {"type": "string", "description": "the session's webrtc_id"}


__all__ = ["WebRTC", "ARGS_EVENT", "OUTPUTS_EVENT", "OUTPUTS_DONE_JS"]
