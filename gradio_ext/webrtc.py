"""The ``WebRTC`` component: gradio_webrtc's constructor and ``.stream()`` on a ``gr.HTML``.

The browser side is ``static/webrtc.js`` (run as the component's ``js_on_load``): it opens
the peer connection and posts the offer to the gateway's ``/webrtc/offer`` route. Handlers
never run in this process; ``.stream()`` registers them with the process's gateway
(gradio_ext/serving.py), which runs each session in a worker.

How the stream's other inputs reach the worker: once connected, the page sets this
component's value to its ``webrtc_id`` and fires :data:`ARGS_EVENT`; that event (and the
``change`` of every other input) runs :func:`_args_pusher` with the id and the inputs'
current values, and the gateway forwards them to the session's worker. The page fires the
event again whenever the handler asks for its inputs (``send_input`` on the data channel).
"""

from __future__ import annotations

import html
import inspect
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import gradio as gr

from runtime.gateway import MODALITIES, MODES, HTTPError
from workers import loader

from .serving import NoStubComponentMeta, get_gateway

ARGS_EVENT = "webrtc_args"  # custom event the page fires when the inputs must reach the worker
OUTPUTS_EVENT = "webrtc_outputs"  # custom event the page fires once per AdditionalOutputs
JS_PATH = Path(__file__).resolve().parent / "static" / "webrtc.js"
DEFAULT_CONCURRENCY_LIMIT = 1  # what Gradio's concurrency_limit="default" means for an event
DEFAULT_MIN_WIDTH_PX = 160
DEFAULT_BUTTON_LABELS = {"start": "Start", "stop": "Stop", "waiting": "Connecting…"}
LOCAL_PREVIEW_WIDTH = "28%"  # the camera preview's width over the processed video

Mode = Literal["send-receive", "send", "receive"]
Modality = Literal["video", "audio", "audio-video"]


def _template_safe(text: str) -> str:
    """Escape text for gr.HTML's templates, which are Handlebars *and* JS template literals."""
    return (
        html.escape(text)
        .replace("$", "&#36;")
        .replace("`", "&#96;")
        .replace("\\", "&#92;")
        .replace("{", "&#123;")
        .replace("}", "&#125;")
    )


def _css_size(size: int | str | None) -> str | None:
    if size is None:
        return None
    return f"{size}px" if isinstance(size, (int, float)) else str(size)


