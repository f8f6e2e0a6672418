"""Gradio's ``launch()`` with the HTTP bounds ``rtcpool serve`` has (``gateway.http``).

Gradio builds its uvicorn server itself and passes uvicorn nothing but host, port and SSL
(gradio 6.31.0, ``gradio.http_server.start_server``): no header timeout, no connection
bound, 16 MiB WebSocket frames. :func:`install` wraps ``gradio.http_server.Server.__init__``
(a ``uvicorn.Server`` subclass, checked against :data:`GRADIO_VERSION_CHECKED`;
tests/test_patched_internals.py) to set the same uvicorn options on its config before
uvicorn reads them, for an app with rtcpool streams (an app without any keeps Gradio's
server as it is).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("rtcpool.gradio")

GRADIO_VERSION_CHECKED = "6.31.0"
_installed = False


def bound_config(config: Any, has_streams: Callable[[], bool], gateway_config: Callable[[], Any]) -> None:
    """Set ``gateway.http``'s uvicorn options on a ``uvicorn.Config`` not loaded yet."""
    if not has_streams():
        return
    from runtime.front.http_server import uvicorn_options

    cfg = gateway_config()
    for name, value in uvicorn_options(cfg.gateway.http, exempt_loopback=cfg.gateway.limits.exempt_loopback).items():
        setattr(config, name, value)


def install() -> None:
    """Wrap Gradio's uvicorn server. Idempotent."""
    global _installed
    if _installed:
        return
    import gradio.http_server

    from . import serving

    original: Callable[..., None] = gradio.http_server.Server.__init__

    def __init__(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
        bound_config(config, serving.has_streams, lambda: serving.get_gateway().config)
        original(self, config, *args, **kwargs)

    gradio.http_server.Server.__init__ = __init__  # type: ignore[method-assign]
    _installed = True
