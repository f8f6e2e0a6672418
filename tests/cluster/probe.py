"""A Ray driver that answers each line on stdin with one line ``PROBE <json>``: the
deployment as ``rtcpool status --json`` sees it (nodes, workers per node, slots per stream).
The prefix sets the answers apart from what Ray itself prints (a node marked dead, ...).

    python -m tests.cluster.probe 127.0.0.1:6379 NAMESPACE

The cluster tests run it because the pytest process is a driver of its own Ray already.
End of input ends it.
"""

from __future__ import annotations

import json
import logging
import os
import sys

import ray

from runtime import constants as C
from runtime.cli import collect_status

PREFIX = "PROBE "  # tests/cluster/cluster.py reads only lines that start with it


def main(address: str, namespace: str) -> None:
    """``namespace``: the deployment's ray.namespace, where its scheduler is."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        address=address,
        namespace=namespace,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    for _ in sys.stdin:
        try:
            scheduler = ray.get_actor(C.SCHEDULER_NAME, namespace=namespace)
            status = ray.get(scheduler.status.remote(), timeout=C.RAY_CALL_TIMEOUT_S)
        except ValueError:  # no scheduler yet: no gateway has started
            status = None
        print(PREFIX + json.dumps(collect_status(status, ray.nodes())), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else C.RAY_NAMESPACE)
