"""This worker process's place in the cluster: its node (as Ray sees it) and its priority."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("rtcpool.worker")

WORKER_NICENESS = 15  # workers run behind the gateway (Ray's own default for its workers)


def pin_priority() -> None:
    """Keep workers below the gateway. The gateway is shared by every session: starved, it
    stalls all of them (measured: N=4 streams fell from ~58 to ~25 fps with workers at the
    gateway's priority), while a worker held back only slows its own session. Ray starts
    workers at nice 15; this makes that explicit so RAY_worker_niceness=0 cannot invert it.
    Raising niceness needs no privilege."""
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) < WORKER_NICENESS:
            os.setpriority(os.PRIO_PROCESS, 0, WORKER_NICENESS)
    except OSError:
        log.warning("could not lower this worker's priority below the gateway's")


def node_ip() -> str:
    """The address other nodes reach this one at (Ray's own view of it); loopback outside Ray."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except Exception:
        pass
    return "127.0.0.1"


def node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:
        pass
    return ""


__all__ = ["node_id", "node_ip", "pin_priority"]
