"""The front's Ray: join the configured cluster, or start an embedded one on this host."""

from __future__ import annotations

import os

from runtime.config import Config

RAY_AUTH_MODE_ENV = "RAY_AUTH_MODE"


def connect_ray(config: Config) -> str:
    """Connect to (or start) Ray unless this process already has; this node's id. Blocking."""
    import ray

    rc = config.ray
    if not ray.is_initialized():
        if rc.embedded:
            # a Ray of our own, on this host only: nobody else to keep out. A cluster
            # keeps Ray's token auth (docs/deployment.md gives gateways the token)
            os.environ.setdefault(RAY_AUTH_MODE_ENV, "disabled")
        # the embedded default passes address="local": Ray would otherwise join the
        # cluster RAY_ADDRESS or the latest `ray start` on this host names
        ray.init(**rc.init_kwargs(), log_to_driver=True)
    return str(ray.get_runtime_context().get_node_id())
