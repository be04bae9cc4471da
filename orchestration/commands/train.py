"""``ieskips train`` and ``ieskips evaluate``: one trial trained as an MLflow run, stored models attacked."""
from __future__ import annotations

import logging
from pathlib import Path

import yaml

from ieskips.attacks import attack_label
from ieskips.config import TrialConfig, load_config, parse_overrides
from ieskips.errors import ConfigError
from ieskips.stored import diagnose_stored, evaluate_stored
from ieskips.training import Trial, TrainingDiverged, resolve_device, train as train_trial

from ..sweep.evaluation_job import check_specs, evaluate_run, finished_runs, new_job, plan, run_on_ray
from ..sweep.lease import hold_runs
from ..records.run_artifacts import store_model, store_results, stored_model
from ..records.tracking import check_reachable, connect, flat_params, log_config_artifact, resolve_tracking_uri, run_tags

log = logging.getLogger("ieskips")


def run_logged(config: TrialConfig, *, tracking_uri: str | None, experiment: str, out: str,
               run_name: str | None = None, config_file: str | None = None) -> dict:
    """Train ``config`` as one MLflow run: params, tags, per-epoch metrics (step = epoch), final metrics,
    the resolved config and the final checkpoint as artifacts. Checks everything before the run opens."""
    import mlflow

    trial = Trial.build(config)  # fails on missing data before anything is written
    uri = resolve_tracking_uri(tracking_uri)
    experiment_id = connect(uri, experiment)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.log_params(flat_params(config))
        mlflow.set_tags(run_tags(config))
        log_config_artifact(config)
        if config_file:
            mlflow.log_artifact(config_file)
        checkpoint_dir = Path(out) / run.info.run_id
        log.info("run %s -> %s (checkpoints in %s)", run.info.run_id, mlflow.get_tracking_uri(), checkpoint_dir)

        def on_epoch(epoch, metrics, path):
            mlflow.log_metrics(_metric_names(metrics), step=epoch)
            log.info("epoch %d: %s", epoch, _summary(metrics))

        try:
            final = train_trial(config, on_epoch=on_epoch, checkpoint_dir=checkpoint_dir, trial=trial)
        except TrainingDiverged as err:
            mlflow.set_tag("diverged", str(err))
            mlflow.end_run("FAILED")
            raise
        mlflow.log_artifact(str(checkpoint_dir / "checkpoint.pt"))
        client = mlflow.tracking.MlflowClient(uri)
        store_model(client, run.info.run_id, config, trial.model, experiment_id, config.epochs)
        store_results(client, run.info.run_id, trial.results)
        return {"run_id": run.info.run_id, **final}


def _metric_names(metrics: dict) -> dict:
    # MLflow allows "/" in metric names; keep ours ("robust_acc/pgd20") as they are.
    return {k: float(v) for k, v in metrics.items()}


def _summary(metrics: dict) -> str:
    keys = ("train_loss", "train_acc", "natural_acc") + tuple(k for k in metrics if k.startswith("robust_acc/"))
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in keys if k in metrics)


def train(args) -> int:
    config = load_config(args.config, args.overrides)
    try:
        result = run_logged(config, tracking_uri=args.tracking_uri, experiment=args.experiment, out=args.out,
                            config_file=args.config)
    except TrainingDiverged as err:
        log.error("ieskips: %s", err)
        return 1
    print(_table([("final", result)]))
    return 0


def evaluate(args) -> int:
    """Attack a checkpoint file, a run's stored model (``--run``), or every finished trial of a sweep
    (``--sweep``); runs get their results written back."""
    specs = [_attack_spec(text) for text in args.attack] or None
    if args.sweep and args.audit:
        raise ConfigError("--audit runs on one model: use it with --run or --checkpoint")
    if (args.match or args.address) and not args.sweep:
        raise ConfigError("--match and --address choose trials of a sweep: use them with --sweep")
    if args.subset and not (args.checkpoint or args.audit):
        raise ConfigError("--subset is for --checkpoint or --audit: a run is always evaluated on its own test "
                          "examples, so that its results compose")
    if args.checkpoint:
        from ieskips.stored import read_model

        state = read_model(args.checkpoint)
        check_specs(specs or [], state["config"])
        specs = specs or state["config"]["eval_attacks"]
        results = evaluate_stored(state, specs, subset=args.subset, progress=None)
        rows = [(Path(args.checkpoint).name, {f"final/{k}": v for k, v in results.accuracies().items()})]
        print(_table(rows))
        if args.diagnostics:
            accuracy = results.accuracies()
            spec = min(specs, key=lambda s: accuracy[f"robust_acc/{attack_label(s)}"], default=None)
            print(_listing(diagnose_stored(state, spec)))
    elif args.run:
        state = _evaluate_run(args, specs)
    else:
        return _evaluate_sweep(args, specs)
    if args.audit:
        _audit(state, specs, args.subset)
    return 0


