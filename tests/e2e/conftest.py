"""A real deployment on loopback, built once for the package and torn down by PID afterwards:

- an ``mlflow server`` with basic auth (``mlflow[auth]``) and a SQLite backend on 127.0.0.1;
- a Ray cluster of two nodes (``ray start --head`` and one ``ray start --address``), token authentication
  on (a fresh token in the environment of every process), the dashboard and Jobs API on 127.0.0.1;
- docker/smoke-cluster.yaml submitted through the Ray Jobs API, as from a laptop, with the MLflow
  credentials in the job's runtime_env, then ``ieskips report`` run against the server.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from ..orchestration.helpers import REPO, MlflowServer, RayNode, token_ray_env, wait_for, write_spec

ARTIFACTS = Path(__file__).parent / "artifacts"  # screenshots and logs a run leaves behind (gitignored)
BIN = Path(sys.executable).parent
EXPERIMENT = "ieskips-smoke"


@dataclass
class Cluster:
    head: RayNode
    worker: RayNode
    token: str
    env: dict  # what every Ray process of this cluster gets

    @property
    def bearer(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def alive_nodes(self) -> list[dict]:
        answer = requests.get(f"{self.head.dashboard}/nodes?view=summary", headers=self.bearer, timeout=5)
        answer.raise_for_status()
        return [n["raylet"] for n in answer.json()["data"]["summary"] if n["raylet"]["state"] == "ALIVE"]


@dataclass
class SweepJob:
    job_id: str
    status: str
    logs: str
    spec: Path
    name: str


def mlflow_api(server: MlflowServer, method: str, path: str, auth=True, **kw) -> requests.Response:
    """One call to the tracking server's REST API, with the admin's credentials unless ``auth`` is False."""
    return requests.request(method, f"{server.uri}/api/2.0/mlflow/{path}", auth=server.auth if auth else None,
                            timeout=30, **kw)


@pytest.fixture(scope="package")
def workdir():
    folder = Path(tempfile.mkdtemp(prefix="e", dir="/tmp"))
    yield folder
    logs = ARTIFACTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for log in folder.glob("*.log"):  # kept for a failed CI run to be read
        shutil.copy(log, logs / log.name)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="package")
def mlflow_server(workdir):
    folder = workdir / "mlflow"
    folder.mkdir()
    server = MlflowServer(folder, admin_password=secrets.token_urlsafe(24), log=workdir / "mlflow-server.log")
    yield server
    server.stop()


@pytest.fixture(scope="package")
def ray_cluster(workdir):
    token = secrets.token_hex(32)
    env = token_ray_env(token)
    head = RayNode(env, env["RAY_TMPDIR"], "127.0.0.2", log=workdir / "ray-head.log")
    worker = RayNode(env, env["RAY_TMPDIR"], "127.0.0.3", address=head.address, log=workdir / "ray-worker.log")
    cluster = Cluster(head, worker, token, env)
    try:
        def two_nodes():
            try:
                return len(cluster.alive_nodes()) == 2
            except (OSError, requests.RequestException, ValueError):
                return False

        wait_for(two_nodes, 120, every=1)
        yield cluster
    finally:
        worker.stop()
        head.stop()
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


@pytest.fixture(scope="package")
def sweep_job(workdir, mlflow_server, ray_cluster) -> SweepJob:
    """docker/smoke-cluster.yaml with a temporary directory as the shared storage and the server as the
    tracking URI, submitted through the Jobs API by a separate client process (tests/e2e/submit_job.py)."""
    shared = workdir / "shared"
    shared.mkdir()
    spec = write_spec(workdir, source=REPO / "docker" / "smoke-cluster.yaml", storage_path=str(shared),
                      tracking_uri=mlflow_server.uri)
    entrypoint = f"{BIN / 'ieskips'} sweep run {spec} --address auto"
    credentials = {"MLFLOW_TRACKING_USERNAME": mlflow_server.auth[0], "MLFLOW_TRACKING_PASSWORD": mlflow_server.auth[1]}
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "submit_job.py"), ray_cluster.head.dashboard,
                           entrypoint], env={**ray_cluster.env, "SUBMIT_ENV_VARS": json.dumps(credentials)},
                          capture_output=True, text=True, timeout=480)
    (workdir / "submit.log").write_text(done.stdout + done.stderr)
    assert done.stdout.strip(), f"the submitter printed nothing:\n{done.stderr[-3000:]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return SweepJob(result["job_id"], result["status"], result["logs"], spec, "smoke-cluster")


@pytest.fixture(scope="package")
def sweep_report(workdir, mlflow_server, sweep_job) -> Path:
    """``ieskips report`` from the laptop's side: reads the runs from the server with the credentials and
    logs the report files to the sweep's parent run."""
    assert sweep_job.status == "SUCCEEDED", sweep_job.logs
    out = workdir / "reports"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))},
           "RAY_AUTH_MODE": "disabled", "MLFLOW_TRACKING_USERNAME": mlflow_server.auth[0],
           "MLFLOW_TRACKING_PASSWORD": mlflow_server.auth[1]}
    done = subprocess.run([str(BIN / "ieskips"), "report", str(sweep_job.spec), "--out", str(out)], env=env,
                          cwd=workdir, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return out / f"{sweep_job.name}.md"
