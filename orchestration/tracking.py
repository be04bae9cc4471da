"""MLflow: where runs go, and one run per trial with params, per-epoch metrics, tags and artifacts."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

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
    """Point MLflow at ``uri`` and make sure ``experiment`` exists; its id. Unreachable: ConfigError."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        found = mlflow.get_experiment_by_name(experiment)
        return found.experiment_id if found else mlflow.create_experiment(experiment)
    except Exception as err:  # noqa: BLE001  (mlflow raises many types for an unreachable store)
        raise ConfigError(f"cannot reach the MLflow tracking store {uri}: {str(err).splitlines()[0][:200]}; "
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
