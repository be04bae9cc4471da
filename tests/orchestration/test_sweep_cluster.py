"""A two-node Ray cluster on one host: trials on both nodes, a worker node killed mid-trial."""
import threading

import pytest

from .helpers import MlflowServer, runs, wait_for, write_spec

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture
def server(tmp_path):
    folder = tmp_path / "mlflow"
    folder.mkdir()
    server = MlflowServer(folder)
    yield server
    server.stop()


def test_worker_node_lost_mid_trial_resumes_on_the_survivor(tmp_path, cluster, server, monkeypatch):
    from orchestration.cli import main

    cluster, worker = cluster
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, name="cluster", base={"epochs": 5}, tracking_uri=server.uri,
                      storage_path=str(tmp_path / "shared"), storage_shared=True, retries=3)

    def on_worker_midway():
        client, _, trials = runs(server.uri, "ieskips-smoke")
        return next((r for r in trials if r.data.tags.get("ieskips.nodes") == worker.node_id
                     and len(client.get_metric_history(r.info.run_id, "train_loss")) >= 2), None)

    victim = {}

    def kill_worker():
        victim["run"] = wait_for(on_worker_midway, 300, every=0.2)
        cluster.remove_node(worker, allow_graceful=False)

    killer = threading.Thread(target=kill_worker, daemon=True)
    killer.start()
    assert main(["sweep", "run", str(spec), "--address", cluster.address]) == 0
    killer.join(timeout=5)
    client, parents, trials = runs(server.uri, "ieskips-smoke")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)
    first_nodes = {r.data.tags["ieskips.nodes"].split(",")[0] for r in trials}
    assert worker.node_id in first_nodes and len(first_nodes) == 2  # trials landed on both nodes
    moved = client.get_run(victim["run"].info.run_id)
    nodes = moved.data.tags["ieskips.nodes"].split(",")
    assert nodes[0] == worker.node_id and nodes[-1] != worker.node_id
    assert int(moved.data.tags["ieskips.resumed_from_epoch"]) >= 1  # from its checkpoint, not from scratch
    for run in trials:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert steps == [1, 2, 3, 4, 5], steps
