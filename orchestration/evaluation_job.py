"""``ieskips evaluate --run / --sweep``: stored models attacked again, results written into their runs.

Each run is evaluated by ``evaluate_run``: in-process for ``--run``, as a Ray task with the sweep's
per-trial resources for ``--sweep``. It attacks the stored model on the run's own test examples
(``ieskips.stored.evaluate_stored``, the path of the training-time evaluation), merges the
per-example results with those stored, and writes ``final/robust_acc/<label>`` and the per-example
worst case over every attack the run has faced into the same run, with a tag per evaluation. The run's
status and end time are untouched (``MlflowClient.log_*`` on a finished run does not reopen it).

Exactly once under retries: the metrics and the tags naming this job go in one ``log_batch``, and a
retried task (its node was lost) skips the labels whose tag already names its job.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from ieskips import __version__
from ieskips.attacks import attack_label
from ieskips.config import TrialConfig
from ieskips.errors import ConfigError
from ieskips.stored import evaluate_stored

from .manifest import git_state
from .run_artifacts import find_oracle, oracle_specs, resolve_oracles, stored_labels, stored_model, stored_results, \
    store_results

EVAL_TAG, NODES_TAG = "ieskips.eval.", "ieskips.eval_nodes"
WORST = "robust_acc/worst"


def done_labels(client, run) -> set[str]:
    """Attack labels the run already has: per-example results, or (runs from before those were kept)
    a final metric."""
    metrics = {k.removeprefix("final/robust_acc/") for k in run.data.metrics if k.startswith("final/robust_acc/")}
    return stored_labels(client, run.info.run_id) | (metrics - {"worst"})


def to_do(client, run, specs, force: bool, job: str | None = None) -> list[dict]:
    """The specs this run still needs: those whose label it lacks (all with ``force``), less what this
    very job already wrote (a retried task)."""
    done = set() if force else done_labels(client, run)
    return [s for s in specs if attack_label(s) not in done
            and _job_of(run, attack_label(s)) != (job or "")]


def _job_of(run, label: str) -> str | None:
    text = run.data.tags.get(EVAL_TAG + label)
    return json.loads(text).get("job") if text else None


def evaluate_run(tracking_uri: str, run_id: str, specs: list[dict], *, job: str, force: bool = False,
                 threads: int | None = None) -> dict:
    """Attack run ``run_id``'s stored model with ``specs`` (those it lacks) and write the results back.
    Returns the run's new metrics and timings (seconds: ``attack`` inside the evaluation, ``total``)."""
    import ray
    import torch
    from mlflow.tracking import MlflowClient

    start = time.perf_counter()
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    todo = to_do(client, run, specs, force, job)
    if not todo:
        return {"run_id": run_id, "evaluated": [], "metrics": {}, "attack": 0.0, "total": time.perf_counter() - start}
    if ray.is_initialized():
        _record_node(client, run, ray.get_runtime_context().get_node_id())
    with tempfile.TemporaryDirectory() as tmp:
        state = stored_model(client, run_id, Path(tmp) / "model")
        config = TrialConfig.from_dict(state["config"])
        oracles, oracle_runs = resolve_oracles(client, run.info.experiment_id, todo, config.seed, Path(tmp) / "oracles")
        began = time.perf_counter()
        new = evaluate_stored(state, todo, oracles=oracles)
        attack_seconds = time.perf_counter() - began
        previous = stored_results(client, run_id, Path(tmp) / "results")
        merged = previous.merge(new) if previous else new
        store_results(client, run_id, merged, labels=list(new.masks))
    metrics = _metrics(merged, [attack_label(s) for s in todo], run.data.metrics)
    _log(client, run_id, metrics, _tags(todo, job, oracle_runs), config.epochs)
    return {"run_id": run_id, "evaluated": [attack_label(s) for s in todo], "metrics": metrics,
            "attack": attack_seconds, "total": time.perf_counter() - start}


def _metrics(merged, labels, logged: dict) -> dict:
    accuracy = merged.accuracies()
    out = {f"final/robust_acc/{label}": accuracy[f"robust_acc/{label}"] for label in labels}
    # Per example over every stored mask; the min only matters for a run that has metrics of attacks
    # from before per-example results were kept, whose examples cannot be recovered.
    out[f"final/{WORST}"] = min(accuracy[WORST], logged.get(f"final/{WORST}", math.inf))
    return out


