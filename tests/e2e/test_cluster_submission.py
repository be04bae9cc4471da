"""The smoke sweep submitted to a real two-node Ray cluster through the Jobs API, its runs read back from
an MLflow server through the REST API; requests without the Ray token or the MLflow password refused."""
import pytest
import requests

from ..orchestration.helpers import listening_addresses
from .conftest import EXPERIMENT, mlflow_api

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _runs(server) -> list[dict]:
    experiment = mlflow_api(server, "GET", "experiments/get-by-name", params={"experiment_name": EXPERIMENT})
    assert experiment.status_code == 200, experiment.text
    found = mlflow_api(server, "POST", "runs/search", json={
        "experiment_ids": [experiment.json()["experiment"]["experiment_id"]], "max_results": 100})
    assert found.status_code == 200, found.text
    return found.json().get("runs", [])


def _tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def test_the_sweep_job_logs_one_finished_child_run_per_trial_under_one_parent(sweep_job, mlflow_server):
    assert sweep_job.status == "SUCCEEDED", sweep_job.logs
    runs = _runs(mlflow_server)
    parents = [r for r in runs if _tags(r).get("ieskips.role") == "sweep"]
    trials = [r for r in runs if _tags(r).get("ieskips.role") == "trial"]
    assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
    assert _tags(parents[0])["ieskips.sweep"] == sweep_job.name
    assert len(trials) == 4 and {r["info"]["status"] for r in trials} == {"FINISHED"}
    assert {_tags(r)["mlflow.parentRunId"] for r in trials} == {parents[0]["info"]["run_id"]}
    grid = {(p["ie_steps"], p["method"]) for p in
            ({q["key"]: q["value"] for q in r["data"]["params"]} for r in trials)}
    assert grid == {("0", "natural"), ("1", "natural"), ("0", "fgsm"), ("1", "fgsm")}
    for run in trials:
        metrics = {m["key"] for m in run["data"]["metrics"]}
        assert {"final/natural_acc", "final/robust_acc/worst"} <= metrics
    first_nodes = {_tags(r)["ieskips.nodes"].split(",")[0] for r in trials}
    assert len(first_nodes) == 2, "the trials did not run on both nodes"


def test_the_cluster_nodes_talk_over_loopback_and_the_dashboard_listens_on_127_0_0_1(ray_cluster):
    assert sorted(n["nodeManagerAddress"] for n in ray_cluster.alive_nodes()) == ["127.0.0.2", "127.0.0.3"]
    port = ray_cluster.head.dashboard_port
    sockets = {a for a in listening_addresses(ray_cluster.head.pids()) if a[1] == port}
    assert sockets == {("127.0.0.1", port)}


def test_the_jobs_api_refuses_requests_without_the_token(ray_cluster, sweep_job):
    jobs = f"{ray_cluster.head.dashboard}/api/jobs/"
    assert requests.get(jobs, timeout=10).status_code in (401, 403)
    assert requests.get(jobs, headers={"Authorization": "Bearer " + "0" * 64}, timeout=10).status_code in (401, 403)
    # Submitting a job is running a shell command on the cluster: the request that matters most.
    submit = requests.post(jobs, json={"entrypoint": "echo should-not-run"}, timeout=10)
    assert submit.status_code in (401, 403), submit.text
    listed = requests.get(jobs, headers=ray_cluster.bearer, timeout=10)
    assert listed.status_code == 200
    entrypoints = [job["entrypoint"] for job in listed.json()]
    assert "echo should-not-run" not in entrypoints
    assert sweep_job.job_id in {job.get("submission_id") for job in listed.json()}


def test_the_tracking_server_refuses_requests_without_the_password(mlflow_server):
    search = {"max_results": 10}
    assert mlflow_api(mlflow_server, "POST", "experiments/search", auth=False, json=search).status_code == 401
    wrong = requests.post(f"{mlflow_server.uri}/api/2.0/mlflow/experiments/search", json=search,
                          auth=("admin", "not-the-password"), timeout=30)
    assert wrong.status_code == 401
    create = mlflow_api(mlflow_server, "POST", "experiments/create", auth=False, json={"name": "intruder"})
    assert create.status_code == 401
    assert requests.get(mlflow_server.uri, timeout=30).status_code == 401  # the UI too
    assert mlflow_api(mlflow_server, "POST", "experiments/search", json=search).status_code == 200
    names = {e["name"] for e in mlflow_api(mlflow_server, "POST", "experiments/search", json=search)
             .json().get("experiments", [])}
    assert "intruder" not in names


def test_the_tracking_server_listens_on_127_0_0_1_only(mlflow_server):
    sockets = listening_addresses(mlflow_server.pids())
    assert sockets and {host for host, _ in sockets} == {"127.0.0.1"}


def test_the_report_is_logged_to_the_parent_run(sweep_report, mlflow_server):
    assert "IE-ResNet-1-18 natural" in sweep_report.read_text()
    parent = next(r for r in _runs(mlflow_server) if _tags(r).get("ieskips.role") == "sweep")
    listed = mlflow_api(mlflow_server, "GET", "artifacts/list",
                        params={"run_id": parent["info"]["run_id"], "path": "report"})
    assert listed.status_code == 200, listed.text
    assert f"report/{sweep_report.name}" in {f["path"] for f in listed.json().get("files", [])}
