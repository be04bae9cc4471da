"""Orchestration overhead: the smoke sweep through Ray Tune + MLflow against the same trials run one
after another in one plain process, measured in one run (issue 5; target <= 3 s per trial here).

Both sides run the trials one at a time (max_concurrent 1), so the difference is what Ray, Tune,
checkpoint reporting and MLflow logging add. Ray's start-up is counted in the sweep's time.

    python benchmarks/orchestration_overhead.py
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import yaml

from ieskips.training import train
from orchestration.sweep.spec import parse_spec

REPO = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(REPO / "sweeps" / "smoke.yaml"))
    args = parser.parse_args()
    values = yaml.safe_load(Path(args.spec).read_text())
    values.update(max_concurrent=1, name="overhead")
    spec = parse_spec(values)
    configs = spec.trial_configs()

    start = time.perf_counter()
    for config in configs:
        train(config, progress=False)
    plain = time.perf_counter() - start

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        path = Path(tmp) / "overhead.yaml"
        path.write_text(yaml.safe_dump(values))
        from orchestration.cli import main as cli

        start = time.perf_counter()
        code = cli(["sweep", "run", str(path)])
        swept = time.perf_counter() - start
        import ray

        ray.shutdown()
    n = len(configs)
    per_trial = (swept - plain) / n
    result = {"trials": n, "plain_s": plain, "sweep_s": swept, "overhead_per_trial_s": per_trial,
              "overhead_fraction_of_trial": per_trial / (plain / n), "sweep_exit_code": code}
    print(f"{n} trials: plain {plain:.1f} s, Ray Tune + MLflow {swept:.1f} s -> overhead {per_trial:.2f} s per "
          f"trial ({result['overhead_fraction_of_trial']:.0%} of a {plain / n:.1f} s trial); target <= 3 s")
    out = REPO / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "orchestration_overhead.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
