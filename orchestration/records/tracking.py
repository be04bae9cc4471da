"""MLflow: where runs go, and one run per trial with params, per-epoch metrics, tags and artifacts."""
from __future__ import annotations

import json
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
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    client = _open(uri)
    try:
        found = client.get_experiment_by_name(experiment)
        # The UI of MLflow 3.x opens an experiment without a kind in its GenAI view; ours are training runs.
        return found.experiment_id if found else client.create_experiment(
            experiment, tags={"mlflow.experimentKind": "custom_model_development"})
    except Exception as err:  # noqa: BLE001  (mlflow raises many types for an unusable store)
        found = _created_meanwhile(client, experiment)  # another driver created it at the same time
        if found is not None:
            return found
        raise ConfigError(f"cannot use the MLflow tracking store {uri}: {str(err).splitlines()[0][:200]}") from None


def _open(uri: str):
    """An MlflowClient on ``uri``, its store opened. The first process to open a new SQLite file creates its
    tables; two at once (two drivers started together) would both try and one fail: they take turns."""
    import fcntl
    import hashlib
    from mlflow.tracking import MlflowClient

    if not uri.startswith("sqlite:"):
        return MlflowClient(uri)
    lock = Path(tempfile.gettempdir()) / f"ieskips-store-{hashlib.sha256(uri.encode()).hexdigest()[:16]}.lock"
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        return MlflowClient(uri)


def _created_meanwhile(client, experiment: str) -> str | None:
    try:
        found = client.get_experiment_by_name(experiment)
    except Exception:  # noqa: BLE001
        return None
    return found.experiment_id if found else None


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
EARLY_STOP_TAG, ERROR_TAG, IDENTITY_TAG = "ieskips.stopped_early", "ieskips.error", "ieskips.identity"


def _find(client, experiment_id: str, **tags) -> Optional[Any]:
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    runs = client.search_runs([experiment_id], filter_string=query, max_results=2)
    return runs[0] if runs else None


def find_parent_run(client, experiment_id: str, sweep: str):
    """The earliest created (start time, then run id): two drivers that created one at once agree on it
    (``lease.sweep_parent``)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}' and "
                              f"tags.`{ROLE_TAG}` = 'sweep'", max_results=1, order_by=["attributes.start_time ASC"])
    return runs[0] if runs else None


def sweep_parent_run(client, experiment_id: str, sweep: str, tags: dict) -> str:
    """The sweep's parent run: found by name if it exists (a resume), else created; left RUNNING."""
    found = find_parent_run(client, experiment_id, sweep)
    if found:
        client.update_run(found.info.run_id, status="RUNNING")
        return found.info.run_id
    run = client.create_run(experiment_id, run_name=sweep, tags={SWEEP_TAG: sweep, ROLE_TAG: "sweep", **tags})
    return run.info.run_id


def find_trial_run(client, experiment_id: str, sweep: str, identity: str):
    return _find(client, experiment_id, **{IDENTITY_TAG: identity, SWEEP_TAG: sweep})


def trial_run(client, experiment_id: str, parent_id: str, sweep: str, identity: str, trial_id: str, name: str,
              tags: dict) -> tuple[str, bool]:
    """The trial's child run and whether it is new: one run per identity, so a retry, a resumed sweep
    and a later launch that reruns a failed or killed trial all continue the same run."""
    found = find_trial_run(client, experiment_id, sweep, identity)
    if found:
        client.update_run(found.info.run_id, status="RUNNING")
        client.set_tag(found.info.run_id, TRIAL_TAG, trial_id)
        if ERROR_TAG in found.data.tags:  # the cause of an earlier attempt's failure
            client.delete_tag(found.info.run_id, ERROR_TAG)
        return found.info.run_id, False
    run = client.create_run(experiment_id, run_name=name, tags={
        "mlflow.parentRunId": parent_id, SWEEP_TAG: sweep, ROLE_TAG: "trial", TRIAL_TAG: trial_id,
        IDENTITY_TAG: identity, **tags})
    return run.info.run_id, True


