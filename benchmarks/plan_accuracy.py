"""How far `ieskips sweep plan` is from what a trial really takes, on this device.

For each Table 1 model (vanilla, IE-1, IE-3: sweeps/table1.yaml's base) a short trial on real MNIST is
planned (the calibration of orchestration/sweep/plan.py, at the trial's batch size and thread count) and then
run through the trainer, timed: its training (the epochs' own clock) and everything else (monitoring,
selection, the final evaluation of the last and the selected checkpoint). Prints estimated, measured
and their ratio; the target is a ratio within [1/1.5, 1.5]. The attacks are the file's, shortened to
fit (PGD-5 for PGD-20, Square with 100 queries on 200 examples), so all of them are exercised.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/plan_accuracy.py [--threads 1] [--models 0,1,3]

Writes benchmarks/results/plan_accuracy.json. Needs MNIST in the default root (`ieskips data fetch mnist`).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import yaml

from ieskips.config import TrialConfig
from ieskips.training import train
from orchestration.sweep.plan import calibrate, phases

REPO = Path(__file__).resolve().parent.parent
SHORT = {"epochs": 2, "train_subset": 4000, "test_subset": 1000, "eval_subset": 200, "val_size": 200,
         "select_after": 0, "milestones": [1], "device": "cpu",
         "select_attack": {"name": "pgd", "eps": 0.15, "alpha": 0.02, "steps": 3},
         "eval_attacks": [{"name": "fgsm", "eps": 0.15},
                          {"name": "pgd", "eps": 0.15, "alpha": 0.01, "steps": 5},
                          {"name": "pgd", "eps": 0.15, "alpha": 0.01, "steps": 5, "inner_grad": "unrolled"},
                          {"name": "square", "eps": 0.15, "queries": 100, "subset": 200}]}


def config_for(ie_steps: int) -> TrialConfig:
    base = yaml.safe_load((REPO / "sweeps" / "table1.yaml").read_text())["base"]
    base.pop("data_dir", None)  # the default root
    return TrialConfig.from_dict({**base, **SHORT, "ie_steps": ie_steps})


def measure(config: TrialConfig) -> dict:
    epochs = []
    start = time.perf_counter()
    train(config, on_epoch=lambda e, m, p: epochs.append(m["epoch_time"]), progress=False)
    total = time.perf_counter() - start
    return {"train": sum(epochs), "rest": total - sum(epochs), "total": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="0,1,3", help="ie_steps values")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"load average at start: {os.getloadavg()[0]:.2f} (the machine is shared: ratios, not times)")
    print(f"{'model':<8}{'phase':<8}{'estimated s':>13}{'measured s':>12}{'measured/est':>14}")
    for k in map(int, args.models.split(",")):
        config = config_for(k)
        estimate = phases(config, calibrate(config, "cpu"))
        planned = {"train": estimate["train"], "rest": sum(v for key, v in estimate.items() if key != "train")}
        planned["total"] = planned["train"] + planned["rest"]
        real = measure(config)
        for phase in ("train", "rest", "total"):
            ratio = real[phase] / planned[phase]
            rows.append({"ie_steps": k, "phase": phase, "estimated_s": planned[phase], "measured_s": real[phase],
                         "ratio": ratio})
            print(f"{'IE-' + str(k) if k else 'vanilla':<8}{phase:<8}{planned[phase]:>13.1f}{real[phase]:>12.1f}"
                  f"{ratio:>14.2f}")
    worst = max(max(r["ratio"], 1 / r["ratio"]) for r in rows if r["phase"] == "total")
    print(f"worst total ratio (either way): {worst:.2f} (target <= 1.5); load average at end: {os.getloadavg()[0]:.2f}")
    out = REPO / "benchmarks" / "results" / "plan_accuracy.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": args.threads, "rows": rows, "worst_total_ratio": worst}, indent=1))


if __name__ == "__main__":
    main()
