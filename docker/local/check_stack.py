"""Check a running compose stack from outside its containers, as a laptop behind an SSH tunnel would:
the MLflow server and the Ray Jobs API refuse requests without the password or the token, and (after
``docker/compose-up-local.sh smoke``) the smoke sweep's runs read back through the MLflow server: one
finished parent run, one finished child run per trial, each with its final metrics, trained on a worker.

    .venv/bin/python docker/local/check_stack.py [--runs EXPERIMENT]

Reads MLFLOW_AUTH_ADMIN_PASSWORD and RAY_AUTH_TOKEN from the environment (docker/compose-up-local.sh
passes them); prints one line per check and exits 1 if one fails.
"""
from __future__ import annotations

import argparse
import os
import sys

import requests

MLFLOW = "http://127.0.0.1:5000"
RAY = "http://127.0.0.1:8265"
FAILED: list[str] = []


def check(what: str, ok: bool, detail: object = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}{f': {detail}' if detail and not ok else ''}")
    if not ok:
        FAILED.append(what)


def refusals(password: str, token: str) -> None:
    search = f"{MLFLOW}/api/2.0/mlflow/experiments/search"
    check("MLflow refuses an API call without a password",
          requests.post(search, json={"max_results": 5}, timeout=30).status_code == 401)
    check("MLflow refuses a wrong password", requests.post(
        search, json={"max_results": 5}, auth=("admin", password + "x"), timeout=30).status_code == 401)
    check("MLflow refuses the UI without a password", requests.get(MLFLOW, timeout=30).status_code == 401)
    check("MLflow answers the admin", requests.post(
        search, json={"max_results": 5}, auth=("admin", password), timeout=30).status_code == 200)
    jobs = f"{RAY}/api/jobs/"
    check("Ray refuses to list jobs without the token", requests.get(jobs, timeout=30).status_code in (401, 403))
    wrong = {"Authorization": "Bearer " + "0" * len(token)}
    check("Ray refuses a wrong token", requests.get(jobs, headers=wrong, timeout=30).status_code in (401, 403))
    submit = requests.post(jobs, json={"entrypoint": "echo should-not-run"}, timeout=30)
    check("Ray refuses to run a job without the token", submit.status_code in (401, 403), submit.status_code)
    listed = requests.get(jobs, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    check("Ray answers with the token", listed.status_code == 200, listed.status_code)
    if listed.status_code == 200:
        check("the refused job never ran",
              "echo should-not-run" not in {job["entrypoint"] for job in listed.json()})


def runs(password: str, token: str, experiment: str) -> None:
    api = f"{MLFLOW}/api/2.0/mlflow"
    found = requests.get(f"{api}/experiments/get-by-name", params={"experiment_name": experiment},
                         auth=("admin", password), timeout=30)
    check(f"experiment {experiment} exists", found.status_code == 200, found.text[:200])
    if found.status_code != 200:
        return
    listed = requests.post(f"{api}/runs/search", auth=("admin", password), timeout=30, json={
        "experiment_ids": [found.json()["experiment"]["experiment_id"]], "max_results": 200}).json()
    tags = [({t["key"]: t["value"] for t in r["data"].get("tags", [])}, r) for r in listed.get("runs", [])]
    parents = [r for t, r in tags if t.get("ieskips.role") == "sweep"]
    trials = [(t, r) for t, r in tags if t.get("ieskips.role") == "trial"]
    check("one finished parent run", [r["info"]["status"] for r in parents] == ["FINISHED"], len(parents))
    check("four finished trial runs", sorted(r["info"]["status"] for _, r in trials) == ["FINISHED"] * 4,
          [r["info"]["status"] for _, r in trials])
    for _, run in trials:
        metrics = {m["key"] for m in run["data"].get("metrics", [])}
        check(f"trial {run['info']['run_name']} has its final metrics",
              {"final/natural_acc", "final/robust_acc/worst"} <= metrics, sorted(metrics))
        stored = requests.get(f"{api}/artifacts/list", params={"run_id": run["info"]["run_id"]},
                              auth=("admin", password), timeout=30).json()
        check(f"trial {run['info']['run_name']} has its stored model (artifacts through the server)",
              "model" in {f["path"] for f in stored.get("files", [])}, stored)
    used = {t.get("ieskips.nodes", "?").split(",")[0] for t, _ in trials}
    check("the trials trained on the worker, not the head", bool(used) and used <= workers(token), used)


def workers(token: str) -> set[str]:
    """Node ids of the cluster's live worker nodes."""
    answer = requests.get(f"{RAY}/nodes?view=summary", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return {n["raylet"]["nodeId"] for n in answer.json()["data"]["summary"]
            if n["raylet"]["state"] == "ALIVE" and not n["raylet"]["isHeadNode"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", metavar="EXPERIMENT", help="also read the smoke sweep's runs back")
    args = parser.parse_args()
    password, token = os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"], os.environ["RAY_AUTH_TOKEN"]
    refusals(password, token)
    if args.runs:
        runs(password, token, args.runs)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