def last_logged_epoch(client, run_id: str) -> int:
    """Epochs up to this one are already in the run (a retry re-trains them; log them once)."""
    history = client.get_metric_history(run_id, "train_loss")
    return max((m.step for m in history), default=0)


def log_epoch(client, run_id: str, epoch: int, metrics: dict) -> None:
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, epoch) for k, v in metrics.items()])


def close_trial_run(client, experiment_id: str, sweep: str, trial_id: str, status: str, cause: str = "") -> None:
    """End a trial's run that its own process could not end (stopped early, failed, killed).
    ``status``: "stopped" (early stop by the scheduler) or an MLflow status such as "FAILED";
    ``cause``: one line, kept as the run's ``ieskips.error`` tag."""
    found = _find(client, experiment_id, **{TRIAL_TAG: trial_id, SWEEP_TAG: sweep})
    if found is None or found.info.status != "RUNNING":
        return
    if status == "stopped":
        client.set_tag(found.info.run_id, EARLY_STOP_TAG, "true")
        status = "KILLED"
    if cause:
        client.set_tag(found.info.run_id, ERROR_TAG, one_line(cause))
    client.set_terminated(found.info.run_id, status)


def one_line(text, limit: int = 300) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "")[:limit]


def sweep_trial_runs(client, experiment_id: str, sweep: str) -> list:
    return client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}' and "
                              f"tags.`{ROLE_TAG}` = 'trial'", max_results=10000)


# --- what a trial run records besides its metrics: its data sets and its process's system metrics -----

def log_datasets(client, run_id: str, config: TrialConfig, test_identity: str) -> None:
    """The training and test data as MLflow dataset inputs (name, digest, context train/test), once per
    run: the runs table's Dataset column. Digest: where the data set's files have known digests (MNIST),
    the split's files' digest (``ieskips.data.files_digest``; the source names the whole set's,
    ``ieskips.data.mnist.IDENTITY``); else the content hash of the whole split (``ieskips.data.identity``).
    The profile says which part of the split the trial used."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    if client.get_run(run_id).inputs.dataset_inputs:
        return
    inputs = []
    for split, digest, used, size, seed in _splits(config, test_identity):
        profile = {"split": split, "examples": min(used or size, size), "of": size, "subset_seed": seed}
        source = {"dataset": config.dataset, "split": split, **_files(config.dataset, split)}
        dataset = Dataset(name=config.dataset, digest=digest, source_type="ieskips", source=json.dumps(source),
                          profile=json.dumps(profile))
        inputs.append(DatasetInput(dataset, [InputTag("mlflow.data.context", split)]))
    client.log_inputs(run_id, datasets=inputs)


def _splits(config: TrialConfig, test_identity: str) -> list[tuple]:
    """(split, digest, examples used, split size, subset seed) for the training and the test split."""
    from ieskips.data import files_digest, identity, load_dataset, mnist

    train_digest = files_digest(config.dataset, True, config.data_dir)
    if train_digest is not None:  # files verified by their digests: no need to load and hash the content
        return [("train", train_digest, config.train_subset, mnist.SIZES["train"], config.seed),
                ("test", files_digest(config.dataset, False, config.data_dir), config.test_subset,
                 mnist.SIZES["test"], 0)]
    train = load_dataset(config.dataset, True, root=config.data_dir, download=False, augment=False)
    train_digest = identity(config.dataset, train).rsplit("-", 1)[-1]
    return [("train", train_digest, config.train_subset, len(train), config.seed),
            ("test", test_identity.rsplit("-", 1)[-1], config.test_subset, int(test_identity.split("-")[-2]), 0)]


def _files(dataset: str, split: str) -> dict:
    """MNIST: the whole set's identity and this split's files' MD5s (the digest is made of them)."""
    from ieskips.data import mnist

    if dataset != "mnist":
        return {}
    return {"files": mnist.IDENTITY, "md5": {name: mnist.FILES[name][1] for name in mnist.SPLITS[split]}}
