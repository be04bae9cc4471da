"""SweepSpec -> tune.Tuner (the trials a sweep lacks, Optuna, ASHA, resources, storage, retries, budget),
run, resume, and the end of a launch.

A sweep lives in ``<storage>/<name>/``: the latest sweep file and tracking info (``ieskips_*``), and
one Tune experiment per launch (``launch-<time>``): ``sweep run`` on a sweep that exists starts a new
launch with only the trials whose identity has no complete run; ``sweep resume`` restores the latest
launch after its driver died.
"""
from __future__ import annotations

import json
import logging
import pickle
import re
from datetime import datetime, timezone
from pathlib import Path

import yaml
from ray import tune
from ray.tune.search import Searcher

from ieskips.errors import ConfigError

from .budget import Ledger, log_sweep_total, run_hours
from .identity import TrialNamer, identity, naming, trial_config, trial_dirname
from .spec import SweepSpec, parse_spec
from ..records.tracking import ERROR_TAG, close_trial_run, connect, one_line, sweep_parent_run, sweep_trial_runs
from .trainable import run_trial

log = logging.getLogger("ieskips")
SPEC_FILE, STATE_FILE = "ieskips_sweep.yaml", "ieskips_tracking.json"


def default_storage() -> str:
    return str(Path.cwd() / "ray_results")


def sweep_dir(spec_or_name, storage: str | None = None) -> str:
    """``<storage>/<name>``: the sweep's folder (its launches are Tune experiments inside it)."""
    name = spec_or_name if isinstance(spec_or_name, str) else spec_or_name.name
    storage = storage if isinstance(spec_or_name, str) else spec_or_name.storage_path
    return f"{(storage or default_storage()).rstrip('/')}/{name}"


def new_launch() -> str:
    return "launch-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")


class TrackingCallback(tune.Callback):
    """Ends the MLflow run of a trial the scheduler stopped early, or that failed for good, while the
    sweep goes on (the trial's own process cannot: it has been stopped, or it died)."""

    def __init__(self, tracking: dict):
        self.tracking = tracking

    def _close(self, trial, status, cause=""):
        from mlflow.tracking import MlflowClient

        close_trial_run(MlflowClient(self.tracking["tracking_uri"]), self.tracking["experiment_id"],
                        self.tracking["name"], trial.trial_id, status, cause)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial, "stopped")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, "FAILED", _error_text(trial))


def _error_text(trial) -> str:
    try:
        path = trial.error_file
        text = Path(path).read_text() if path and Path(path).is_file() else ""
    except (OSError, AttributeError):
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("Failure #")]
    raised = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b[^:]*:", line)]  # "ValueError: ..."
    chosen = raised[-1] if raised else lines[0] if lines else f"the trial failed {trial.num_failures} times"
    return one_line(chosen)


