"""``ieskips sweep run | resume | status``.

``sweep run FILE`` brings a sweep up to its file: a new sweep runs every trial; one that exists runs
only the trials whose identity (``identity.py``) has no complete run (new seeds, new grid values,
trials that failed or were killed), under the same MLflow parent run, and says so before it starts.
Every check that can fail (``preflight.py``) runs before anything is started or written.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ieskips.errors import ConfigError

from ..sweep.lease import hold_sweep
from ..sweep.spec import check_cluster_storage, load_spec, smoke_spec
from ..records.tracking import resolve_tracking_uri


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


def sweep_spec(name_or_file: str, smoke: bool, storage: str | None, sets=(), local: bool = False):
    """A sweep file (its smoke version with ``smoke``), or the name of a sweep run here (its saved spec),
    adapted to this place by ``--set``/``--local`` (``overrides.py``; the summary line says how)."""
    return adapted_spec(name_or_file, smoke, storage, sets, local).spec


def adapted_spec(name_or_file: str, smoke: bool, storage: str | None, sets=(), local: bool = False):
    from ..sweep.tuner import load_state

    if Path(name_or_file).is_file():
        spec = load_spec(name_or_file)
        spec = smoke_spec(spec) if smoke else spec
    elif name_or_file.endswith((".yaml", ".yml")):
        raise ConfigError(f"sweep file {name_or_file} does not exist")
    else:
        spec = load_state(name_or_file, storage or _storage_of(sets))[0]
    return _adapt(spec, sets, local)


def _adapt(spec, sets, local: bool):
    from .overrides import adapt

    adapted = adapt(spec, sets, local)
    if adapted.summary():
        print(adapted.summary())
    return adapted


def _storage_of(sets) -> str | None:
    """Where a sweep named on the command line is kept: ``--set storage_path=...``, else the default."""
    from .overrides import parse_sets

    return parse_sets(sets).get("storage_path")


def check_oracles(spec, tracking_uri: str) -> None:
    """Every transfer source that names another sweep's run is there, for every trial's seed."""
    from mlflow.tracking import MlflowClient

    from ..records.run_artifacts import find_oracle, oracle_specs
    from ..records.tracking import check_reachable

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


def existing_runs(spec, tracking_uri: str) -> list:
    """The sweep's trial runs so far (none for a new sweep); reads only, creates nothing."""
    from mlflow.tracking import MlflowClient

    from ..records.tracking import check_reachable, sweep_trial_runs

    check_reachable(tracking_uri)
    client = MlflowClient(tracking_uri)
    try:
        found = client.get_experiment_by_name(spec.experiment)
        return sweep_trial_runs(client, found.experiment_id, spec.name) if found else []
    except Exception as err:  # noqa: BLE001  (mlflow raises many types for an unusable store)
        raise ConfigError(f"cannot use the MLflow tracking store {tracking_uri}: "
                          f"{str(err).splitlines()[0][:200]}") from None


def run(args) -> int:
    from ..sweep import preflight

    adapted = adapted_spec(args.spec, args.smoke, None, getattr(args, "sets", ()), getattr(args, "local", False))
    spec = adapted.spec
    tracking_uri = resolve_tracking_uri(spec.tracking_uri)
    if args.address:
        check_cluster_storage(spec, tracking_uri, connect_ray(args.address))
    preflight.run_checks(spec, args.address, getattr(args, "autoscaling", False))
    check_oracles(spec, tracking_uri)
    with hold_sweep(spec, tracking_uri) as lease:  # one driver per sweep (lease.py): exit 2 if another runs it
        return _launch(args, adapted, tracking_uri, lease)


