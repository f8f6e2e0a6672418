"""The app the cluster tests serve with ``rtcpool serve`` (no Gradio): three stream events
with the same handler. Where their workers go is the config's business, not the app's:

* ``far`` -- the test config gives its pool ``resources: {far_node: 1}``;
* ``shared`` -- no resource of its own; ``concurrency_limit=2`` across every gateway;
* ``doomed`` -- ``resources: {doomed_node: 0.5}``, two workers on a node the node-loss test
  adds and kills (one in a session, one idle).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI

from runtime.config_loader import load_config
from runtime.front.gateway import Gateway


def invert(frame: np.ndarray) -> np.ndarray:
    return 255 - frame


config = load_config()  # the file, RTCPOOL_* variables, and `rtcpool serve` flags
gateway = Gateway(config)
gateway.add_stream(invert, event_id="far", concurrency_limit=1)
gateway.add_stream(invert, event_id="shared", concurrency_limit=2)
gateway.add_stream(invert, event_id="doomed", concurrency_limit=2)


@contextlib.asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    yield
    await gateway.aclose()  # sessions end and leases go back while the loop still runs


app = FastAPI(lifespan=lifespan)
gateway.mount(app)

if __name__ == "__main__":
    gateway.start()  # joins the cluster (ray.address), registers the streams
    uvicorn.run(
        app, host=config.gateway.host, port=config.gateway.port, loop="uvloop", log_level="warning"
    )
