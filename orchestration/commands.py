"""What each ``ieskips`` sub-command does (``cli.py`` parses, this runs)."""
from __future__ import annotations

import logging
from pathlib import Path

import yaml

from ieskips.attacks import attack_label
from ieskips.config import TrialConfig, load_config
from ieskips.errors import ConfigError
from ieskips.evaluation import evaluate as evaluate_model
from ieskips.training import Trial, TrainingDiverged, load_checkpoint, make_attack, train as train_trial

from .tracking import connect, flat_params, log_config_artifact, resolve_tracking_uri, run_tags

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
    from ieskips.audit import audit

    if not Path(args.checkpoint).is_file():
        raise ConfigError(f"checkpoint {args.checkpoint} does not exist")
    state = load_checkpoint(args.checkpoint)
    config = TrialConfig.from_dict({**state["config"], **({"test_subset": args.subset} if args.subset else {})})
    specs = [_attack_spec(text) for text in args.attack] or list(config.eval_attacks)
    trial = Trial.build(config)
    trial.model.load_state_dict(state["model"])
    attacks = {attack_label(spec): make_attack(spec, trial.model, trial.device) for spec in specs}
    result = evaluate_model(trial.model, trial.test_loader, attacks, trial.device)
    print(_table([(Path(args.checkpoint).name, {f"final/{k}": v for k, v in result.items()})]))
    if args.audit:
        eps = next((spec["eps"] for spec in specs if "eps" in spec), 8 / 255)
        report = audit(trial.model, trial.test_loader, trial.device, eps=eps)
        print("\n".join(report.lines()))
    return 0


def _attack_spec(text: str) -> dict:
    spec = yaml.safe_load(text)
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"--attack expects a name or a YAML mapping, got {text!r}")
    return spec


DEMO_ATTACKS = [{"name": "fgsm", "eps": 0.15}, {"name": "pgd", "eps": 0.15, "alpha": 0.02, "steps": 20},
                {"name": "pgd", "eps": 0.15, "alpha": 0.02, "steps": 20, "inner_grad": "unrolled"}]


def demo(args) -> int:
    """Vanilla ResNet-18 vs IE-ResNet-18 (K = 1, gamma = 0.05) on digits, naturally trained, MNIST-style
    attacks (eps 0.15); the IE model is also attacked through its unrolled inner steps."""
    rows = []
    for name, k in (("ResNet-18", 0), ("IE-ResNet-1-18", 1)):
        config = TrialConfig.from_dict({"dataset": "digits", "width": 8, "ie_steps": k, "epochs": args.epochs,
                                        "batch_size": 64, "milestones": [args.epochs * 3 // 4],
                                        "eval_attacks": DEMO_ATTACKS, "paper_table": "demo"})
        rows.append((name, run_logged(config, tracking_uri=args.tracking_uri, experiment=args.experiment,
                                      out="runs", run_name=name)))
    print(_table(rows))
    print("(digits test set, 360 images; eps 0.15; see the runs with `mlflow ui` in this directory)")
    return 0


def _table(rows) -> str:
    keys = sorted({k for _, r in rows for k in r if k.startswith("final/")},
                  key=lambda k: (k != "final/natural_acc", k.endswith("worst"), k))
    head = f"{'model':<16}" + "".join(f"{k.removeprefix('final/').removeprefix('robust_acc/'):>22}" for k in keys)
    lines = [head] + [f"{name:<16}" + "".join(f"{r.get(k, float('nan')):>22.4f}" for k in keys) for name, r in rows]
    return "\n".join(lines)


def report(args) -> int:
    """The sweep's tables and figures: SWEEP is a sweep file or the name of a sweep that ran here."""
    from .report import write_report
    from .spec import load_spec, smoke_spec
    from .tuner import load_state

    if Path(args.sweep).is_file():
        spec = load_spec(args.sweep)
        spec = smoke_spec(spec) if args.smoke else spec
    else:
        spec, _, _ = load_state(args.sweep, args.storage)
    uri = resolve_tracking_uri(args.tracking_uri or spec.tracking_uri)
    for path in write_report(spec, uri, Path(args.out)):
        print(path)
    return 0