def _evaluate_run(args, specs) -> dict:
    import tempfile

    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(args.tracking_uri)
    check_reachable(uri)
    client = MlflowClient(uri)
    try:
        run = client.get_run(args.run)
    except Exception as err:  # noqa: BLE001  (mlflow raises several types for a missing run)
        raise ConfigError(f"no run {args.run} at {uri}: {str(err).splitlines()[0][:160]}") from None
    with tempfile.TemporaryDirectory() as tmp:
        work = plan(client, [run], specs, args.force, Path(tmp), args.diagnostics)
        state = stored_model(client, args.run, Path(tmp))
    if not work:
        print(f"run {args.run}: every attack already evaluated (--force runs them again)")
        return state
    job = new_job()
    with hold_runs(uri, [run], job):  # one evaluation job per run (lease.py): exit 2 if another has it
        result = evaluate_run(uri, args.run, work[0][1], job=job, force=args.force, diagnostics=args.diagnostics)
    if not result["evaluated"]:
        print(f"run {args.run}: every attack already evaluated (by another job, meanwhile)")
        return state
    print(_table([(run.info.run_name or args.run, result["metrics"])]))
    if args.diagnostics:
        print(_listing(result["metrics"]))
    return state


def _evaluate_sweep(args, specs) -> int:
    import tempfile

    from mlflow.tracking import MlflowClient

    from .sweep import sweep_spec

    spec = sweep_spec(args.sweep, args.smoke, args.storage, args.sets, args.local)
    uri = resolve_tracking_uri(args.tracking_uri or spec.tracking_uri)
    client = MlflowClient(uri)
    experiment_id = connect(uri, spec.experiment)
    runs = finished_runs(client, experiment_id, spec.name, parse_overrides(args.match))
    with tempfile.TemporaryDirectory() as tmp:
        work = plan(client, runs, specs, args.force, Path(tmp), args.diagnostics)
    job = new_job()
    # One evaluation job per run (lease.py): exit 2 here if another job holds one of these runs.
    with hold_runs(uri, [run for run, _ in work], job):
        print(f"sweep {spec.name}: {len(runs)} finished trials, {len(work)} to evaluate, "
              f"{len(runs) - len(work)} skipped (every attack already evaluated; --force runs them again)")
        return _evaluate_on_ray(args, spec, uri, work, job) if work else 0


def _evaluate_on_ray(args, spec, uri: str, work: list, job: str) -> int:
    from .sweep import connect_ray

    connect_ray(args.address)
    failed, rows, meanwhile = 0, [], 0
    for run, result, error in run_on_ray(uri, work, job=job, force=args.force, resources=spec.resources,
                                         retries=spec.retries, diagnostics=args.diagnostics):
        name = run.info.run_name or run.info.run_id
        if error:
            failed += 1
            print(f"ERROR {name} ({run.info.run_id}): {error}")
        elif not result["evaluated"]:
            meanwhile += 1  # another job evaluated it between this one's plan and its lease
        else:
            rows.append((name, result["metrics"]))
    if rows:
        print(_table(rows))
    also = f", {meanwhile} evaluated by another job meanwhile" if meanwhile else ""
    print(f"sweep {spec.name}: {len(rows)} evaluated, {failed} failed{also}")
    return 1 if failed else 0


def _listing(metrics: dict) -> str:
    """The diagnostics' summary lines (every block's values are in the run's metrics)."""
    keys = ("diag/stable_frac/all", "diag/prop2_frac/all", "diag/prop3_frac/all", "diag/residual/mean",
            "diag/residual_explicit/mean", "diag/stage_gain/mean", "diag/converged_frac")
    values = {k.removeprefix("final/"): v for k, v in metrics.items()}
    return "\n".join(f"{key:<32}{values[key]:.4f}" for key in keys if key in values)


def _audit(state: dict, specs, size: int | None) -> None:
    """The audit on ``size`` of the model's test examples (the fixed draw every evaluation uses; None: its own)."""
    from ieskips.audit import audit
    from ieskips.data import make_loader, scored_examples
    from ieskips.stored import build

    config = TrialConfig.from_dict(state["config"])
    device = resolve_device(config.device)
    test = scored_examples(config.dataset, size or config.test_subset, root=config.data_dir, download=config.download)
    print(f"audit on {len(test.indices)} test examples of {test.identity}")
    eps = next((spec["eps"] for spec in specs or config.eval_attacks if "eps" in spec), 8 / 255)
    report = audit(build(state, device), make_loader(test.dataset, config.batch_size, shuffle=False, seed=config.seed),
                   device, eps=eps)
    print("\n".join(report.lines()))


def _attack_spec(text: str) -> dict:
    spec = yaml.safe_load(text)
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"--attack expects a name or a YAML mapping, got {text!r}")
    return spec


DIAGNOSTICS_COLUMNS = ("final/diag/stable_frac/all", "final/diag/residual/mean", "final/diag/stage_gain/mean")


def _table(rows) -> str:
    """Accuracies per model (and the diagnostics' three headline numbers; the rest are in the run)."""
    keys = sorted({k for _, r in rows for k in r if k.startswith(("final/natural_acc", "final/robust_acc/"))
                   or k in DIAGNOSTICS_COLUMNS},
                  key=lambda k: (k != "final/natural_acc", k.startswith("final/diag"), k.endswith("worst"), k))
    head = f"{'model':<16}" + "".join(f"{k.removeprefix('final/').removeprefix('robust_acc/').removesuffix('/all'):>22}"
                                      for k in keys)
    lines = [head] + [f"{name:<16}" + "".join(f"{r.get(k, float('nan')):>22.4f}" for k in keys) for name, r in rows]
    return "\n".join(lines)