class SweepSearcher(Searcher):
    """Hands Tune the trials a sweep lacks: its grid points in order, or (with a search) Optuna's
    samples, the grid points enqueued first. A sample whose identity is already complete is told to
    Optuna with its known result and another is drawn; one already running is dropped (told as pruned).
    Before each trial it asks the budget's ledger; once a trial would not fit, it hands out no more."""

    def __init__(self, base: dict, points: list, samples: int, ledger: Ledger, inner=None, known=(),
                 done=(), metric=None, mode=None):
        super().__init__(metric=metric, mode=mode)
        self.base, self.points, self.samples, self.ledger, self.inner = base, list(points), samples, ledger, inner
        self.known = list(known)  # (point, value) of complete runs: the searcher's head start
        self.done = dict(done)  # identity -> known value (None: complete, no value)
        self.live: dict[str, str] = {}  # trial id -> identity
        self.inner_ids: dict[str, str] = {}  # trial id -> the id Optuna knows the sample by
        self.handed = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        if self.inner is None:
            return False
        if not self.inner.set_search_properties(metric, mode, config, **spec):
            return False
        self._metric, self._mode = metric or self._metric, mode or self._mode
        for point, value in self.known:
            try:
                self.inner.add_evaluated_point(point, value)
            except Exception as err:  # noqa: BLE001  (a point the current space refuses: skip it)
                log.info("not handed to the searcher: %s (%s)", point, one_line(err))
        return True

    def suggest(self, trial_id: str):
        if self.handed >= self.samples:
            return Searcher.FINISHED
        if not self.ledger.admits():
            return Searcher.FINISHED
        point = self._draw(trial_id)
        if point is None or point == Searcher.FINISHED:
            return point
        config = trial_config(self.base, point)
        self.handed += 1
        self.live[trial_id] = identity(config)
        self.ledger.start(trial_id, config.epochs)
        return point

    def _draw(self, trial_id: str):
        if self.inner is None:
            return self.points[self.handed] if self.handed < len(self.points) else Searcher.FINISHED
        for attempt in range(100):
            inner_id = trial_id if attempt == 0 else f"{trial_id}~{attempt}"
            point = self.inner.suggest(inner_id)
            if point is None or point == Searcher.FINISHED:
                return point
            ident = identity(trial_config(self.base, point))
            if ident in self.done or ident in self.live.values():
                value = self.done.get(ident)
                self.inner.on_trial_complete(inner_id, result={self.metric: value} if value is not None else None)
                continue
            self.inner_ids[trial_id] = inner_id
            return point
        return Searcher.FINISHED  # the space holds nothing new

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.ledger.update(trial_id, result)
        if self.inner is not None and trial_id in self.inner_ids:
            self.inner.on_trial_result(self.inner_ids[trial_id], result)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        self.ledger.complete(trial_id, result)
        ident = self.live.pop(trial_id, None)
        if ident is not None and not error:
            self.done[ident] = (result or {}).get(self.metric) if self.metric else None
        if self.inner is not None and trial_id in self.inner_ids:
            self.inner.on_trial_complete(self.inner_ids.pop(trial_id), result=result, error=error)

    def save(self, checkpoint_path: str):
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__.copy(), handle)

    def restore(self, checkpoint_path: str):
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))


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


def searcher_for(spec: SweepSpec, base: dict, todo, ledger: Ledger):
    """param_space and the SweepSearcher. Grid only: the points still to run, in order. With a search:
    Optuna over the searched keys and the grid keys as categories, the grid points still to run enqueued
    first (searched keys at the centre of their range; OptunaSearch cannot take a grid_search), the
    complete runs' results handed to it first."""
    done = {ident: None for ident in todo.done}
    if spec.search is None:
        return {}, SweepSearcher(base, todo.points, todo.samples, ledger, done=done)
    from ray.tune.search.optuna import OptunaSearch

    space = {k: _distribution(d) for k, d in spec.search.params.items()}
    space.update({k: tune.choice(v) for k, v in spec.grid.items()})
    centre = {k: _centre(d) for k, d in spec.search.params.items()}
    points = [{**centre, **point} for point in todo.points] if spec.grid and todo.points else None
    inner = OptunaSearch(points_to_evaluate=points, seed=spec.search.seed, study_name=spec.name)
    for point, value in todo.known:
        done[identity(trial_config(base, point))] = value
    metric, mode = spec.metric
    return space, SweepSearcher(base, [], todo.samples, ledger, inner, todo.known, done, metric, mode)


def trainable_for(spec: SweepSpec, tracking: dict):
    """The Tune trainable: ``run_trial`` with the shared config, tracking info and resources."""
    return tune.with_resources(tune.with_parameters(run_trial, base=tracking["base"], sweep=tracking),
                               spec.resources.ray())


def ledger_for(spec: SweepSpec, runs) -> Ledger:
    """The budget's account at the start of a launch: what the sweep's runs have spent so far."""
    kind = spec.budget.kind if spec.budget else ("gpu" if spec.resources.gpu else "cpu")
    unit = spec.resources.gpu if kind == "gpu" else spec.resources.cpu
    seen = [run_hours(r, kind) for r in runs if r.info.status == "FINISHED" and run_hours(r, kind) > 0]
    return Ledger(spec.budget.hours if spec.budget else None, kind, unit, sum(run_hours(r, kind) for r in runs), seen)


