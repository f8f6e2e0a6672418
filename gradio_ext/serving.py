"""How a Gradio app serves its WebRTC streams: one gateway per process, hooked into Gradio.

Every ``WebRTC.stream(...)`` of a process registers with the same :class:`Gateway` (an app
file may build several Blocks; one set of ``/webrtc/*`` routes serves all their streams).

Gradio has no extension point for "add routes to the app you are about to serve", and the
seed apps call ``demo.launch()`` with nothing of ours in between, so this module patches
Gradio, once, at ``gradio_ext`` import:

* ``gradio.routes.App.create_app`` -- every FastAPI app Gradio builds (``Blocks.__exit__``,
  ``queue()``, ``launch()``, ``gr.mount_gradio_app``) gets the gateway's routes at its root,
  and the gateway's sessions end with the app's lifespan. Mounting is cheap (four routes);
  starting the gateway (Ray, worker pools) is not, so building a Blocks never starts it.
* ``gradio.Blocks.launch`` -- starts the gateway (blocking: joins or starts Ray and
  registers every stream, so workers pre-warm while Gradio boots); and, while an app file is
  re-imported inside a worker to recover its handler, does nothing at all (the seed
  snippets call ``demo.launch()`` unguarded).
* ``gradio.blocks.postprocess_update_dict`` -- an event that updates a gr.HTML (our
  component is one), e.g. ``gr.update(visible=True)``, sends the page a ``props`` of the
  update's keys that are no gr.HTML parameter, which always includes its ``"__type__"``
  marker; the page then replaces the component's props with that and re-renders it without
  its ``rtc`` config (no stream). For components that carry ``rtc``, the update's props go on
  top of the component's own instead (Gradio 6.31; the hook changes nothing for others).

And one more, only while our component class is defined (:class:`NoStubComponentMeta`): Gradio's
component metaclass writes a ``.pyi`` beside the source of every Component subclass (for
its custom-component tooling). In a checkout that is an untracked file whose module-level
part never updates again; in site-packages, a write into the install.

An app mounted with ``gr.mount_gradio_app`` starts the gateway when it is mounted.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from gradio import component_meta

from runtime.config_loader import load_config
from runtime.front.gateway import Gateway
from runtime.stream import close_with_app
from workers.process.loader import in_worker_import

log = logging.getLogger("rtcpool.gradio")

_gateway: Gateway | None = None
_gateway_lock = threading.Lock()
_mounted: weakref.WeakSet[Any] = weakref.WeakSet()  # apps that already carry our routes
_installed = False


def get_gateway() -> Gateway:
    """The process-wide gateway, created (not started) on first use from the config."""
    global _gateway
    with _gateway_lock:
        if _gateway is None:
            _gateway = Gateway(load_config())
        return _gateway


def has_streams() -> bool:
    return _gateway is not None and bool(_gateway.events)


def _mount(app: Any, gateway: Gateway) -> None:
    if app in _mounted:
        return
    gateway.mount(app)
    _mounted.add(app)
    close_with_app(app, gateway)


class NoStubComponentMeta(component_meta.ComponentMeta):
    """Gradio's component metaclass, minus the .pyi it writes beside the class's source
    (``component_meta.create_or_modify_pyi``, checked against gradio 6.31.0;
    tests/test_patched_internals.py)."""

    def __new__(mcs, name: str, bases: tuple[type, ...], attrs: dict[str, Any]) -> Any:
        original = component_meta.create_or_modify_pyi
        component_meta.create_or_modify_pyi = lambda *args, **kwargs: None
        try:
            return super().__new__(mcs, name, bases, attrs)
        finally:
            component_meta.create_or_modify_pyi = original


def install() -> None:
    """Patch Gradio's app creation and launch. Idempotent.

    Wraps ``App.create_app``, ``Blocks.launch`` and ``gradio.blocks.postprocess_update_dict``
    (checked against gradio 6.31.0; tests/test_patched_internals.py)."""
    global _installed
    if _installed:
        return
    import gradio
    import gradio.blocks
    from gradio.routes import App

    original_create_app: Callable[..., Any] = App.create_app
    original_launch: Callable[..., Any] = gradio.Blocks.launch
    original_update: Callable[..., Any] = gradio.blocks.postprocess_update_dict

    def create_app(blocks: Any, *args: Any, **kwargs: Any) -> Any:
        app = original_create_app(blocks, *args, **kwargs)
        if has_streams():
            assert _gateway is not None
            if kwargs.get("parent_app") is not None:
                _gateway.start()  # gr.mount_gradio_app: no launch() will follow
            _mount(app, _gateway)
        return app

    def launch(self: Any, *args: Any, **kwargs: Any) -> Any:
        if in_worker_import():
            log.debug("launch() skipped: the app is being imported inside a worker")
            return None
        if has_streams():
            assert _gateway is not None
            _gateway.start()
        return original_launch(self, *args, **kwargs)

    def postprocess_update_dict(block: Any, update_dict: dict[str, Any], postprocess: bool = True) -> Any:
        update = original_update(block, update_dict, postprocess)
        own = getattr(block, "props", None)
        sent = update.get("props") if isinstance(update, dict) else None
        if isinstance(own, dict) and "rtc" in own and isinstance(sent, dict):
            extra = {k: v for k, v in sent.items() if k != "__type__"}
            update["props"] = {**own, **extra}  # block is Gradio's updated copy: its rtc is current
        return update

    App.create_app = staticmethod(create_app)  # type: ignore[method-assign]
    gradio.Blocks.launch = launch  # type: ignore[method-assign]
    gradio.blocks.postprocess_update_dict = postprocess_update_dict
    _installed = True
