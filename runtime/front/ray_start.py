"""The front's Ray: join the configured cluster, or start an embedded one on this host.

The embedded Ray runs with its token auth off (nobody else takes part), so it must be
reachable from this host only. Ray binds its GCS, raylet, object manager, agents and every
core worker's gRPC server to "every interface" unless the node's address is loopback, and
``ray.init(_node_ip_address="127.0.0.1")`` alone does not get there: Ray swaps a loopback
address for the host's outward one (``services.resolve_ip_for_localhost``). Ray's own
one-host mode does: with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (its default on macOS and
Windows, "no cluster") the node's address is loopback, and every listener of the node binds
it (Ray 2.60 checked; tests/front/test_serve.py lists the listening sockets of an embedded
app's whole process tree; tests/test_patched_internals.py checks the switch is still there).
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from runtime.config import Config

RAY_AUTH_MODE_ENV = "RAY_AUTH_MODE"
# Ray's "no cluster, this host only" switch (ray/_private/ray_constants.py ENABLE_RAY_CLUSTER,
# read by services.get_node_ip_address at each call): "0" makes the node's address loopback.
RAY_ONE_HOST_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
RAY_ONE_HOST_CONSTANT = "ENABLE_RAY_CLUSTER"


class EmbeddedRayExposed(RuntimeError):
    """The embedded Ray came up on an address other hosts reach: refused, since its auth is off."""


def connect_ray(config: Config) -> str:
    """Connect to (or start) Ray unless this process already has; this node's id. Blocking."""
    import ray

    rc = config.ray
    if not ray.is_initialized():
        if rc.embedded:
            # a Ray of our own, on this host only: nobody else to keep out. A cluster
            # keeps Ray's token auth (docs/deployment.md gives gateways the token)
            os.environ.setdefault(RAY_AUTH_MODE_ENV, "disabled")
            keep_ray_on_loopback()
        # the embedded default passes address="local": Ray would otherwise join the
        # cluster RAY_ADDRESS or the latest `ray start` on this host names
        ray.init(**rc.init_kwargs(), log_to_driver=True)
        if rc.embedded:
            _check_loopback(ray)
    return str(ray.get_runtime_context().get_node_id())


def keep_ray_on_loopback() -> None:
    """Make the Ray this process starts next a one-host Ray whose listeners bind loopback.
    The environment variable reaches the processes Ray starts (raylet, agents, workers) and
    any Ray imported later; the module constant, a Ray already imported here."""
    os.environ[RAY_ONE_HOST_ENV] = "0"
    from ray._private import ray_constants

    if not hasattr(ray_constants, RAY_ONE_HOST_CONSTANT):  # moved by a Ray release: fail loudly
        raise EmbeddedRayExposed(
            f"ray {_ray_version()} has no ray_constants.{RAY_ONE_HOST_CONSTANT}: rtcpool cannot keep its "
            "embedded Ray on loopback (runtime/front/ray_start.py)"
        )
    setattr(ray_constants, RAY_ONE_HOST_CONSTANT, False)


def _check_loopback(ray: Any) -> None:
    """Fail closed: an embedded Ray (auth off) on an outward address must not serve."""
    address = ray.util.get_node_ip_address()
    if not is_loopback(address):
        ray.shutdown()
        raise EmbeddedRayExposed(
            f"the embedded Ray (auth off) came up on {address}, reachable from other hosts: refusing to "
            f"serve (ray {_ray_version()}; runtime/front/ray_start.py). Join a cluster with token auth instead"
        )


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback (a dual-stack socket's ::ffff:127.0.0.1)."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return address == "localhost"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _ray_version() -> str:
    import ray

    return str(getattr(ray, "__version__", "?"))
