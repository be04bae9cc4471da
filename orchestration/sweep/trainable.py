"""One Ray Tune trial: TrialConfig -> ieskips.training.train -> tune.report, and its MLflow child run.

The trial writes its own MLflow run (workers get the tracking URI and the experiment id explicitly),
found again by the trial's identity (``identity.py``): a retry after a node loss, a resumed sweep and
a later ``sweep run`` that reruns a failed trial all continue the same run. Every epoch is reported to
Tune with a checkpoint, and every checkpoint (those of the final evaluation's passes too) is also
stored with the run (``run_artifacts.RESUME_ARTIFACT``): a retry starts from the further of the two,
so a trial resumes where Tune's storage was lost with its machine, in a store the run was imported to.

Errors a retry cannot fix (``NOT_RETRYABLE``: a config or import error, a data set missing on the
node, divergence) end the trial at its first attempt: its run is FAILED with the one-line cause as
the ``ieskips.error`` tag, and the function returns instead of raising, because Tune 2.60 retries
every exception alike (``FailureConfig`` has no per-exception policy). Any other error is raised and
retried from the last checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import ray
import torch
from ray import tune

from ieskips.errors import ConfigError
from ieskips.training import Trial, TrainingDiverged, cap_gpu_memory, resolve_device, train
from ieskips.training.checkpoint import CHECKPOINT_NAME, load_checkpoint

from .budget import WALL, cost, log_cost
from .identity import LAUNCH_TAG, POINT_TAG, complete, identity, run_name, trial_config
from ..records.manifest import manifest
from ..records.run_artifacts import fetch_resume_point, resolve_oracles, store_model, store_resume_point, \
    store_results
from ..records.system_metrics import SystemMetrics
from ..records.tracking import (ERROR_TAG, find_trial_run, flat_params, last_logged_epoch, log_datasets, log_epoch,
                                run_tags, trial_run)

NOT_RETRYABLE = (ConfigError, ImportError, TrainingDiverged)


def cause(err: BaseException) -> str:
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {first}"[:300]


def run_trial(params: dict, *, base: dict, sweep: dict) -> None:
    """``params``: this trial's grid/search values; ``base``: the shared config; ``sweep``: name,
    tracking_uri, experiment_id, parent_id, threads (CPUs), gpu, launch, names (see identity.naming)."""
    from mlflow.tracking import MlflowClient

    began = time.monotonic()
    torch.set_num_threads(max(1, int(sweep["threads"])))
    cap_gpu_memory(float(sweep.get("gpu", 0)))
    config = trial_config(base, params)
    ident = identity(config)
    context = tune.get_context()
    client = MlflowClient(sweep["tracking_uri"])
    earlier = find_trial_run(client, sweep["experiment_id"], sweep["name"], ident)
    rerun = earlier is not None and earlier.data.tags.get("ieskips.trial_id") != context.get_trial_id()
    if rerun and complete(earlier):
        tune.report({**earlier.data.metrics, "epoch": config.epochs})  # already done: its result, not a rerun
        return
    run_id, new = trial_run(client, sweep["experiment_id"], sweep["parent_id"], sweep["name"], ident,
                            context.get_trial_id(), run_name(config, **sweep.get("names", {})), run_tags(config))
    if new:
        client.log_batch(run_id, params=_params(config))
        client.log_dict(run_id, config.to_dict(), "config.json")
        client.log_dict(run_id, manifest(config.to_dict(), resolve_device(config.device),
                                         {"trial_id": context.get_trial_id(), "identity": ident,
                                          "ray_node_id": ray.get_runtime_context().get_node_id()}),
                        "manifest.json")
        client.set_tag(run_id, POINT_TAG, json.dumps(params, sort_keys=True)[:5000])
    client.set_tag(run_id, LAUNCH_TAG, sweep.get("launch", ""))
    previous = float(client.get_run(run_id).data.metrics.get(WALL, 0.0))  # earlier attempts' wall time
    spent = lambda: previous + time.monotonic() - began  # noqa: E731
    cpu, gpu = float(sweep["threads"]), float(sweep.get("gpu", 0))
    logged = last_logged_epoch(client, run_id)
    _record_attempt(client, run_id, ray.get_runtime_context().get_node_id())
    monitor = SystemMetrics(client, run_id).start()
    workdir = Path(tempfile.mkdtemp(prefix="ieskips-trial-"))
    try:
        oracles, oracle_runs = resolve_oracles(client, sweep["experiment_id"], config.eval_attacks, config.seed,
                                               workdir / "oracles")
        for label, oracle_run in oracle_runs.items():  # provenance: which run each transfer came from
            client.set_tag(run_id, f"ieskips.oracle.{label}", oracle_run)
        trial = Trial.build(config, oracles)
        log_datasets(client, run_id, config, trial.test.identity)
        resume, (epoch, passes) = _resume_point(tune.get_checkpoint(), client, run_id, workdir)
        if resume is not None:
            client.set_tag(run_id, "ieskips.resumed_from_epoch", str(epoch))
            client.set_tag(run_id, "ieskips.resumed_passes", str(passes))

        def on_epoch(epoch, metrics, path):
            metrics = {**metrics, "epoch": epoch}
            if epoch > logged:
                log_epoch(client, run_id, epoch, metrics)
            if epoch == config.epochs:
                # Stored and ended before the last report: a scheduler may stop the trial at that report.
                store_model(client, run_id, config, trial.model, sweep["experiment_id"], epoch)
                store_results(client, run_id, trial.results)
                log_cost(client, run_id, spent(), cpu, gpu)
                monitor.stop()
                client.set_terminated(run_id, "FINISHED")
            else:
                log_cost(client, run_id, spent(), cpu, gpu)
            checkpoint = tune.Checkpoint.from_directory(str(path.parent)) if path else None
            tune.report({**metrics, **cost(spent(), cpu, gpu)}, checkpoint=checkpoint)

        train(config, on_epoch=on_epoch, checkpoint_dir=workdir / "out", resume_from=resume, progress=False,
              trial=trial, on_checkpoint=lambda path: store_resume_point(client, run_id, path))
    except NOT_RETRYABLE as err:
        _fail(client, run_id, err, spent(), cpu, gpu)
        if isinstance(err, TrainingDiverged):
            client.set_tag(run_id, "diverged", str(err))
        return  # one attempt: a retry would fail the same way
    except Exception as err:
        client.set_tag(run_id, ERROR_TAG, cause(err))  # the run stays RUNNING while Tune retries
        log_cost(client, run_id, spent(), cpu, gpu)
        raise
    finally:
        monitor.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _fail(client, run_id: str, err: BaseException, wall: float, cpu: float, gpu: float) -> None:
    client.set_tag(run_id, ERROR_TAG, cause(err))
    log_cost(client, run_id, wall, cpu, gpu)
    client.set_terminated(run_id, "FAILED")


def _record_attempt(client, run_id: str, node_id: str) -> None:
    """Tag the run with the nodes its attempts ran on, in order (a retry after a node loss adds one), and
    the process of the latest attempt."""
    nodes = client.get_run(run_id).data.tags.get("ieskips.nodes")
    client.set_tag(run_id, "ieskips.nodes", f"{nodes},{node_id}" if nodes else node_id)
    client.set_tag(run_id, "ieskips.pid", str(os.getpid()))


def _params(config):
    from mlflow.entities import Param

    return [Param(k, v) for k, v in flat_params(config).items()]


def _resume_point(checkpoint, client, run_id: str, workdir: Path) -> tuple[Path | None, tuple[int, int]]:
    """The further of the latest Tune checkpoint and the run's stored one (its file copied out: a Tune
    checkpoint's directory may be temporary), with how far it is; None and (0, 0) if there is neither."""
    found = []
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            found.append(Path(shutil.copy(Path(folder) / CHECKPOINT_NAME, workdir / f"tune-{CHECKPOINT_NAME}")))
    stored = fetch_resume_point(client, run_id, workdir / "stored")
    if stored is not None:
        found.append(stored)
    return max(((path, _progress(load_checkpoint(path))) for path in found), key=lambda pair: pair[1],
               default=(None, (0, 0)))


def _progress(state: dict) -> tuple[int, int]:
    """How far a checkpoint is: epochs trained, then the final evaluation's passes made."""
    stage = state.get("final_stage") or {}
    return int(state["epoch"]), len(stage.get("final", {})) + len(stage.get("selected", {}))
