"""What the scheduler asks Ray's autoscaler for: the workers its waiting lines need.

While any stream's line has someone in it, the request (``ray.autoscaler.sdk.request_resources``)
names one worker bundle per slot the stream would fill, so a cluster that autoscales adds
the nodes for them; when every line is empty it is withdrawn. Without an autoscaler the
request is a record in Ray's GCS that nothing acts on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from runtime.control.pools import PoolSpec

log = logging.getLogger("rtcpool.scheduler")

DEFAULT_WORKER_CPUS = 1.0  # what Ray holds for an actor with no num_cpus while it places it

Bundle = dict[str, float]


def worker_bundle(spec: PoolSpec) -> Bundle:
    """The resources one worker of a pool holds, as an autoscaler bundle (an actor with no
    num_cpus holds 1 CPU while Ray places it)."""
    bundle: Bundle = {"CPU": float(spec.num_cpus if spec.num_cpus is not None else DEFAULT_WORKER_CPUS)}
    if spec.num_gpus:
        bundle["GPU"] = float(spec.num_gpus)
    if spec.memory:
        bundle["memory"] = float(spec.memory)
    bundle.update({k: float(v) for k, v in spec.resources.items() if v > 0})
    return bundle


class Autoscale:
    """The request in force, and how often it was changed."""

    def __init__(self) -> None:
        self.request: list[Bundle] = []  # what was last asked for ([] = nothing)
        self.calls = 0

    async def want(self, wanted_by_pool: Iterable[tuple[PoolSpec, int]]) -> None:
        """Ask for ``count`` workers of each pool spec, when that changed (a GCS write)."""
        wanted: list[Bundle] = []
        for spec, count in wanted_by_pool:
            wanted += [worker_bundle(spec)] * count
        if wanted == self.request:
            return
        from ray.autoscaler.sdk import request_resources

        try:
            await asyncio.to_thread(request_resources, bundles=wanted)
        except Exception as exc:  # no autoscaler reachable: the lines work regardless
            log.warning("asking Ray's autoscaler for %d worker(s) failed: %s", len(wanted), exc)
            return
        if wanted:
            log.info("asked Ray's autoscaler for %d worker(s) for the queued streams", len(wanted))
        else:
            log.info("the queues are empty: the autoscaler request is withdrawn")
        self.request = wanted
        self.calls += 1
