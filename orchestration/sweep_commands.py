"""``ieskips sweep run | resume | status``."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ieskips.errors import ConfigError

from .spec import check_cluster_storage, load_spec, smoke_spec
from .tracking import resolve_tracking_uri


def connect_ray(address: str | None):
    """Join the cluster at ``address``, or start a local Ray; returns the number of alive nodes."""
    import ray

    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False if address is None else None,
                     log_to_driver=False, configure_logging=False)
        except ConnectionError as err:
            raise ConfigError(f"cannot reach the Ray cluster at {address}: {err}") from None
    return sum(1 for node in ray.nodes() if node["Alive"])


def sweep_spec(name_or_file: str, smoke: bool, storage: str | None):
    """A sweep file (its smoke version with ``smoke``), or the name of a sweep run here (its saved spec)."""
    from .tuner import load_state

    if Path(name_or_file).is_file():
        spec = load_spec(name_or_file)
        return smoke_spec(spec) if smoke else spec
    if name_or_file.endswith((".yaml", ".yml")):
        raise ConfigError(f"sweep file {name_or_file} does not exist")
    return load_state(name_or_file, storage)[0]


def check_oracles(spec, tracking_uri: str) -> None:
    """Every transfer source that names another sweep's run is there, for every trial's seed."""
    from mlflow.tracking import MlflowClient

    from .run_artifacts import find_oracle, oracle_specs
    from .tracking import check_reachable

    configs = [(c, oracle_specs(c.eval_attacks)) for c in spec.trial_configs()]
    if not any(named for _, named in configs):
        return
    check_reachable(tracking_uri)
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(spec.experiment)
    experiment_id = found.experiment_id if found else "0"  # the source may name its own experiment
    for config, named in configs:
        for attack in named:
            find_oracle(client, experiment_id, attack["source"], config.seed)


def run(args) -> int:
    from . import tuner

    spec = load_spec(args.spec)
    if args.smoke:
        spec = smoke_spec(spec)
    tracking_uri = resolve_tracking_uri(spec.tracking_uri)
    where = tuner.experiment_dir(spec)
    if "://" not in where and Path(where).exists():
        raise ConfigError(f"sweep {spec.name!r} already exists at {where}; `ieskips sweep resume {spec.name}` "
                          "continues it, or rename the sweep")
    if args.address:
        check_cluster_storage(spec, tracking_uri, connect_ray(args.address))
    check_oracles(spec, tracking_uri)
    tracking = tuner.prepare(spec, tracking_uri)
    tuner.save_state(spec, tracking)
    connect_ray(args.address)
    results = tuner.build_tuner(spec, tracking).fit()
    return _summarise(tuner.finish(spec, tracking, results), results, spec)


def resume(args) -> int:
    from ray import tune

    from . import tuner

    spec, tracking, path = tuner.load_state(args.name, args.storage)
    if not tune.Tuner.can_restore(path):
        raise ConfigError(f"sweep {args.name!r} at {path} has no state to resume from")
    connect_ray(args.address)
    tuner.prepare(spec, tracking["tracking_uri"])  # the parent run is RUNNING again
    restored = tune.Tuner.restore(path, trainable=tuner.trainable_for(spec, tracking),
                                  resume_unfinished=True, resume_errored=True)
    results = restored.fit()
    return _summarise(tuner.finish(spec, tracking, results), results, spec)


def status(args) -> int:
    from ray.tune import ExperimentAnalysis

    from . import tuner

    spec, _, path = tuner.load_state(args.name, args.storage)
    metric, mode = spec.metric
    analysis = ExperimentAnalysis(path, default_metric=metric, default_mode=mode)
    counts = Counter(trial.status for trial in analysis.trials)
    print(f"sweep {spec.name}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    finished = [t for t in analysis.trials if t.last_result and metric in t.last_result]
    if finished:
        pick = max if mode == "max" else min
        best = pick(finished, key=lambda t: t.last_result[metric])
        print(f"best so far: {best.trial_id} {metric}={best.last_result[metric]:.4f} {best.config}")
    return 0


def _summarise(summary: dict, results, spec) -> int:
    metric, _ = spec.metric
    for result in results:
        config = result.config or {}
        value = (result.metrics or {}).get(f"final/{metric}", (result.metrics or {}).get(metric))
        state = "ERROR" if result.error else "ok"
        print(f"{state:<6}{config}  {metric}={value if value is None else round(value, 4)}")
    print(f"sweep {spec.name}: {summary['trials']} trials, {summary['errors']} errors")
    return 1 if summary["errors"] else 0


def plan(args) -> int:
    """Trials, epochs and device-hours of a sweep file; nothing is started or written."""
    import torch

    from ieskips.errors import check_range
    from ieskips.training import resolve_device

    from .plan import lines, plan as estimate

    spec = load_spec(args.spec)
    spec = smoke_spec(spec) if args.smoke else spec
    if args.images_per_sec is not None:
        check_range("--images-per-sec", args.images_per_sec, 0, low_open=True)
    device = str(resolve_device(args.device))
    if device.startswith("cuda") and args.images_per_sec is None and not torch.cuda.is_available():
        raise ConfigError(f"cannot calibrate on {device}: no CUDA device here; give the target's --images-per-sec")
    result = estimate(spec, device, args.images_per_sec)
    source = f"--images-per-sec {args.images_per_sec:g}" if args.images_per_sec else f"a calibration on {device}"
    print("\n".join(lines(result, spec, source)))
    return 0
