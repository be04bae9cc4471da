"""SweepSpec: a sweep YAML file -> a validated model. Mistakes are found here, before Ray starts."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ieskips.attacks import attack_label
from ieskips.config import TrialConfig
from ieskips.errors import ConfigError

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
SHARED_SCHEMES = ("s3://", "gs://", "gcs://", "hdfs://", "abfs://", "az://")
LOCAL_TRACKING = ("sqlite:", "file:")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Distribution(_Strict):
    type: Literal["uniform", "loguniform", "int", "choice"]  # how Optuna samples the key
    low: Optional[float] = None  # uniform / loguniform / int bounds
    high: Optional[float] = None
    values: Optional[list[Any]] = None  # choice

    @model_validator(mode="after")
    def _bounds(self):
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice distribution needs a non-empty 'values' list")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a {self.type} distribution needs low < high")
        elif self.type == "loguniform" and self.low <= 0:
            raise ValueError("a loguniform distribution needs low > 0")
        return self


class Search(_Strict):
    samples: int = Field(8, ge=1)  # Optuna trials in all (at least one per grid point)
    metric: str = "robust_acc/worst"  # robust accuracy: clean accuracy is the wrong target here
    mode: Literal["max", "min"] = "max"
    seed: int = 0  # sampler seed, so a search is repeatable
    params: dict[str, Distribution] = Field(min_length=1)  # trial config key -> distribution


class Scheduler(_Strict):
    type: Literal["asha"] = "asha"
    metric: str = "robust_acc/worst"  # early-stop on robust accuracy, not clean accuracy
    mode: Literal["max", "min"] = "max"
    grace_period: int = Field(1, ge=1)  # epochs every trial gets before it can be stopped
    reduction_factor: float = Field(2, gt=1)


class Resources(_Strict):
    cpu: float = Field(1, gt=0)  # CPUs per trial (torch uses this many threads)
    gpu: float = Field(0, ge=0)  # GPUs per trial; fractions (0.25) let small trials share one GPU
    memory_gb: Optional[float] = Field(None, gt=0)  # host memory Ray reserves per trial (None: no reservation)

    def ray(self) -> dict:
        out = {"cpu": self.cpu, "gpu": self.gpu}
        if self.memory_gb:
            out["memory"] = int(self.memory_gb * 2**30)
        return out


class Budget(_Strict):
    gpu_hours: Optional[float] = Field(None, gt=0)  # GPUs held x wall hours, over every launch of the sweep
    cpu_hours: Optional[float] = Field(None, gt=0)  # the same in CPUs, for sweeps that hold no GPU

    @model_validator(mode="after")
    def _one(self):
        if (self.gpu_hours is None) == (self.cpu_hours is None):
            raise ValueError("give one of gpu_hours or cpu_hours")
        return self

    @property
    def kind(self) -> str:
        return "gpu" if self.gpu_hours is not None else "cpu"

    @property
    def hours(self) -> float:
        return self.gpu_hours if self.gpu_hours is not None else self.cpu_hours


class ReportColumn(_Strict):
    label: str  # the paper's column header, e.g. "Robust Acc (%)"
    metric: str  # the MLflow metric behind it, e.g. "final/robust_acc/fgsm" (fractions; shown in %)
    x: Optional[float] = None  # a figure's x position for this column (e.g. PGD steps in Fig. 5)
    scale: float = 100  # shown as value x scale: 100 for fractions (as %), 1 for ratios such as a stage gain


class ReportRow(_Strict):
    label: str  # the paper's row, e.g. "IE-ResNet-1-18"
    match: dict[str, Any]  # trial config values a run must have to belong to this row
    published: list[Optional[float]] = Field(default_factory=list)  # per column, in %; null = not stated
    baseline: Optional[str] = None  # the vanilla row to compare with (IE-vs-vanilla gap, paired by seed)


class Claim(_Strict):
    """What the paper says one row does better than another; orchestration/reports/claims.py checks it."""
    statement: str = Field(min_length=1)  # the paper's claim in a sentence, with its section: "... (§5.2, Table 1)"
    row: str  # the row the paper says wins, e.g. "IE-ResNet-1-18"
    beats: str  # the row it wins against, e.g. "ResNet-18"
    column: str  # the column it wins on, the paper's attack: e.g. "Robust Acc (%)"
    beats_column: Optional[str] = None  # the baseline's column, where the paper compares across (Table 4's oracles)
    where: dict[str, Any] = Field(default_factory=dict)  # config values both sides' runs must have (Fig. 4: a depth)
    beats_where: dict[str, Any] = Field(default_factory=dict)  # and the baseline's on top (Fig. 6: K=0 in the same row)
    natural_tolerance: float = Field(1.0, ge=0)  # points the row's natural accuracy may lag and still be comparable


class Report(_Strict):
    title: str  # "Table 1: ..." as the paper captions it
    kind: Literal["table", "figure"] = "table"
    rows: list[ReportRow] = Field(min_length=1)
    columns: list[ReportColumn] = Field(min_length=1)
    x: Literal["columns", "epoch"] | str = "columns"  # figures: column x values, epochs, or a config key
    x_metric: Optional[str] = None  # figures: x is this metric, one point per run (a scatter), e.g. a diagnostic
    note: Optional[str] = None  # e.g. "published only as a plot: no numbers to compare with"
    claims: list[Claim] = Field(default_factory=list)  # the paper's claims this table or figure supports

    @model_validator(mode="after")
    def _claims_name_rows_and_columns(self):
        rows, columns = [r.label for r in self.rows], [c.label for c in self.columns]
        for i, claim in enumerate(self.claims):
            for name in (claim.row, claim.beats):
                if name not in rows:
                    raise ValueError(f"claims[{i}]: {name!r} is not a row of the report (rows: {', '.join(rows)})")
            for name in (claim.column, claim.beats_column or claim.column):
                if name not in columns:
                    raise ValueError(f"claims[{i}]: {name!r} is not a column of the report "
                                     f"(columns: {', '.join(columns)})")
            unknown = sorted((set(claim.where) | set(claim.beats_where)) - set(TrialConfig.model_fields))
            if unknown:  # a misspelt key would match no run: "not shown", silently
                raise ValueError(f"claims[{i}]: {unknown[0]!r} in where/beats_where is not a trial config key")
            if claim.row == claim.beats and not claim.beats_where:
                raise ValueError(f"claims[{i}]: {claim.row!r} would beat itself; name another row in 'beats' "
                                 "or the baseline's runs in 'beats_where'")
        return self


class SweepSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # the sweep's directory and MLflow tag
    experiment: str = "ieskips"  # MLflow experiment that holds the parent run and the trial runs
    paper_table: Optional[str] = None  # which table or figure of the paper this sweep regenerates
    base: dict[str, Any] = Field(default_factory=dict)  # trial config shared by every trial
    grid: dict[str, list[Any]] = Field(default_factory=dict)  # every combination is run
    search: Optional[Search] = None  # Optuna over the keys in search.params, on top of the grid
    scheduler: Optional[Scheduler] = None  # ASHA early stopping
    resources: Resources = Resources()
    max_concurrent: int = Field(2, ge=1)  # trials at once (a searcher runs one at a time otherwise)
    storage_path: Optional[str] = None  # Tune's results; shared storage (NFS, s3://) on a cluster
    storage_shared: bool = False  # a local-looking storage_path that every node mounts (NFS)
    tracking_uri: Optional[str] = None  # MLflow; default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    retries: int = Field(2, ge=0)  # attempts after a failure (node loss), each from the last checkpoint
    budget: Optional[Budget] = None  # device-hours for the whole sweep: no trial starts that would exceed it
    report: Optional[Report] = None  # the paper's table or figure this sweep regenerates

    @model_validator(mode="after")
    def _keys_are_trial_config_fields(self):
        fields = TrialConfig.model_fields
        swept = {**self.grid, **(self.search.params if self.search else {})}
        for key in [*self.base, *swept]:
            if key not in fields and key != "preset":
                raise ValueError(f"{key!r} is not a trial config key (valid: {', '.join(fields)})")
        both = set(self.grid) & set(self.search.params if self.search else {})
        if both:
            raise ValueError(f"{sorted(both)} are both in grid and search.params; keep each key in one")
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid key {key!r} has no values")
        if self.search and self.scheduler and self.search.metric != self.scheduler.metric:
            raise ValueError("search.metric and scheduler.metric differ; use one metric for both")
        if self.budget and self.budget.kind == "gpu" and not self.resources.gpu:
            raise ValueError("budget.gpu_hours counts GPUs, but resources.gpu is 0: use budget.cpu_hours")
        return self

    @property
    def metric(self) -> tuple[str, str]:
        target = self.search or self.scheduler
        return (target.metric, target.mode) if target else ("robust_acc/worst", "max")

    def grid_points(self) -> list[dict]:
        keys = list(self.grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*self.grid.values())]

    def trial_configs(self) -> list[TrialConfig]:
        """The config of every grid point (searched keys at their defaults): validates every value."""
        return [TrialConfig.from_dict({**self.base, **point}) for point in self.grid_points()]


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"sweep file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"sweep file {path} must hold a mapping")
    return parse_spec(values, str(path))


def parse_spec(values: dict, where: str = "sweep") -> SweepSpec:
    try:
        spec = SweepSpec(**values)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = str(first.get("ctx", {}).get("error", first["msg"])).removeprefix("Value error, ")
        raise ConfigError(f"{where}: {loc + ': ' if loc else ''}{msg}") from None
    try:
        spec.trial_configs()
        _check_search_bounds(spec)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return spec


def _check_search_bounds(spec: SweepSpec) -> None:
    """Every value a search can sample makes a valid trial config (its bounds and choices checked now,
    not in a trial)."""
    if spec.search is None:
        return
    point = spec.grid_points()[0]
    for key, dist in spec.search.params.items():
        values = dist.values if dist.type == "choice" else [dist.low, dist.high]
        for value in values:
            value = int(value) if dist.type == "int" else value
            try:
                TrialConfig.from_dict({**spec.base, **point, key: value})
            except ConfigError as err:
                raise ConfigError(f"search.params.{key}: {value!r} would be sampled, but {err}") from None


def check_cluster_storage(spec: SweepSpec, tracking_uri: str, nodes: int) -> None:
    """On more than one node, results and runs must live where every node can reach them."""
    if nodes <= 1:
        return
    storage = spec.storage_path or ""
    if not (storage.startswith(SHARED_SCHEMES) or (storage and spec.storage_shared)):
        raise ConfigError(f"the cluster has {nodes} nodes: storage_path must be shared storage (s3://..., or an "
                          "NFS path with storage_shared: true), not a local directory")
    if tracking_uri.startswith(LOCAL_TRACKING) or "://" not in tracking_uri:
        raise ConfigError(f"the cluster has {nodes} nodes: tracking_uri {tracking_uri} is local to this machine; "
                          "use an MLflow server (http://...)")


SMOKE_BASE = {"dataset": "digits", "width": 4, "epochs": 2, "batch_size": 64, "train_subset": 256,
              "test_subset": 64, "eval_subset": 32, "milestones": [], "train_steps": 2, "device": "cpu"}
SMOKE_CAPS = {"steps": 3, "queries": 50, "restarts": 1}


def smoke_spec(spec: SweepSpec) -> SweepSpec:
    """The same sweep, shrunk to run in minutes on 2 CPU cores anywhere: digits, width 4, 2 epochs,
    a few hundred images, short attacks, one seed, local storage and tracking, CPU only."""
    values = spec.model_dump(mode="json")
    attacks = values["base"].get("eval_attacks", TrialConfig.model_fields["eval_attacks"].default)
    values["base"] = {**values["base"], **SMOKE_BASE, "eval_attacks": [_smoke_attack(a) for a in attacks]}
    grid = {k: [SMOKE_BASE[k]] if k in SMOKE_BASE else v for k, v in values["grid"].items()}
    if "seed" in grid:
        grid["seed"] = grid["seed"][:1]
    if "eval_attacks" in grid:
        grid["eval_attacks"] = [[_smoke_attack(a) for a in option] for option in grid["eval_attacks"]]
    values.update(grid=grid, name=f"{spec.name}-smoke", storage_path=None, storage_shared=False,
                  tracking_uri=None, resources={"cpu": 1, "gpu": 0}, budget=None)
    if values["search"]:
        values["search"]["samples"] = min(values["search"]["samples"], 4)
    return parse_spec(values, f"{spec.name} (smoke)")


def _smoke_attack(spec: dict) -> dict:
    """The attack shortened, under its original metric name (so reports find their columns)."""
    out = {**spec, "label": attack_label(spec)}
    if out["name"] == "transfer":
        source = out.get("source")
        # A source sweep's run becomes its smoke sweep's; a checkpoint path is not there in a smoke run.
        source = {**source, "sweep": f"{source['sweep']}-smoke"} if isinstance(source, dict) else "explicit"
        return {**out, "source": source, "attack": _smoke_attack(out.get("attack", {"name": "fgsm"}))}
    for key, cap in SMOKE_CAPS.items():
        if key in out:
            out[key] = min(out[key], cap)
    if out["name"] == "cw_l2":
        out["steps"] = min(out.get("steps", 50), SMOKE_CAPS["steps"])
    if out["name"] == "square":
        out["queries"] = min(out.get("queries", 5000), SMOKE_CAPS["queries"])
    return out