class WebRTC(gr.HTML, metaclass=NoStubComponentMeta):
    """Live audio/video between the browser and a handler running in a worker process.

    Accepts gradio_webrtc's parameters. ``value``, ``min_length``, ``max_length``,
    ``streaming``, ``show_share_button`` and ``show_download_button`` are kept for
    compatibility and have no effect: the component's live value is its session id.
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
        rtc_configuration: dict[str, Any] | None = None,
        time_limit: float | None = None,
        track_constraints: dict[str, Any] | None = None,
        icon: str | None = None,
        icon_button_color: str | None = None,
        pulse_color: str | None = None,
        button_labels: dict[str, str] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        if rtc_configuration is not None and not isinstance(rtc_configuration, dict):
            raise TypeError("rtc_configuration must be a dict like {'iceServers': [...]} or None")
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
        self.stream_event: Any = None  # the gateway's StreamEvent once .stream() ran
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = None  # a (video, subtitles) default has nothing to show in a live stream
        super().__init__(
            value=value,
            label=label,
            html_template=self._html(),
            css_template=self._css(),
            js_on_load=JS_PATH.read_text(encoding="utf-8"),
            every=every,
            inputs=inputs,
            show_label=True if show_label is None else show_label,
            container=container,
            scale=scale,
            min_width=min_width,
            visible=visible,
            elem_id=elem_id,
            elem_classes=elem_classes,
            render=render,
            key=key,
            # everything the page needs, under one prop so it cannot collide with Gradio's
            rtc=self._client_config(None),
        )
        self.interactive = interactive

    # --- what the page gets ---------------------------------------------------------------

    def _client_config(self, stream_id: str | None) -> dict[str, Any]:
        return {
            "stream_id": stream_id,
            "mode": self.mode,
            "modality": self.modality,
            "ice_servers": (self.rtc_configuration or {}).get("iceServers", []),
            "time_limit": self.time_limit,
            "track_constraints": self.track_constraints,
            "mirror_webcam": self.mirror_webcam,
            "button_labels": self.button_labels,
        }

    def _html(self) -> str:
        start = _template_safe(self.button_labels["start"])
        return (
            f'<div class="rtc-root" data-state="idle" data-mode="{self.mode}" data-modality="{self.modality}">'
            '<div class="rtc-stage">'
            '<video class="rtc-remote" autoplay muted playsinline></video>'
            '<video class="rtc-local" autoplay muted playsinline></video>'
            '<audio class="rtc-audio" autoplay></audio>'
            "</div>"
            '<div class="rtc-timebar" hidden><div class="rtc-timebar-fill"></div></div>'
            '<div class="rtc-controls">'
            f'<button type="button" class="rtc-button">{start}</button>'
            '<span class="rtc-status" role="status">idle</span>'
            "</div>"
            '<ul class="rtc-messages" aria-live="polite"></ul>'
            "</div>"
        )

    def _css(self) -> str:
        height, width = _css_size(self.height), _css_size(self.width)
        stage = [
            "position: relative",
            "background: #111",
            "border-radius: var(--radius-lg, 8px)",
            "overflow: hidden",
        ]
        stage.append(f"height: {height}" if height else "aspect-ratio: 4 / 3")
        stage.append(f"width: {width}" if width else "width: 100%")
        receives_video = self.mode != "send" and self.modality != "audio"
        local = (
            f"position: absolute; right: 8px; bottom: 8px; width: {LOCAL_PREVIEW_WIDTH}; "
            "border: 2px solid #fff; border-radius: 6px; background: #000"
            if receives_video
            else "width: 100%; height: 100%; object-fit: contain"
        )
        # mirroring is for the user's own image only: the processed video is shown as sent
        mirror = "transform: scaleX(-1);" if self.mirror_webcam else ""
        button = (
            f"background: {self.icon_button_color}; color: #fff;" if self.icon_button_color else ""
        )
        return "\n".join(
            [
                ".rtc-root { display: flex; flex-direction: column; gap: 6px; }",
                f".rtc-stage {{ {'; '.join(stage)}; }}",
                ".rtc-remote { width: 100%; height: 100%; object-fit: contain; display: block; }",
                f".rtc-local {{ {local}; {mirror} }}",
                ".rtc-local:not(.live), .rtc-remote:not(.live) { visibility: hidden; }",
                ".rtc-timebar { height: 4px; background: var(--neutral-200, #ddd); border-radius: 2px; }",
                ".rtc-timebar-fill { height: 100%; width: 100%; background: var(--color-accent, #f97316); border-radius: 2px; }",
                ".rtc-controls { display: flex; align-items: center; gap: 10px; }",
                f".rtc-button {{ padding: 4px 14px; border-radius: 6px; border: 1px solid var(--border-color-primary, #ccc); cursor: pointer; {button} }}",
                ".rtc-status { font-size: 0.9em; opacity: 0.8; }",
                ".rtc-messages { margin: 0; padding: 0; list-style: none; font-size: 0.85em; }",
                ".rtc-messages .error { color: var(--error-text-color, #b91c1c); }",
                ".rtc-messages .warning { color: #b45309; }",
            ]
        )

    # --- the stream event -------------------------------------------------------------------

    def stream(
        self,
        fn: Callable[..., Any] | Any,
        inputs: Sequence[Any] | Any | None = None,
        outputs: Sequence[Any] | Any | None = None,
        time_limit: float | None = None,
        concurrency_limit: int | None | Literal["default"] = "default",
        trigger: Callable[..., Any] | None = None,
        stream_every: float | None = None,
        **ignored: Any,
    ) -> Any:
        """Run ``fn`` (a frame function, generator or StreamHandler) on this stream, one
        worker process per session.

        ``inputs[0]`` is this component (its value for ``fn`` is ``"__webrtc_value__"``);
        the others are passed to ``fn`` after the frame, live. ``stream_every`` has no
        effect: frames flow as fast as the handler takes them. ``trigger`` (e.g.
        ``button.click``, for ``mode="receive"``) starts the stream from the page, like the
        component's own start button.
        """
        if loader.in_worker_import():
            # the app file is being re-imported in a worker to recover this handler
            loader.register(fn)
            return None
        extra = self._extra_inputs(inputs)
        self._check_outputs(outputs)
        if self.stream_event is not None:
            raise ValueError(
                "this WebRTC component already has a stream; use one component per stream"
            )
        if concurrency_limit == "default":
            concurrency_limit = DEFAULT_CONCURRENCY_LIMIT
        gateway = get_gateway()
        # Gradio events first: if they cannot be wired (no Blocks context), nothing is registered
        push = _args_pusher(gateway)
        wiring = {
            "outputs": None,
            "queue": False,
            "show_progress": "hidden",
            "api_visibility": "private",
        }
        getattr(self, ARGS_EVENT)(push, inputs=[self, *extra], **wiring)
        for component in extra:
            change = getattr(component, "change", None)
            if change is not None:
                change(push, inputs=[self, *extra], **wiring)
        event = gateway.add_stream(
            fn,
            mode=self.mode,
            modality=self.modality,
            concurrency_limit=concurrency_limit,
            time_limit=time_limit if time_limit is not None else self.time_limit,
            initial_args=[c.value for c in extra],
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
                js=f"() => {{ const c = (window.__rtcpool || {{}})[{json.dumps(event.event_id)}]; if (c) c.start(); }}",
                queue=False,
                show_progress="hidden",
            )
        self.time_limit = event.time_limit  # a config override may have changed it
        self.props["rtc"] = self._client_config(event.event_id)
        return event

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
        ``fn(*outputs.args, *inputs)`` runs once per AdditionalOutputs, in order."""
        if loader.in_worker_import():
            return None
        extra = list(inputs) if isinstance(inputs, (list, tuple, set)) else ([inputs] if inputs is not None else [])
        gateway = get_gateway()

        async def fetch_additional_outputs(webrtc_id: Any, *values: Any) -> Any:
            got = gateway.next_output(webrtc_id) if isinstance(webrtc_id, str) and webrtc_id else None
            if got is None:
                return gr.skip()
            result = fn(*got, *values)
            return await result if inspect.isawaitable(result) else result

        return getattr(self, OUTPUTS_EVENT)(
            fetch_additional_outputs,
            inputs=[self, *extra],
            outputs=outputs,
            js=js,
            concurrency_limit=concurrency_limit,
            concurrency_id=concurrency_id,
            show_progress=show_progress,
            queue=queue,
            api_visibility="private",
        )

    def webrtc_stream(self, fn: Callable[..., Any] | Any, *args: Any, **kwargs: Any) -> Any:
        """gradio_webrtc 0.0.1's name for :meth:`stream`."""
        return self.stream(fn, *args, **kwargs)

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

    def _check_outputs(self, outputs: Sequence[Any] | Any | None) -> None:
        if outputs is None:
            return
        items = list(outputs) if isinstance(outputs, (list, tuple, set)) else [outputs]
        if any(c is not self for c in items):
            raise ValueError(
                "a stream's only output is its WebRTC component; update other components "
                "by yielding AdditionalOutputs"
            )

    def __repr__(self) -> str:
        stream = self.stream_event.event_id if self.stream_event is not None else None
        return f"WebRTC(mode={self.mode!r}, modality={self.modality!r}, stream={stream!r})"

    def api_info(self) -> dict[str, Any]:
        return {"type": "string", "description": "the session's webrtc_id"}


def _args_pusher(gateway: Any) -> Callable[..., Any]:
    # async, so it runs on the server's event loop, where the gateway's sessions live
    async def push_webrtc_args(webrtc_id: Any, *values: Any) -> None:
        if not isinstance(webrtc_id, str) or not webrtc_id:
            return  # not streaming (yet): the worker starts with the inputs' initial values
        try:
            gateway.set_args(webrtc_id, list(values))
        except HTTPError:
            pass  # the session ended (or never started) while the event was on its way

    return push_webrtc_args


__all__ = ["WebRTC", "ARGS_EVENT", "OUTPUTS_EVENT"]
