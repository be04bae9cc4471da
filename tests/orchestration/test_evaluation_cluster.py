"""`ieskips evaluate --sweep` as it runs for real: an MLflow server with basic auth whose backend store is
PostgreSQL, a two-node Ray cluster, and the worker node killed mid-evaluation. The job completes and
every run gets the new metric exactly once."""
import secrets
import threading

import pytest

from .helpers import MlflowServer, Postgres, runs, wait_for, write_spec

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
SLOW_ATTACK = "{name: pgd, eps: 0.15, alpha: 0.01, steps: 60}"  # seconds per run: time to kill a node


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Started before the cluster, so that its nodes inherit the credentials (as compose gives them)."""
    database = Postgres()
    password = secrets.token_urlsafe(18)
    folder = tmp_path / "mlflow"
    folder.mkdir()
    try:
        server = MlflowServer(folder, admin_password=password, backend=database.uri, log=tmp_path / "mlflow.log")
    except BaseException:
        database.stop()
        raise
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    yield server
    server.stop()
    database.stop()


def test_worker_lost_mid_evaluation_every_run_gets_the_metric_once(tmp_path, server, cluster, monkeypatch):
    from orchestration.cli import main

    cluster, worker = cluster
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, name="evalcluster", base={"epochs": 1}, tracking_uri=server.uri,
                      storage_path=str(tmp_path / "shared"), storage_shared=True, retries=3)
    assert main(["sweep", "run", str(spec), "--address", cluster.address]) == 0
    client, _, trials = runs(server.uri, "ieskips-smoke")
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)

    def evaluating_on_worker():
        return next((r for r in runs(server.uri, "ieskips-smoke")[2]
                     if r.data.tags.get("ieskips.eval_nodes") == worker.node_id), None)

    victim = {}

    def kill_worker():
        victim["run"] = wait_for(evaluating_on_worker, 300, every=0.2)
        cluster.remove_node(worker, allow_graceful=False)

    killer = threading.Thread(target=kill_worker, daemon=True)
    killer.start()
    assert main(["evaluate", "--sweep", str(spec), "--attack", SLOW_ATTACK, "--address", cluster.address]) == 0
    killer.join(timeout=5)
    assert "run" in victim, "no evaluation ran on the worker node"
    _, _, after = runs(server.uri, "ieskips-smoke")
    for old, new in zip(sorted(trials, key=lambda r: r.info.run_id), sorted(after, key=lambda r: r.info.run_id)):
        assert (new.info.status, new.info.end_time) == (old.info.status, old.info.end_time)
        assert len(client.get_metric_history(new.info.run_id, "final/robust_acc/pgd60")) == 1
        assert new.data.metrics["final/robust_acc/worst"] <= old.data.metrics["final/robust_acc/worst"]
    nodes = client.get_run(victim["run"].info.run_id).data.tags["ieskips.eval_nodes"].split(",")
    assert nodes[0] == worker.node_id and nodes[-1] != worker.node_id  # retried on the survivor
