"""SweepSpec -> tune.Tuner (grid, Optuna, ASHA, resources, storage, retries), run, resume, status."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml
from ray import tune

from ieskips.errors import ConfigError

from .spec import SweepSpec, parse_spec
from .tracking import close_trial_run, connect, sweep_parent_run, sweep_trial_runs
from .trainable import run_trial

log = logging.getLogger("ieskips")
SPEC_FILE, STATE_FILE = "ieskips_sweep.yaml", "ieskips_tracking.json"


def default_storage() -> str:
    return str(Path.cwd() / "ray_results")


def experiment_dir(spec: SweepSpec) -> str:
    storage = spec.storage_path or default_storage()
    return f"{storage.rstrip('/')}/{spec.name}"


class TrackingCallback(tune.Callback):
    """Ends the MLflow run of a trial the scheduler stopped early, or that failed for good, while the
    sweep goes on (the trial's own process cannot: it has been stopped)."""

    def __init__(self, tracking: dict):
        self.tracking = tracking

    def _close(self, trial, status):
        from mlflow.tracking import MlflowClient

        close_trial_run(MlflowClient(self.tracking["tracking_uri"]), self.tracking["experiment_id"],
                        self.tracking["name"], trial.trial_id, status)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial, "stopped")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, "FAILED")


def _distribution(dist):
    if dist.type == "choice":
        return tune.choice(dist.values)
    if dist.type == "int":
        return tune.randint(int(dist.low), int(dist.high) + 1)
    return (tune.loguniform if dist.type == "loguniform" else tune.uniform)(dist.low, dist.high)


def _centre(dist):
    """Where an enqueued grid point sets a searched key (Optuna needs every key in a point)."""
    if dist.type == "choice":
        return dist.values[0]
    if dist.type == "int":
        return int(round((dist.low + dist.high) / 2))
    return (dist.low * dist.high) ** 0.5 if dist.type == "loguniform" else (dist.low + dist.high) / 2


def _search_setup(spec: SweepSpec):
    """param_space, search algorithm and number of samples.

    Grid only: Tune's grid. With a search: Optuna over the searched keys and the grid keys as
    categories, every grid point enqueued first (searched keys at the centre of their range), so each
    is run at least once (OptunaSearch cannot take a grid_search)."""
    if spec.search is None:
        return {k: tune.grid_search(v) for k, v in spec.grid.items()}, None, 1
    from ray.tune.search.optuna import OptunaSearch

    space = {k: _distribution(d) for k, d in spec.search.params.items()}
    space.update({k: tune.choice(v) for k, v in spec.grid.items()})
    centre = {k: _centre(d) for k, d in spec.search.params.items()}
    points = [{**centre, **point} for point in spec.grid_points()] if spec.grid else None
    searcher = OptunaSearch(points_to_evaluate=points, seed=spec.search.seed, study_name=spec.name)
    return space, searcher, max(spec.search.samples, len(points or ()))


def trainable_for(spec: SweepSpec, tracking: dict):
    """The Tune trainable: ``run_trial`` with the shared config, tracking info and resources."""
    return tune.with_resources(tune.with_parameters(run_trial, base=tracking["base"], sweep=tracking),
                               {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def build_tuner(spec: SweepSpec, tracking: dict) -> tune.Tuner:
    # Tune insists every report carries its metric; only a search or a scheduler needs one.
    metric, mode = spec.metric if (spec.search or spec.scheduler) else (None, None)
    space, searcher, samples = _search_setup(spec)
    scheduler = None
    if spec.scheduler:
        epochs = max(c.epochs for c in spec.trial_configs())
        scheduler = tune.schedulers.ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                                                  grace_period=spec.scheduler.grace_period,
                                                  reduction_factor=spec.scheduler.reduction_factor)
    return tune.Tuner(
        trainable_for(spec, tracking), param_space=space,
        tune_config=tune.TuneConfig(metric=metric, mode=mode, search_alg=searcher, scheduler=scheduler,
                                    num_samples=samples, max_concurrent_trials=spec.max_concurrent,
                                    reuse_actors=True),  # imports and the MLflow store once per worker
        run_config=tune.RunConfig(name=spec.name, storage_path=spec.storage_path or default_storage(),
                                  failure_config=tune.FailureConfig(max_failures=spec.retries),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                  callbacks=[TrackingCallback(tracking)], verbose=1))


def prepare(spec: SweepSpec, tracking_uri: str) -> dict:
    """Create (or find) the experiment and the sweep's parent run; what every trial needs to log."""
    from mlflow.tracking import MlflowClient

    experiment_id = connect(tracking_uri, spec.experiment)
    parent = sweep_parent_run(MlflowClient(tracking_uri), experiment_id, spec.name,
                              {"paper_table": spec.paper_table or ""})
    base = dict(spec.base)
    if "data_dir" in base:  # trials run in their own directories: make the data path absolute
        base["data_dir"] = str(Path(base["data_dir"]).resolve())
    return {"name": spec.name, "tracking_uri": tracking_uri, "experiment_id": experiment_id,
            "parent_id": parent, "threads": spec.resources.cpu, "base": base}


def save_state(spec: SweepSpec, tracking: dict) -> None:
    folder = Path(experiment_dir(spec))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPEC_FILE).write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    (folder / STATE_FILE).write_text(json.dumps(tracking, indent=1))


def load_state(name: str, storage: str | None) -> tuple[SweepSpec, dict, str]:
    folder = Path(storage or default_storage()) / name
    if not (folder / SPEC_FILE).is_file():
        raise ConfigError(f"no sweep {name!r} under {folder.parent}; pass --storage where it was run")
    spec = parse_spec(yaml.safe_load((folder / SPEC_FILE).read_text()), str(folder / SPEC_FILE))
    return spec, json.loads((folder / STATE_FILE).read_text()), str(folder)


def finish(spec: SweepSpec, tracking: dict, results) -> dict:
    """Close whatever the sweep left open: every trial run ends, and the parent with the sweep."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking["tracking_uri"])
    states = {}
    for result in results:
        trial_id = result.metrics.get("trial_id") if result.metrics else None
        if trial_id:
            states[trial_id] = "FAILED" if result.error else "stopped"
    for run in sweep_trial_runs(client, tracking["experiment_id"], spec.name):
        if run.info.status == "RUNNING":
            trial_id = run.data.tags.get("ieskips.trial_id")
            close_trial_run(client, tracking["experiment_id"], spec.name, trial_id, states.get(trial_id, "KILLED"))
    errors = sum(1 for r in results if r.error)
    client.set_terminated(tracking["parent_id"], "FAILED" if errors else "FINISHED")
    return {"trials": len(results), "errors": errors}
