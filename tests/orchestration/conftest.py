"""Fixtures shared by the sweep and evaluation tests."""
import pytest

from .helpers import ray_env


@pytest.fixture
def cluster(monkeypatch):
    """A Ray cluster of two nodes on this host (head and one worker, one CPU each), fast node-death
    detection; the nodes inherit the environment as it is when the fixture starts."""
    from ray.cluster_utils import Cluster

    for key, value in ray_env().items():
        monkeypatch.setenv(key, value)
    cluster = Cluster(initialize_head=True, connect=True, head_node_args={
        "num_cpus": 1, "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                                          "health_check_failure_threshold": 5}})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster, worker
    import ray

    ray.shutdown()
    cluster.shutdown()