def _launch(args, adapted, tracking_uri: str, lease) -> int:
    """The trials the sweep lacks, run under the sweep's lease."""
    from ..sweep import tuner
    from ..sweep.identity import pending

    spec = adapted.spec
    runs = existing_runs(spec, tracking_uri)
    todo = pending(spec, runs)
    ledger = tuner.ledger_for(spec, runs)
    print(_plan_line(spec, todo, runs, ledger))
    if todo.samples == 0:
        return 0
    if ledger.limit is not None and not ledger.admits():
        print(f"sweep {spec.name}: {todo.samples} trials not started: the budget is spent ({_budget(ledger)})")
        return 0
    launch = tuner.new_launch()
    tracking = tuner.prepare(spec, tracking_uri, launch)
    _record_overrides(tracking, adapted)
    tuner.save_state(spec, tracking)
    connect_ray(args.address)
    tuner.build_tuner(spec, tracking, todo, ledger).fit()
    lease.check()  # taken over meanwhile (this driver hung): its runs are the new driver's to close
    return _summarise(spec, tracking, todo.samples)


def _record_overrides(tracking: dict, adapted) -> None:
    from mlflow.tracking import MlflowClient

    from .overrides import record

    record(MlflowClient(tracking["tracking_uri"]), tracking["parent_id"], adapted)


def _plan_line(spec, todo, runs, ledger) -> str:
    if spec.search is None:
        total = todo.samples + todo.skipped
        line = (f"sweep {spec.name}: {total} trials in the file; {todo.skipped} complete (skipped), "
                f"{todo.samples} to run")
    else:
        line = (f"sweep {spec.name}: search of {max(spec.search.samples, len(todo.identities))} samples; "
                f"{len(todo.known)} complete (their results go to the searcher first), {todo.samples} to run")
    stale = sum(1 for r in runs if r.info.status == "RUNNING")
    if stale:
        line += (f"; {stale} runs were left RUNNING by a driver that died (`ieskips sweep resume {spec.name}` "
                 "continues them from their checkpoints; this run starts them again)")
    if ledger.limit is not None:
        line += f"; budget: {_budget(ledger)}"
    return line


def _budget(ledger) -> str:
    return f"{ledger.spent():.4g} of {ledger.limit:g} {ledger.kind}-hours spent"


def resume(args) -> int:
    from ray import tune

    from ..sweep import tuner

    spec, tracking, path = _named(args)
    if not tune.Tuner.can_restore(path):
        raise ConfigError(f"sweep {args.name!r} at {path} has no state to resume from")
    with hold_sweep(spec, tracking["tracking_uri"], tracking["parent_id"]) as lease:  # one driver per sweep
        connect_ray(args.address)
        tuner.prepare(spec, tracking["tracking_uri"], tracking["launch"])  # the parent run is RUNNING again
        restored = tune.Tuner.restore(path, trainable=tuner.trainable_for(spec, tracking),
                                      resume_unfinished=True, resume_errored=True)
        restored.fit()
        lease.check()
        return _summarise(spec, tracking, None)


def status(args) -> int:
    """Trials by state, each with its identity, the time it used and the time it has left."""
    from ..sweep import tuner
    from ..sweep.budget import hours, time_left, total_left
    from ..sweep.identity import IDENTITY_TAG, complete, pending, trial_config

    spec, tracking, _ = _named(args)
    runs = existing_runs(spec, tracking["tracking_uri"])
    todo = pending(spec, runs)
    epochs = lambda run: int(run.data.params.get("epochs", 0) or 0)  # noqa: E731
    base = dict(spec.base)
    planned = [trial_config(base, p).epochs for p in todo.points]
    left, per_new, final = time_left(runs, epochs, planned)
    states = Counter(_state(r) for r in runs)
    unfinished = [r.info.run_id for r in runs if not complete(r)]  # running, failed or killed: rerun by `sweep run`
    not_started = max(0, todo.samples - len(unfinished))
    counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    print(f"sweep {spec.name}: {counts or 'no runs'}" + (f", {not_started} not started" if not_started > 0 else ""))
    print(f"{'state':<10}{'name':<44}{'identity':<18}{'epochs':>8}{'used':>9}{'left':>9}")
    for run in sorted(runs, key=lambda r: (_state(r), r.info.run_name or "")):
        done = int(run.data.metrics.get("epoch", 0) or 0)
        rest = left.get(run.info.run_id, per_new) if run.info.run_id in unfinished else 0
        print(f"{_state(run):<10}{(run.info.run_name or '')[:43]:<44}{run.data.tags.get(IDENTITY_TAG, '?'):<18}"
              f"{f'{done}/{epochs(run)}':>8}{hours(run.data.metrics.get('cost/wall_s')):>9}{hours(rest):>9}")
    total, wall = total_left(left, unfinished, per_new, not_started, spec.max_concurrent)
    seen = (f"the epoch times and final evaluations ({hours(final)} each) seen so far" if final is not None else
            "the epoch times seen so far; final evaluations not counted (no run has timed one yet)")
    print(f"time left: {hours(total)} of trial time ({hours(wall)} of the machine at {spec.max_concurrent} "
          f"trials at once), from {seen}")
    if spec.budget:
        ledger = tuner.ledger_for(spec, runs)
        undone = f"; {not_started} trials left undone by it" if not_started > 0 and not ledger.admits() else ""
        print(f"budget: {_budget(ledger)}{undone}")
    return 0