def build_tuner(spec: SweepSpec, tracking: dict, todo, ledger: Ledger) -> tune.Tuner:
    # Tune insists every report carries its metric; only a search or a scheduler needs one.
    metric, mode = spec.metric if (spec.search or spec.scheduler) else (None, None)
    space, searcher = searcher_for(spec, tracking["base"], todo, ledger)
    scheduler = None
    if spec.scheduler:
        epochs = max(c.epochs for c in spec.trial_configs())
        scheduler = tune.schedulers.ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                                                  grace_period=spec.scheduler.grace_period,
                                                  reduction_factor=spec.scheduler.reduction_factor)
    return tune.Tuner(
        trainable_for(spec, tracking), param_space=space or None,
        tune_config=tune.TuneConfig(metric=metric, mode=mode, search_alg=searcher, scheduler=scheduler,
                                    num_samples=max(1, todo.samples), max_concurrent_trials=spec.max_concurrent,
                                    reuse_actors=True,  # imports and the MLflow store once per worker
                                    trial_name_creator=TrialNamer(tracking["base"], tracking["names"]),
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=tracking["launch"], storage_path=sweep_dir(spec),
                                  failure_config=tune.FailureConfig(max_failures=spec.retries),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                  callbacks=[TrackingCallback(tracking)], verbose=1))


def prepare(spec: SweepSpec, tracking_uri: str, launch: str) -> dict:
    """Create (or find) the experiment and the sweep's parent run; what every trial needs to log."""
    from mlflow.tracking import MlflowClient

    experiment_id = connect(tracking_uri, spec.experiment)
    parent = sweep_parent_run(MlflowClient(tracking_uri), experiment_id, spec.name,
                              {"paper_table": spec.paper_table or ""})
    base = dict(spec.base)
    # Trials run in their own directories: a data path made absolute (None: each node's default_root()).
    if base.get("data_dir"):
        base["data_dir"] = str(Path(base["data_dir"]).resolve())
    return {"name": spec.name, "tracking_uri": tracking_uri, "experiment_id": experiment_id,
            "parent_id": parent, "threads": spec.resources.cpu, "gpu": spec.resources.gpu, "base": base,
            "launch": launch, "names": naming(spec)}


def save_state(spec: SweepSpec, tracking: dict) -> None:
    folder = Path(sweep_dir(spec))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPEC_FILE).write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    (folder / STATE_FILE).write_text(json.dumps(tracking, indent=1))


def load_state(name: str, storage: str | None) -> tuple[SweepSpec, dict, str]:
    """The sweep's latest file, its tracking info, and the folder of its latest launch."""
    folder = Path(sweep_dir(name, storage))
    if not (folder / SPEC_FILE).is_file():
        raise ConfigError(f"no sweep {name!r} under {folder.parent}; pass --storage where it was run")
    spec = parse_spec(yaml.safe_load((folder / SPEC_FILE).read_text()), str(folder / SPEC_FILE))
    tracking = json.loads((folder / STATE_FILE).read_text())
    return spec, tracking, str(folder / tracking["launch"]) if tracking.get("launch") else str(folder)


def finish(spec: SweepSpec, tracking: dict) -> dict:
    """Close whatever the launch left open (every trial run ends, the parent with the sweep) and say how
    it went: the launch's runs by state, the failures' causes, the sweep's device-hours."""
    from mlflow.tracking import MlflowClient

    from .identity import LAUNCH_TAG

    client = MlflowClient(tracking["tracking_uri"])
    for run in sweep_trial_runs(client, tracking["experiment_id"], spec.name):
        if run.info.status == "RUNNING":
            close_trial_run(client, tracking["experiment_id"], spec.name, run.data.tags.get("ieskips.trial_id"),
                            "KILLED", "the sweep ended before this trial did")
    runs = sweep_trial_runs(client, tracking["experiment_id"], spec.name)
    mine = sorted((r for r in runs if r.data.tags.get(LAUNCH_TAG) == tracking["launch"]),
                  key=lambda r: r.info.run_name or "")
    failed = [r for r in mine if r.info.status != "FINISHED" and r.data.tags.get("ieskips.stopped_early") != "true"]
    totals = log_sweep_total(client, tracking["parent_id"], runs)
    client.set_terminated(tracking["parent_id"], "FAILED" if failed else "FINISHED")
    return {"runs": mine, "failed": failed, "totals": totals,
            "causes": {r.info.run_id: r.data.tags.get(ERROR_TAG, "") for r in failed}}