def _tags(specs, job: str, oracle_runs: dict) -> dict:
    code = {"ieskips": __version__, "commit": git_state()["commit"]}
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tags = {EVAL_TAG + attack_label(s): json.dumps({"spec": s, "when": when, "code": code, "job": job})
            for s in specs}
    return {**tags, **{f"ieskips.oracle.{label}": run for label, run in oracle_runs.items()}}


def _log(client, run_id: str, metrics: dict, tags: dict, step: int) -> None:
    from mlflow.entities import Metric, RunTag

    stamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])


def _record_node(client, run, node_id: str) -> None:
    nodes = run.data.tags.get(NODES_TAG)
    client.set_tag(run.info.run_id, NODES_TAG, f"{nodes},{node_id}" if nodes else node_id)


# --- the driver: what to evaluate, checked before anything starts --------------------------------

def new_job() -> str:
    return uuid.uuid4().hex[:12]


def check_specs(specs: list[dict], config: dict) -> None:
    """Every attack spec builds (names, keys, ranges, sources), checked as a trial config would be."""
    TrialConfig.from_dict({**config, "eval_attacks": specs})


def plan(client, runs, specs: list[dict] | None, force: bool, folder: Path) -> list[tuple]:
    """``(run, specs to run)`` for every run with work; each run's stored model is read and each named
    oracle found first, so a missing or unreadable one stops the job before anything is written."""
    work = []
    for run in runs:
        state = stored_model(client, run.info.run_id, folder / run.info.run_id)
        own = specs if specs is not None else list(state["config"]["eval_attacks"])
        check_specs(own, state["config"])
        _check_same_specs(run, own, state["config"]["eval_attacks"])
        todo = to_do(client, run, own, force)
        for spec in oracle_specs(todo):
            find_oracle(client, run.info.experiment_id, spec["source"], state["config"]["seed"])
        if todo:
            work.append((run, todo))
    return work


def _check_same_specs(run, specs, trained_with) -> None:
    """A label names one attack: the same label with other settings would merge two different attacks."""
    known = {attack_label(s): s for s in trained_with}
    known.update({k.removeprefix(EVAL_TAG): json.loads(v)["spec"] for k, v in run.data.tags.items()
                  if k.startswith(EVAL_TAG)})
    for spec in specs:
        label = attack_label(spec)
        if label in known and _settings(known[label]) != _settings(spec):
            raise ConfigError(f"run {run.info.run_id} already has attack {label!r} as {_settings(known[label])}; "
                              f"give {_settings(spec)} its own label (label: NAME in the spec)")


def _settings(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k != "label"}


def finished_runs(client, experiment_id: str, sweep: str, match: dict) -> list:
    from .tracking import EARLY_STOP_TAG, sweep_trial_runs

    runs = [r for r in sweep_trial_runs(client, experiment_id, sweep)
            if r.info.status == "FINISHED" and r.data.tags.get(EARLY_STOP_TAG) != "true"
            and all(r.data.params.get(k) == str(v) for k, v in match.items())]
    if not runs:
        where = f" matching {match}" if match else ""
        raise ConfigError(f"sweep {sweep!r} has no finished trial{where} in experiment {experiment_id}; "
                          "run it first (`ieskips sweep status` shows its trials)")
    return sorted(runs, key=lambda r: r.info.run_name or "")


def run_on_ray(tracking_uri: str, work: list[tuple], *, job: str, force: bool, resources, retries: int):
    """One Ray task per run with the sweep's per-trial resources; a task whose node is lost is retried
    elsewhere (Ray's system-failure retries), an error in the evaluation itself is not."""
    import ray

    task = ray.remote(evaluate_run).options(num_cpus=resources.cpu, num_gpus=resources.gpu,
                                            max_retries=max(1, retries), retry_exceptions=False)
    pending = {task.remote(tracking_uri, run.info.run_id, todo, job=job, force=force, threads=resources.cpu): run
               for run, todo in work}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        run = pending.pop(ready[0])
        try:
            yield run, ray.get(ready[0]), None
        except ray.exceptions.RayError as err:
            yield run, None, str(err).strip().splitlines()[-1][:300]
