"""``ieskips evaluate --run / --sweep``: stored models attacked again, results written into their runs.

Each run is evaluated by ``evaluate_run``: in-process for ``--run``, as a Ray task with the sweep's
per-trial resources for ``--sweep``. It attacks the stored model on the run's own test examples
(``ieskips.stored.evaluate_stored``, the path of the training-time evaluation), merges the
per-example results with those stored, and writes ``final/robust_acc/<label>`` and the per-example
worst case over every attack the run has faced into the same run, with a tag per evaluation. The run's
status and end time are untouched (``MlflowClient.log_*`` on a finished run does not reopen it).

Exactly once under retries: the metrics and the tags naming this job go in one ``log_batch``, and a
retried task (its node was lost) skips the labels whose tag already names its job.

One job per run: the driver holds the lease (``lease.py``) of every run it will write into, from before
its first task to its end (a second job exits 2 naming the holder); each task reads its run again under
that lease, so what another job wrote between this one's plan and its lease is not written twice.
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
from ieskips.stored import diagnose_stored, evaluate_stored
from ieskips.training import cap_gpu_memory

from ..records.manifest import git_state
from ..records.run_artifacts import (find_oracle, oracle_specs, resolve_oracles, store_results, stored_labels,
                                     stored_model, stored_results)

EVAL_TAG, NODES_TAG, DIAGNOSTICS = "ieskips.eval.", "ieskips.eval_nodes", "diagnostics"
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


def needs_diagnostics(run, force: bool, job: str | None = None) -> bool:
    return (force or "final/diag/examples" not in run.data.metrics) and _job_of(run, DIAGNOSTICS) != (job or "")


def evaluate_run(tracking_uri: str, run_id: str, specs: list[dict], *, job: str, force: bool = False,
                 diagnostics: bool = False, threads: int | None = None, gpu_share: float = 0) -> dict:
    """Attack run ``run_id``'s stored model with ``specs`` (those it lacks) and, with ``diagnostics``,
    measure its stability; write the results back. Returns the run's new metrics and timings
    (seconds: ``attack`` inside the evaluation, ``total``)."""
    import ray
    import torch
    from mlflow.tracking import MlflowClient

    start = time.perf_counter()
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    cap_gpu_memory(gpu_share)
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    todo = to_do(client, run, specs, force, job)
    diagnose_now = diagnostics and needs_diagnostics(run, force, job)
    done = {"run_id": run_id, "evaluated": [attack_label(s) for s in todo] + [DIAGNOSTICS] * diagnose_now,
            "metrics": {}, "attack": 0.0}
    if ray.is_initialized() and done["evaluated"]:
        _record_node(client, run, ray.get_runtime_context().get_node_id())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        state = stored_model(client, run_id, folder / "model") if done["evaluated"] else None
        tags = {}
        if todo:
            began = time.perf_counter()
            done["metrics"], tags = _attack(client, run, state, todo, job, folder)
            done["attack"] = time.perf_counter() - began
        if diagnose_now:
            metrics, more = _diagnose(client, run, state, {**run.data.metrics, **done["metrics"]}, job, folder)
            done["metrics"].update(metrics)
            tags.update(more)
    if tags:
        _log(client, run_id, done["metrics"], tags, state["config"]["epochs"])
    return {**done, "total": time.perf_counter() - start}


def _attack(client, run, state: dict, todo: list[dict], job: str, folder: Path) -> tuple[dict, dict]:
    """Per-example results of ``todo``, merged with those stored and stored; the metrics and tags."""
    seed = state["config"]["seed"]
    oracles, oracle_runs = resolve_oracles(client, run.info.experiment_id, todo, seed, folder / "oracles")
    new = evaluate_stored(state, todo, oracles=oracles)
    previous = stored_results(client, run.info.run_id, folder / "results")
    merged = previous.merge(new) if previous else new
    store_results(client, run.info.run_id, merged, labels=list(new.masks))
    tags = _tags({attack_label(s): s for s in todo}, job)
    tags.update({f"ieskips.oracle.{label}": oracle for label, oracle in oracle_runs.items()})
    return _metrics(merged, [attack_label(s) for s in todo], run.data.metrics), tags


def _diagnose(client, run, state: dict, metrics: dict, job: str, folder: Path) -> tuple[dict, dict]:
    """Stability diagnostics, stage gains along the strongest attack the run has faced."""
    known = _known_specs(run, state["config"]["eval_attacks"])
    label = min(known, key=lambda k: metrics.get(f"final/robust_acc/{k}", math.inf), default=None)
    spec = known.get(label)
    oracles, _ = resolve_oracles(client, run.info.experiment_id, [spec] if spec else [], state["config"]["seed"],
                                 folder / "diagnostics")
    values = diagnose_stored(state, spec, oracles=oracles)
    along = {"examples": TrialConfig.from_dict(state["config"]).diagnostics_examples, "stage_gain_along": label}
    return {f"final/{k}": v for k, v in values.items()}, _tags({DIAGNOSTICS: along}, job)


def _metrics(merged, labels, logged: dict) -> dict:
    accuracy = merged.accuracies()
    out = {f"final/robust_acc/{label}": accuracy[f"robust_acc/{label}"] for label in labels}
    # Per example over every stored mask; the min only matters for a run that has metrics of attacks
    # from before per-example results were kept, whose examples cannot be recovered.
    out[f"final/{WORST}"] = min(accuracy[WORST], logged.get(f"final/{WORST}", math.inf))
    return out


def _tags(specs: dict, job: str) -> dict:
    """One tag per evaluated label: what ran (the spec), when, with which code, in which job."""
    code = {"ieskips": __version__, "commit": git_state()["commit"]}
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {EVAL_TAG + label: json.dumps({"spec": spec, "when": when, "code": code, "job": job})
            for label, spec in specs.items()}


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


def plan(client, runs, specs: list[dict] | None, force: bool, folder: Path, diagnostics: bool = False) -> list[tuple]:
    """``(run, specs to run)`` for every run with work (attacks it lacks, or ``diagnostics``); each run's
    stored model is read and each named oracle found first, so a missing or unreadable one stops the
    job before anything is written."""
    work = []
    for run in runs:
        state = stored_model(client, run.info.run_id, folder / run.info.run_id)
        own = specs if specs is not None else list(state["config"]["eval_attacks"])
        check_specs(own, state["config"])
        _check_same_specs(run, own, state["config"]["eval_attacks"])
        todo = to_do(client, run, own, force)
        for spec in oracle_specs(todo):
            find_oracle(client, run.info.experiment_id, spec["source"], state["config"]["seed"])
        if todo or (diagnostics and needs_diagnostics(run, force)):
            work.append((run, todo))
    return work


def _known_specs(run, trained_with) -> dict:
    """Every attack the run has faced, by label: at training time and in later evaluations."""
    known = {attack_label(s): s for s in trained_with}
    known.update({k.removeprefix(EVAL_TAG): json.loads(v)["spec"] for k, v in run.data.tags.items()
                  if k.startswith(EVAL_TAG) and k != EVAL_TAG + DIAGNOSTICS})
    return known


def _check_same_specs(run, specs, trained_with) -> None:
    """A label names one attack: the same label with other settings would merge two different attacks."""
    known = _known_specs(run, trained_with)
    for spec in specs:
        label = attack_label(spec)
        if label in known and _settings(known[label]) != _settings(spec):
            raise ConfigError(f"run {run.info.run_id} already has attack {label!r} as {_settings(known[label])}; "
                              f"give {_settings(spec)} its own label (label: NAME in the spec)")


def _settings(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k != "label"}


def finished_runs(client, experiment_id: str, sweep: str, match: dict) -> list:
    from ..records.tracking import EARLY_STOP_TAG, sweep_trial_runs

    runs = [r for r in sweep_trial_runs(client, experiment_id, sweep)
            if r.info.status == "FINISHED" and r.data.tags.get(EARLY_STOP_TAG) != "true"
            and all(r.data.params.get(k) == str(v) for k, v in match.items())]
    if not runs:
        where = f" matching {match}" if match else ""
        raise ConfigError(f"sweep {sweep!r} has no finished trial{where} in experiment {experiment_id}; "
                          "run it first (`ieskips sweep status` shows its trials)")
    return sorted(runs, key=lambda r: r.info.run_name or "")


def run_on_ray(tracking_uri: str, work: list[tuple], *, job: str, force: bool, resources, retries: int,
               diagnostics: bool = False):
    """One Ray task per run with the sweep's per-trial resources; a task whose node is lost is retried
    elsewhere (Ray's system-failure retries), an error in the evaluation itself is not."""
    import ray

    task = ray.remote(evaluate_run).options(num_cpus=resources.cpu, num_gpus=resources.gpu,
                                            max_retries=max(1, retries), retry_exceptions=False)
    pending = {task.remote(tracking_uri, run.info.run_id, todo, job=job, force=force, diagnostics=diagnostics,
                           threads=resources.cpu, gpu_share=resources.gpu): run for run, todo in work}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        run = pending.pop(ready[0])
        try:
            yield run, ray.get(ready[0]), None
        except ray.exceptions.RayError as err:
            yield run, None, str(err).strip().splitlines()[-1][:300]
