"""A trial's identity (a hash of its resolved config), its readable name, and what a sweep still lacks.

**Identity.** ``identity(config)`` hashes the resolved ``TrialConfig``: every field that decides what a
trial computes (model, K, gamma, data, training method and schedule, attacks, seed, precision, ...),
except ``RUNTIME`` fields, which decide only how and where it runs (device, data loading, checkpoint
frequency, data paths, the paper-table tag). Only values that differ from the field's default enter
the hash, so a field added to ``TrialConfig`` later (with a default that keeps the old behaviour)
leaves every existing identity as it was; changing an existing default must bump ``SCHEME``
(tests/orchestration/test_sweep_extend.py pins the defaults). Equal resolved values give equal
identities however the file spells them (``lr: 0.05`` or no ``lr`` at all).

**Names.** ``run_name``: ``<model>-K<ie_steps>-<method>-s<seed>``, then the other keys the sweep
varies (``g0.1`` for gamma, ``w16`` for width, ...), and a short hash where values are not readable
(searched values, lists): unique per identity within a sweep.

**What a sweep lacks.** ``pending(spec, runs)``: the grid points whose identity has no complete run
(FINISHED, or stopped early by the scheduler), and for a search the complete runs' results, handed to
the searcher before it samples more.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from ieskips.config import TrialConfig

IDENTITY_TAG, POINT_TAG, LAUNCH_TAG = "ieskips.identity", "ieskips.point", "ieskips.launch"
SCHEME = 1  # bump when the hash changes meaning (e.g. a TrialConfig default changes): every trial reruns
RUNTIME = ("device", "num_workers", "data_on_device", "channels_last", "checkpoint_every", "data_dir",
           "download", "paper_table")
NAMED = ("model", "ie_steps", "method", "seed")  # always in a name
SHORT = {"ie_step_size": "g", "width": "w", "train_eps": "eps", "train_steps": "steps", "epochs": "e",
         "trades_beta": "beta", "batch_size": "bs"}


def _defaults() -> dict:
    return TrialConfig.model_construct().to_dict()


def canonical(config: TrialConfig) -> dict:
    """The values an identity covers: non-runtime fields that differ from their defaults."""
    defaults = _defaults()
    return {k: v for k, v in config.to_dict().items() if k not in RUNTIME and v != defaults.get(k, object())}


def identity(config: TrialConfig) -> str:
    text = json.dumps({"scheme": SCHEME, "config": canonical(config)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def trial_config(base: dict, point: dict) -> TrialConfig:
    return TrialConfig.from_dict({**base, **point})


def _readable(value) -> bool:
    return isinstance(value, (bool, int, float, str))


def run_name(config: TrialConfig, varying=(), hashed: bool = False) -> str:
    """``varying``: config keys the sweep varies; ``hashed``: append the identity's first 6 characters
    (a search, whose sampled values make poor names)."""
    parts = [config.model, f"K{config.ie_steps}", config.method, f"s{config.seed}"]
    for key in sorted(set(varying) - set(NAMED)):
        value = getattr(config, key)
        if not _readable(value):
            hashed = True
        elif isinstance(value, bool):
            parts.append(key if value else f"no_{key}")
        else:
            parts.append(SHORT.get(key, key) + (f"{value:g}" if isinstance(value, float) else str(value)))
    if hashed:
        parts.append(identity(config)[:6])
    return "-".join(str(p).replace("/", "_") for p in parts)


def naming(spec) -> dict:
    """How the sweep names its runs: the keys it varies, and whether names carry a hash."""
    varying = sorted(k for k, values in spec.grid.items() if len(values) > 1)
    hashed = spec.search is not None
    if not hashed:
        base = dict(spec.base)
        names = [run_name(trial_config(base, p), varying) for p in spec.grid_points()]
        hashed = len(set(names)) < len(names)
    return {"varying": varying, "hashed": hashed}


class TrialNamer:
    """Tune's ``trial_name_creator``: the trial's run name (picklable, for a restored sweep)."""

    def __init__(self, base: dict, names: dict):
        self.base, self.names = base, names

    def __call__(self, trial) -> str:
        try:
            return run_name(trial_config(self.base, trial.config), **self.names)
        except Exception:  # noqa: BLE001  (a name must never stop a trial)
            return str(trial)


def trial_dirname(trial) -> str:
    return f"{str(trial)[:60]}_{trial.trial_id}"


# --- what a sweep lacks -----------------------------------------------------------------------------

def complete(run) -> bool:
    """A run that needs no rerun: FINISHED, or stopped early by the scheduler (its decision stands)."""
    return run.info.status == "FINISHED" or (
        run.info.status == "KILLED" and run.data.tags.get("ieskips.stopped_early") == "true")


@dataclass
class Pending:
    points: list  # grid points to run, in grid order
    done: dict  # identity -> complete run
    skipped: int  # grid points already complete (a search: complete samples handed to the searcher)
    known: list = field(default_factory=list)  # search: (point, metric value) of complete runs
    samples: int = 0  # trials this launch hands out (grid: len(points))
    identities: dict = field(default_factory=dict)  # identity of every grid point, in grid order


def pending(spec, runs) -> Pending:
    """What ``spec`` still lacks, given the sweep's trial runs (any launch)."""
    done = {}
    for run in runs:
        ident = run.data.tags.get(IDENTITY_TAG)
        if ident and complete(run):
            done.setdefault(ident, run)
    base = dict(spec.base)
    identities = {identity(trial_config(base, p)): p for p in spec.grid_points()}
    points = [p for ident, p in identities.items() if ident not in done]
    if spec.search is None:
        return Pending(points, done, len(identities) - len(points), samples=len(points), identities=identities)
    known = searcher_results(spec, done.values())
    wanted = max(spec.search.samples, len(identities))
    return Pending(points, done, len(known), known, max(len(points), wanted - len(known)), identities)


def searcher_results(spec, runs) -> list[tuple[dict, float]]:
    """(point, metric) of complete runs whose point lies in the file's current search space."""
    metric = spec.search.metric
    out = []
    for run in runs:
        point = json.loads(run.data.tags.get(POINT_TAG, "null") or "null")
        value = run.data.metrics.get(f"final/{metric}", run.data.metrics.get(metric))
        if isinstance(point, dict) and value is not None and in_space(spec, point):
            out.append((point, value))
    return out


def in_space(spec, point: dict) -> bool:
    """``point`` has exactly the searched and grid keys, each value inside its distribution or grid."""
    params = spec.search.params
    if set(point) != set(params) | set(spec.grid):
        return False
    for key, values in spec.grid.items():
        if point[key] not in values:
            return False
    for key, dist in params.items():
        value = point[key]
        if dist.type == "choice":
            if value not in dist.values:
                return False
        elif not isinstance(value, (int, float)) or not dist.low <= value <= dist.high:
            return False
    return True
