"""Fixtures of the cluster tests: one two-node Ray cluster per module (head + a node that
offers ``far_node``), two gateway processes joined to it sharing one scheduler, and a probe.

Everything is torn down on every path, by process tree, never by ``ray stop``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.cluster import GatewayProcess, LocalCluster, Probe, gateways

NODE_CPUS = 1  # each node declares one CPU: the machine has two, and a node per core is plenty
FAR_RESOURCE = "far_node"
# not the default: the gateways, `rtcpool status` and the probe must all take it from the
# config (two apps on one cluster keep a scheduler each)
NAMESPACE = "rtcpool-cluster-test"
DOOMED_RESOURCE = "doomed_node"

# The deployment config the gateways serve with; `rtcpool serve` adds --address, --port and
# --ice-host-address. The scheduler is detached: it outlives whichever gateway created it.
# The doomed stream's two workers are requested before their node exists. Test-found: Ray
# 2.60 places such waiting actors once, when the node joins, and an actor with Ray's default
# CPU (1 to be placed, 0 to run) that does not fit at that moment waits forever; workers
# that hold half of the node's one CPU each both fit at once.
CLUSTER_CONFIG = f"""\
ray:
  namespace: {NAMESPACE}
  detached_scheduler: true
gateway:
  host: 127.0.0.1
  transport: auto
  limits:  # every peer of these tests is on loopback (as in configs/local.yaml)
    exempt_loopback: true
    allow_loopback_candidates: true
pool:
  prewarm: 1
streams:
  far:
    pool:
      resources: {{{FAR_RESOURCE}: 1}}
  shared:
    pool:
      prewarm: 2
  doomed:
    pool:
      prewarm: 2
      num_cpus: 0.5
      resources: {{{DOOMED_RESOURCE}: 0.5}}
"""


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster-logs")


@pytest.fixture(scope="module")
def cluster(logs: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(logs)
    try:
        c.start_head(NODE_CPUS)
        c.add_node("far", NODE_CPUS, {FAR_RESOURCE: 1})
        yield c
    finally:
        c.shutdown()


@pytest.fixture(scope="module")
def cluster_config(logs: Path) -> Path:
    path = logs / "cluster-test.yaml"
    path.write_text(CLUSTER_CONFIG)
    return path


@pytest.fixture(scope="module")
def two_gateways(
    cluster: LocalCluster, cluster_config: Path, logs: Path
) -> Iterator[list[GatewayProcess]]:
    with gateways(["a", "b"], cluster, cluster_config, logs) as started:
        yield started


@pytest.fixture(scope="module")
def probe(cluster: LocalCluster, logs: Path) -> Iterator[Probe]:
    p = Probe(cluster, logs / "probe.log", NAMESPACE)
    try:
        yield p
    finally:
        p.close()
