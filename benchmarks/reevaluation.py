"""Re-evaluating a finished sweep costs the attacks alone (issue 10), measured in one run.

Trains the smoke sweep once, then adds one PGD attack to every trial two ways:
- ``inside``: the attack as the trial's final evaluation runs it (``correct_masks`` on the trial's
  test examples, in one process, model already in memory): what the attack itself costs;
- ``ieskips evaluate --sweep``: the same attack on the stored models, as a user runs it (a local Ray
  on every core, start-up and the check of every stored model included), timed end to end;
- the job's Ray tasks again on a Ray of one CPU (one task at a time, like ``inside``), timed per task
  (download, data, attack, write-back): per-trial overhead = a task's time less its attack time.

    python benchmarks/reevaluation.py
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ATTACK = {"name": "pgd", "eps": 0.15, "alpha": 0.01, "steps": 50}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(REPO / "sweeps" / "smoke.yaml"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    values = {**yaml.safe_load(Path(args.spec).read_text()), "max_concurrent": 1, "name": "reeval"}
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        (Path(tmp) / "reeval.yaml").write_text(yaml.safe_dump(values))
        result = measure(Path(tmp) / "reeval.yaml")
    print(f"{result['trials']} trials, PGD-{ATTACK['steps']}: inside the trials' evaluation {result['inside_s']:.2f} s; "
          f"ieskips evaluate --sweep {result['cli_s']:.2f} s end to end ({result['cli_over_inside']:.2f}x); "
          f"its tasks one at a time: attack {result['task_attack_s']:.2f} s, overhead "
          f"{result['overhead_per_trial_s']:.2f} s per trial, job fixed cost {result['job_fixed_s']:.2f} s")
    out = REPO / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "reevaluation.json").write_text(json.dumps(result, indent=1))


def measure(spec_path: Path) -> dict:
    import ray
    from mlflow.tracking import MlflowClient

    from ieskips.attacks import build_attack
    from ieskips.config import TrialConfig
    from ieskips.data import make_loader, scored_examples
    from ieskips.evaluation import correct_masks
    from ieskips.stored import build
    from orchestration.cli import main as cli
    from orchestration.sweep.evaluation_job import new_job, run_on_ray
    from orchestration.records.run_artifacts import stored_model
    from orchestration.sweep.spec import load_spec
    from orchestration.records.tracking import sweep_trial_runs

    assert cli(["sweep", "run", str(spec_path)]) == 0
    ray.shutdown()
    spec = load_spec(spec_path)
    uri = f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    client = MlflowClient(uri)
    runs = sweep_trial_runs(client, client.get_experiment_by_name(spec.experiment).experiment_id, spec.name)

    inside = 0.0
    for run in runs:  # the attack as the trial's final evaluation runs it
        state = stored_model(client, run.info.run_id, Path.cwd() / "dl" / run.info.run_id)
        config = TrialConfig.from_dict(state["config"])
        test = scored_examples(config.dataset, config.test_subset, root=config.data_dir)
        loader = make_loader(test.dataset, config.batch_size, shuffle=False, seed=config.seed)
        model = build(state)
        start = time.perf_counter()
        correct_masks(model, loader, {"inside": build_attack(ATTACK)}, progress=False)
        inside += time.perf_counter() - start

    start = time.perf_counter()
    assert cli(["evaluate", "--sweep", str(spec_path), "--attack", json.dumps({**ATTACK, "label": "cli"})]) == 0
    cli_s = time.perf_counter() - start
    ray.shutdown()

    start = time.perf_counter()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    work = [(run, [{**ATTACK, "label": "tasks"}]) for run in runs]
    tasks = [result for _, result, _ in run_on_ray(uri, work, job=new_job(), force=False,
                                                   resources=spec.resources, retries=1)]
    job = time.perf_counter() - start
    ray.shutdown()
    total = sum(t["total"] for t in tasks)
    return {"trials": len(runs), "attack": ATTACK, "inside_s": inside, "cli_s": cli_s, "cli_over_inside": cli_s / inside,
            "task_attack_s": sum(t["attack"] for t in tasks), "task_total_s": total,
            "overhead_per_trial_s": sum(t["total"] - t["attack"] for t in tasks) / len(tasks),
            "job_fixed_s": job - total}

if __name__ == "__main__":
    main()
