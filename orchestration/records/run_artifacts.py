"""What a run keeps in MLflow besides metrics: its stored model, its per-example results, and the
runs that other sweeps name as transfer oracles.

Layout of a trial's artifacts (beside ``config.json`` and ``manifest.json``):
- ``model/weights.pt``: config and weights (``ieskips.stored``), read with ``torch.load(weights_only=True)``;
- ``per_example/<label>.npz``: per attack label (and ``natural``), which test examples the model got
  right, with their indices and the test set's identity. Append-only, one file per label, so that
  evaluations at different times never rewrite each other's files;
- ``resume/checkpoint.pt``: while the trial runs, its latest checkpoint (``ieskips.training``), rewritten
  with each one, so that a trial whose machine and Tune storage are gone resumes from the store (or
  from a bundle exported from it) instead of starting again. A finished run's is left out of bundles.
The model is also registered as an MLflow 3 *logged model* of the run (shown in the run's UI), holding
a pointer to the weights rather than a pickled copy: MLflow's own PyTorch flavour would need unsafe
unpickling to load.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from ieskips.attacks import attack_label
from ieskips.config import TrialConfig
from ieskips.errors import ConfigError
from ieskips.evaluation import ExampleResults
from ieskips.stored import MODEL_FILE, read_model, save_model
from ieskips.training import source_key
from ieskips.training.checkpoint import CHECKPOINT_NAME

from .tracking import EARLY_STOP_TAG, sweep_trial_runs

log = logging.getLogger("ieskips")
MODEL_DIR, RESULTS_DIR, RESUME_DIR = "model", "per_example", "resume"
MODEL_ARTIFACT, RESUME_ARTIFACT = f"{MODEL_DIR}/{MODEL_FILE}", f"{RESUME_DIR}/{CHECKPOINT_NAME}"


def store_model(client, run_id: str, config: TrialConfig, model, experiment_id: str, step: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifact(run_id, str(save_model(config, model, Path(tmp) / MODEL_FILE)), MODEL_DIR)
    _register(client, run_id, config, experiment_id, step)


def _register(client, run_id: str, config: TrialConfig, experiment_id: str, step: int) -> None:
    """The run's logged model (once, also when a retry stores the model again)."""
    from mlflow.entities import LoggedModelOutput

    if client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'", max_results=1):
        return
    pointer = {"weights": f"runs:/{run_id}/{MODEL_ARTIFACT}", "config": config.to_dict(),
               "load": "ieskips evaluate --run RUN_ID, or ieskips.stored.read_model(path) after downloading"}
    found = client.create_logged_model(experiment_id, name=config.model, source_run_id=run_id,
                                       model_type="ieskips", tags={"ieskips.weights": pointer["weights"]})
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "ieskips_model.json").write_text(json.dumps(pointer, indent=1))
        client.log_model_artifacts(found.model_id, tmp)
    client.finalize_logged_model(found.model_id, "READY")
    client.log_outputs(run_id, [LoggedModelOutput(found.model_id, step)])


def store_resume_point(client, run_id: str, checkpoint: Path) -> None:
    client.log_artifact(run_id, str(checkpoint), RESUME_DIR)


def fetch_resume_point(client, run_id: str, folder: Path) -> Path | None:
    """The run's stored checkpoint, downloaded into ``folder``; None where it has none."""
    if not any(a.path == RESUME_ARTIFACT for a in client.list_artifacts(run_id, RESUME_DIR)):
        return None
    return Path(client.download_artifacts(run_id, RESUME_ARTIFACT, str(folder)))


def has_model(client, run_id: str) -> bool:
    return any(a.path == MODEL_ARTIFACT for a in client.list_artifacts(run_id, MODEL_DIR))


def stored_model(client, run_id: str, folder: Path) -> dict:
    """Download and read the run's stored model; ConfigError when it is missing or unreadable."""
    if not has_model(client, run_id):
        raise ConfigError(f"run {run_id} has no stored model ({MODEL_ARTIFACT}); it was trained before models "
                          "were stored, or its upload failed: retrain it")
    path = client.download_artifacts(run_id, MODEL_ARTIFACT, str(folder))
    try:
        return read_model(path)
    except ConfigError as err:
        raise ConfigError(f"run {run_id}: {err}") from None


def store_results(client, run_id: str, results: ExampleResults, labels=None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for label in labels or results.masks:
            (Path(tmp) / f"{label}.npz").write_bytes(results.to_bytes(label))
        client.log_artifacts(run_id, tmp, RESULTS_DIR)


def stored_labels(client, run_id: str) -> set[str]:
    """Attack labels with per-example results in the run ("natural" excluded)."""
    names = {Path(a.path).name for a in client.list_artifacts(run_id, RESULTS_DIR)}
    return {n.removesuffix(".npz") for n in names if n.endswith(".npz")} - {"natural"}


def stored_results(client, run_id: str, folder: Path) -> ExampleResults | None:
    if not client.list_artifacts(run_id, RESULTS_DIR):
        return None
    local = Path(client.download_artifacts(run_id, RESULTS_DIR, str(folder)))
    return ExampleResults.from_files(sorted(local.glob("*.npz")))


# --- transfer sources that name another sweep's run ----------------------------------------------

def oracle_specs(specs) -> list[dict]:
    """The transfer attacks among ``specs`` whose source names another sweep's run."""
    return [s for s in specs if s["name"] == "transfer" and isinstance(s.get("source"), dict)]


def find_oracle(client, experiment_id: str, source: dict, seed: int):
    """The finished run of ``source["sweep"]`` whose config matches ``source["match"]`` and the seed
    (``same``: the evaluated trial's); ConfigError naming what is missing."""
    experiment = source.get("experiment")
    if experiment:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise ConfigError(f"transfer source {source}: no MLflow experiment {experiment!r}")
        experiment_id = found.experiment_id
    want = {**source.get("match", {}), "seed": seed if source.get("seed", "same") == "same" else source["seed"]}
    for run in sweep_trial_runs(client, experiment_id, source["sweep"]):
        params = run.data.params
        if (run.info.status == "FINISHED" and run.data.tags.get(EARLY_STOP_TAG) != "true"
                and all(params.get(k) == str(v) for k, v in want.items()) and has_model(client, run.info.run_id)):
            return run
    raise ConfigError(f"transfer source: sweep {source['sweep']!r} has no finished run with a stored model "
                      f"matching {want}; run that sweep first (with --smoke, the source is its smoke sweep)")


def resolve_oracles(client, experiment_id: str, specs, seed: int, folder: Path) -> tuple[dict, dict]:
    """Download the oracle of every transfer attack in ``specs`` that names a sweep's run:
    ``(oracles for Trial.build / evaluate_stored, oracle run id by attack label)``."""
    oracles, run_ids = {}, {}
    for spec in oracle_specs(specs):
        run = find_oracle(client, experiment_id, spec["source"], seed)
        target = folder / run.info.run_id
        target.mkdir(parents=True, exist_ok=True)
        oracles[source_key(spec["source"])] = client.download_artifacts(run.info.run_id, MODEL_ARTIFACT, str(target))
        run_ids[attack_label(spec)] = run.info.run_id
    return oracles, run_ids
