"""MLflow: where runs go, and one run per trial with params, per-epoch metrics, tags and artifacts."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import yaml

from ieskips import __version__
from ieskips.config import TrialConfig
from ieskips.errors import ConfigError

DEFAULT_EXPERIMENT = "ieskips"


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """The given URI, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory
    (so that ``mlflow ui`` started there shows the runs)."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def connect(uri: str, experiment: str) -> str:
    """Make sure ``experiment`` exists in the store at ``uri``; its id. Unreachable: ConfigError.

    Leaves MLflow's global tracking URI alone (it is an environment variable that child processes
    would inherit)."""
    from mlflow.tracking import MlflowClient

    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    client = MlflowClient(uri)
    try:
        found = client.get_experiment_by_name(experiment)
        # The UI of MLflow 3.x opens an experiment without a kind in its GenAI view; ours are training runs.
        return found.experiment_id if found else client.create_experiment(
            experiment, tags={"mlflow.experimentKind": "custom_model_development"})
    except Exception as err:  # noqa: BLE001  (mlflow raises many types for an unusable store)
        raise ConfigError(f"cannot use the MLflow tracking store {uri}: {str(err).splitlines()[0][:200]}") from None


def check_reachable(uri: str) -> None:
    if uri.startswith(("http://", "https://")):
        _check_server(uri)


def _check_server(uri: str) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when nothing listens at ``uri``."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10)
    except urllib.error.HTTPError:
        return  # something answers (a login, a proxy): let MLflow's own calls judge it
    except OSError as err:
        raise ConfigError(f"cannot reach the MLflow tracking server {uri} ({getattr(err, 'reason', err)}); "
                          "start it or pass --tracking-uri") from None


def flat_params(config: TrialConfig) -> dict:
    """Config values as MLflow params (strings of at most 6000 characters)."""
    return {key: str(value)[:6000] for key, value in config.to_dict().items()}


def run_tags(config: TrialConfig, extra: dict | None = None) -> dict:
    tags = {"ieskips.version": __version__, "model": config.model, "method": config.method,
            "ie_steps": str(config.ie_steps), "dataset": config.dataset}
    if config.paper_table:
        tags["paper_table"] = config.paper_table
    return {**tags, **(extra or {})}


def log_config_artifact(config: TrialConfig) -> None:
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        mlflow.log_artifact(str(path))


# --- sweeps: one parent run per sweep, one child run per trial, found again by tag (idempotent) -----

SWEEP_TAG, ROLE_TAG, TRIAL_TAG = "ieskips.sweep", "ieskips.role", "ieskips.trial_id"
EARLY_STOP_TAG = "ieskips.stopped_early"


def _find(client, experiment_id: str, **tags) -> Optional[Any]:
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    runs = client.search_runs([experiment_id], filter_string=query, max_results=2)
    return runs[0] if runs else None


def find_parent_run(client, experiment_id: str, sweep: str):
    return _find(client, experiment_id, **{SWEEP_TAG: sweep, ROLE_TAG: "sweep"})


def sweep_parent_run(client, experiment_id: str, sweep: str, tags: dict) -> str:
    """The sweep's parent run: found by name if it exists (a resume), else created; left RUNNING."""
    found = find_parent_run(client, experiment_id, sweep)
    if found:
        client.update_run(found.info.run_id, status="RUNNING")
        return found.info.run_id
    run = client.create_run(experiment_id, run_name=sweep, tags={SWEEP_TAG: sweep, ROLE_TAG: "sweep", **tags})
    return run.info.run_id


def trial_run(client, experiment_id: str, parent_id: str, sweep: str, trial_id: str, name: str,
              tags: dict) -> tuple[str, bool]:
    """The trial's child run and whether it is new. A retry or a resumed sweep finds the same run."""
    found = _find(client, experiment_id, **{TRIAL_TAG: trial_id, SWEEP_TAG: sweep})
    if found:
        client.update_run(found.info.run_id, status="RUNNING")
        return found.info.run_id, False
    run = client.create_run(experiment_id, run_name=name, tags={
        "mlflow.parentRunId": parent_id, SWEEP_TAG: sweep, ROLE_TAG: "trial", TRIAL_TAG: trial_id, **tags})
    return run.info.run_id, True


def last_logged_epoch(client, run_id: str) -> int:
    """Epochs up to this one are already in the run (a retry re-trains them; log them once)."""
    history = client.get_metric_history(run_id, "train_loss")
    return max((m.step for m in history), default=0)


def log_epoch(client, run_id: str, epoch: int, metrics: dict) -> None:
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, epoch) for k, v in metrics.items()])


def close_trial_run(client, experiment_id: str, sweep: str, trial_id: str, status: str) -> None:
    """End a trial's run that its own process could not end (stopped early, failed, killed).
    ``status``: "stopped" (early stop by the scheduler) or an MLflow status such as "FAILED"."""
    found = _find(client, experiment_id, **{TRIAL_TAG: trial_id, SWEEP_TAG: sweep})
    if found is None or found.info.status != "RUNNING":
        return
    if status == "stopped":
        client.set_tag(found.info.run_id, EARLY_STOP_TAG, "true")
        status = "KILLED"
    client.set_terminated(found.info.run_id, status)


def sweep_trial_runs(client, experiment_id: str, sweep: str) -> list:
    return client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}' and "
                              f"tags.`{ROLE_TAG}` = 'trial'", max_results=10000)
