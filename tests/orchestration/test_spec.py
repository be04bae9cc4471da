"""Malformed sweep files: one clear line each, exit 2, nothing started or written."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestration.sweep.spec import check_cluster_storage, load_spec, parse_spec, smoke_spec
from ieskips.errors import ConfigError

from .helpers import REPO, ray_env

pytestmark = pytest.mark.unit
GOOD = yaml.safe_load((REPO / "sweeps" / "smoke.yaml").read_text())

BAD = [
    ({"nmae": "x"}, "nmae"),
    ({"grid": {"ie_stepz": [0, 1]}}, "'ie_stepz' is not a trial config key"),
    ({"grid": {"ie_steps": [0, -1]}}, "ie_steps"),
    ({"grid": {"ie_steps": []}}, "has no values"),
    ({"grid": {"ie_steps": 3}}, "grid.ie_steps"),
    ({"base": {"dataset": "imagenet"}}, "dataset"),
    ({"resources": {"gpu": -0.5}}, "resources.gpu"),
    ({"resources": {"cpus": 1}}, "resources.cpus"),
    ({"max_concurrent": 0}, "max_concurrent"),
    ({"name": "no spaces"}, "name"),
    ({"scheduler": {"type": "pbt"}}, "scheduler.type"),
    ({"search": {"params": {"lr": {"type": "loguniform", "low": 0, "high": 1}}}}, "low > 0"),
    ({"search": {"params": {"ie_steps": {"type": "choice", "values": [0]}}}}, "both in grid and search"),
    ({"search": {"params": {"lr": {"type": "uniform", "low": 0.1, "high": 0.2}}, "metric": "a"},
      "scheduler": {"metric": "b"}}, "use one metric"),
    ({"search": {"params": {"train_steps": {"type": "int", "low": 0, "high": 3}}}},
     "search.params.train_steps: 0 would be sampled"),
    ({"resources": {"cpu": 1, "memory_gb": 0}}, "resources.memory_gb"),
    ({"budget": {"gpu_hours": 3}}, "resources.gpu is 0"),
]


@pytest.mark.parametrize("change, words", BAD)
def test_malformed_specs_give_one_clear_line(change, words):
    with pytest.raises(ConfigError) as info:
        parse_spec({**GOOD, **change})
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("change, words", [BAD[1], BAD[6]])
def test_cli_exits_2_before_starting_anything(tmp_path, change, words):
    path = tmp_path / "spec" / "bad.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({**GOOD, **change}))
    env = ray_env()
    done = subprocess.run([sys.executable, "-m", "orchestration.cli", "sweep", "run", str(path)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("ieskips: error:") and words in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec"]  # no mlflow.db, no ray_results
    assert not any(Path(env["RAY_TMPDIR"]).iterdir())  # no Ray session was started


def test_cluster_needs_shared_storage_and_a_tracking_server():
    spec = parse_spec(GOOD)
    check_cluster_storage(spec, "sqlite:///mlflow.db", nodes=1)
    with pytest.raises(ConfigError, match="storage_path must be shared"):
        check_cluster_storage(spec, "http://mlflow:5000", nodes=2)
    shared = parse_spec({**GOOD, "storage_path": "/mnt/nfs/ray", "storage_shared": True})
    with pytest.raises(ConfigError, match="MLflow server"):
        check_cluster_storage(shared, "sqlite:///mlflow.db", nodes=2)
    check_cluster_storage(shared, "http://mlflow:5000", nodes=2)
    check_cluster_storage(parse_spec({**GOOD, "storage_path": "s3://bucket/ray"}), "https://mlflow", nodes=3)


def test_resources_as_ray_requests_and_budgets_shrink_away():
    spec = parse_spec({**GOOD, "resources": {"cpu": 2, "gpu": 0.5, "memory_gb": 1.5}, "budget": {"gpu_hours": 10}})
    assert spec.resources.ray() == {"cpu": 2, "gpu": 0.5, "memory": int(1.5 * 2**30)}
    assert spec.budget.kind == "gpu" and spec.budget.hours == 10
    assert smoke_spec(spec).budget is None and "memory" not in parse_spec(GOOD).resources.ray()


@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_sweep_file_validates_and_shrinks(path):
    spec = load_spec(path)
    small = smoke_spec(spec)
    assert small.resources.gpu == 0 and small.storage_path is None and small.tracking_uri is None
    assert small.budget is None  # a smoke run on a CPU is no part of the paper sweep's budget
    assert all(c.epochs <= 2 and c.dataset == "digits" for c in small.trial_configs())