def _named(args) -> tuple:
    """A sweep run here, by name: its saved spec adapted by ``--set``/``--local`` (a new place, new
    resources: the tracking store stays the one it ran against), its tracking info, its latest launch."""
    from ..sweep import tuner

    sets = getattr(args, "sets", ())
    spec, tracking, path = tuner.load_state(args.name, args.storage or _storage_of(sets))
    spec = _adapt(spec, sets, getattr(args, "local", False)).spec
    return spec, {**tracking, "threads": spec.resources.cpu, "gpu": spec.resources.gpu}, path


def _state(run) -> str:
    if run.data.tags.get("ieskips.stopped_early") == "true":
        return "STOPPED"
    return run.info.status


def _summarise(spec, tracking: dict, planned: int | None) -> int:
    """One line per trial run of this launch (failures with their cause), then the sweep's totals."""
    from ..sweep import tuner

    summary = tuner.finish(spec, tracking)
    metric, _ = spec.metric
    for run in summary["runs"]:
        value = run.data.metrics.get(f"final/{metric}", run.data.metrics.get(metric))
        shown = "" if value is None else f"  {metric}={value:.4f}"
        cause = summary["causes"].get(run.info.run_id)
        print(f"{_state(run):<10}{run.info.run_name}{shown}" + (f"  cause: {cause}" if cause else ""))
    ran, killed = len(summary["runs"]), sum(r.info.status == "KILLED" for r in summary["failed"])
    stopped = f", {killed} stopped before the end (run the file again to continue them)" if killed else ""
    totals = summary["totals"]
    print(f"sweep {spec.name}: {ran} trials run, {len(summary['failed']) - killed} failed{stopped}; the sweep has "
          f"used {totals['cost/cpu_hours']:.4g} cpu-hours, {totals['cost/gpu_hours']:.4g} gpu-hours")
    if planned is not None and planned > ran:
        todo = "raise the budget and `ieskips sweep run` the file again" if spec.budget else \
            "`ieskips sweep run` the file again"
        reason = f"the budget ({spec.budget.hours:g} {spec.budget.kind}-hours) would be exceeded" if spec.budget \
            else "the sweep ended first"
        print(f"sweep {spec.name}: {planned - ran} trials not started: {reason}; {todo} to run them")
    return 1 if summary["failed"] else 0


def plan(args) -> int:
    """Trials, epochs and device-hours of a sweep file; nothing is started or written."""
    import torch

    from ieskips.errors import check_range
    from ieskips.training import resolve_device

    from ..sweep.plan import lines, plan as estimate

    spec = adapted_spec(args.spec, args.smoke, None, getattr(args, "sets", ()), getattr(args, "local", False)).spec
    if args.images_per_sec is not None:
        check_range("--images-per-sec", args.images_per_sec, 0, low_open=True)
    device = str(resolve_device(args.device))
    if device.startswith("cuda") and args.images_per_sec is None and not torch.cuda.is_available():
        raise ConfigError(f"cannot calibrate on {device}: no CUDA device here; give the target's --images-per-sec")
    result = estimate(spec, device, args.images_per_sec)
    source = f"--images-per-sec {args.images_per_sec:g}" if args.images_per_sec else f"a calibration on {device}"
    print("\n".join(lines(result, spec, source)))
    return 0
