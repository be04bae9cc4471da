"""One Ray Tune trial: TrialConfig -> ieskips.training.train -> tune.report, and its MLflow child run.

The trial writes its own MLflow run (workers get the tracking URI and the experiment id explicitly)
and finds it again by trial id, so a retry after a node loss or a resumed sweep continues the same
run. Every epoch is reported to Tune with a checkpoint; a retry starts from the latest one.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import ray
import torch
from ray import tune

from ieskips.config import TrialConfig
from ieskips.training import Trial, TrainingDiverged, resolve_device, train
from ieskips.training.checkpoint import CHECKPOINT_NAME, load_checkpoint

from .manifest import manifest
from .run_artifacts import resolve_oracles, store_model, store_results
from .tracking import flat_params, last_logged_epoch, log_epoch, run_tags, trial_run


def run_trial(params: dict, *, base: dict, sweep: dict) -> None:
    """``params``: this trial's grid/search values; ``base``: the shared config; ``sweep``: name,
    tracking_uri, experiment_id, parent_id, threads."""
    from mlflow.tracking import MlflowClient

    torch.set_num_threads(max(1, int(sweep["threads"])))
    config = TrialConfig.from_dict({**base, **params})
    context = tune.get_context()
    client = MlflowClient(sweep["tracking_uri"])
    run_id, new = trial_run(client, sweep["experiment_id"], sweep["parent_id"], sweep["name"],
                            context.get_trial_id(), context.get_trial_name(), run_tags(config))
    if new:
        client.log_batch(run_id, params=_params(config))
        client.log_dict(run_id, config.to_dict(), "config.json")
        client.log_dict(run_id, manifest(config.to_dict(), resolve_device(config.device),
                                         {"trial_id": context.get_trial_id(), "ray_node_id": ray.get_runtime_context().get_node_id()}),
                        "manifest.json")
    logged = last_logged_epoch(client, run_id)
    _record_attempt(client, run_id, ray.get_runtime_context().get_node_id())
    workdir = Path(tempfile.mkdtemp(prefix="ieskips-trial-"))
    try:
        oracles, oracle_runs = resolve_oracles(client, sweep["experiment_id"], config.eval_attacks, config.seed,
                                               workdir / "oracles")
        for label, oracle_run in oracle_runs.items():  # provenance: which run each transfer came from
            client.set_tag(run_id, f"ieskips.oracle.{label}", oracle_run)
        trial = Trial.build(config, oracles)
        resume = _restore(tune.get_checkpoint(), workdir)
        if resume is not None:
            client.set_tag(run_id, "ieskips.resumed_from_epoch", str(load_checkpoint(resume)["epoch"]))

        def on_epoch(epoch, metrics, path):
            if epoch > logged:
                log_epoch(client, run_id, epoch, metrics)
            if epoch == config.epochs:
                # Stored and ended before the last report: a scheduler may stop the trial at that report.
                store_model(client, run_id, config, trial.model, sweep["experiment_id"], epoch)
                store_results(client, run_id, trial.results)
                client.set_terminated(run_id, "FINISHED")
            checkpoint = tune.Checkpoint.from_directory(str(path.parent)) if path else None
            tune.report({**metrics, "epoch": epoch}, checkpoint=checkpoint)

        train(config, on_epoch=on_epoch, checkpoint_dir=workdir / "out", resume_from=resume, progress=False,
              trial=trial)
    except TrainingDiverged as err:
        client.set_tag(run_id, "diverged", str(err))
        client.set_terminated(run_id, "FAILED")
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _record_attempt(client, run_id: str, node_id: str) -> None:
    """Tag the run with the nodes its attempts ran on, in order (a retry after a node loss adds one)."""
    nodes = client.get_run(run_id).data.tags.get("ieskips.nodes")
    client.set_tag(run_id, "ieskips.nodes", f"{nodes},{node_id}" if nodes else node_id)


def _params(config: TrialConfig):
    from mlflow.entities import Param

    return [Param(k, v) for k, v in flat_params(config).items()]


def _restore(checkpoint, workdir: Path):
    """Copy the latest Tune checkpoint's file out (its directory may be temporary); None if none."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        target = workdir / CHECKPOINT_NAME
        shutil.copy(Path(folder) / CHECKPOINT_NAME, target)
    return target
