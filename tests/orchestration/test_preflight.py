"""Before a sweep starts or writes anything: resources no node can hold, attacks whose dependencies are
missing, transfer sources that are not checkpoints, data that is not there: one line, exit 2, nothing
written, no Ray started."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ieskips.errors import ConfigError
from orchestration.sweep import preflight
from orchestration.sweep.spec import parse_spec

from .helpers import REPO, ray_env
from .test_cli_train import not_checkpoints

SMOKE = yaml.safe_load((REPO / "sweeps" / "smoke.yaml").read_text())
SQUARE = {"name": "square", "eps": 0.15, "queries": 20}


def sweep_run(tmp_path, **changes):
    """``ieskips sweep run`` on the smoke sweep with ``changes``, in a folder of its own: (result, env)."""
    spec = tmp_path / "spec" / "sweep.yaml"
    spec.parent.mkdir(exist_ok=True)
    spec.write_text(yaml.safe_dump({**SMOKE, **changes}))
    env = ray_env()
    done = subprocess.run([sys.executable, "-m", "orchestration.cli", "sweep", "run", str(spec)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=180)
    return done, env


def assert_refused(done, env, folder, words, keep=("spec",)):
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ieskips: error:") and words in last, last
    assert sorted(p.name for p in folder.iterdir()) == sorted(keep)  # no mlflow.db, no ray_results
    assert not any(Path(env["RAY_TMPDIR"]).iterdir())  # no Ray session was started


@pytest.mark.integration
@pytest.mark.parametrize("resources, words", [
    ({"cpu": 1, "gpu": 1}, "resources.gpu: each trial asks for 1 GPU, but no node of this machine has that"),
    ({"cpu": 512}, "resources.cpu: each trial asks for 512 CPU"),
    ({"cpu": 1, "memory_gb": 1e6}, "resources.memory_gb: each trial asks for 1e+06 GiB memory"),
])
def test_resources_no_node_can_hold_exit_2_before_anything(tmp_path, resources, words):
    done, env = sweep_run(tmp_path, resources=resources)
    assert_refused(done, env, tmp_path, words)


@pytest.mark.integration
def test_a_transfer_source_that_is_not_a_checkpoint_exits_2_and_runs_no_code(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    marker, files = not_checkpoints(folder)
    base = {**SMOKE["base"], "eval_attacks": [{"name": "transfer", "source": str(files["pickle_torch"])}]}
    done, env = sweep_run(tmp_path, base=base)
    assert_refused(done, env, tmp_path, "transfer source:", keep=("files", "spec"))
    assert "evil_torch.pt" in done.stderr and not marker.exists()


@pytest.mark.integration
def test_data_missing_here_exits_2_for_a_local_sweep(tmp_path):
    done, env = sweep_run(tmp_path, base={**SMOKE["base"], "dataset": "mnist", "data_dir": str(tmp_path / "nothing")})
    assert_refused(done, env, tmp_path, "mnist not found")


@pytest.mark.unit
def test_an_attack_whose_package_is_missing_is_named_with_the_fix(monkeypatch):
    spec = parse_spec({**SMOKE, "base": {**SMOKE["base"], "eval_attacks": [SMOKE["base"]["eval_attacks"][0], SQUARE]}})
    assert preflight.check_attacks(spec) == {"pyautoattack": {"square"}}  # installed: a main dependency
    monkeypatch.setitem(preflight.REQUIRES, "square", ("ieskips_no_such_package",))
    with pytest.raises(ConfigError) as info:
        preflight.check_attacks(spec)
    message = str(info.value)
    assert "attack square needs the Python package ieskips_no_such_package" in message and "\n" not in message
    assert "pip install ieskips_no_such_package" in message


@pytest.mark.unit
def test_attacks_inside_transfer_and_grid_options_are_checked_too():
    spec = parse_spec({**SMOKE, "grid": {"eval_attacks": [[{"name": "fgsm", "eps": 0.1}],
                                                          [{"name": "transfer", "source": "explicit",
                                                            "attack": SQUARE}]]}})
    assert {a["name"] for a in preflight.attack_specs(spec)} == {"fgsm", "transfer", "square"}


@pytest.mark.unit
def test_a_request_that_fits_no_single_node_is_refused_even_if_the_cluster_has_it_in_all():
    spec = parse_spec({**SMOKE, "resources": {"cpu": 2, "gpu": 1}})
    nodes = [{"Resources": {"CPU": 2.0}}, {"Resources": {"CPU": 1.0, "GPU": 1.0}}]
    with pytest.raises(ConfigError, match="no node has all of them at once.*--autoscaling"):
        preflight.check_resources(spec.resources, nodes, "the cluster")
    preflight.check_resources(spec.resources, nodes + [{"Resources": {"CPU": 4.0, "GPU": 2.0}}], "the cluster")
    preflight.check_resources(parse_spec({**SMOKE, "resources": {"cpu": 1, "gpu": 0.25}}).resources, nodes,
                              "the cluster")  # a fraction of a GPU fits the GPU node


@pytest.mark.cluster
def test_on_a_cluster_a_trial_larger_than_every_node_exits_2_before_anything(tmp_path, cluster, monkeypatch, capsys):
    from orchestration.cli import main

    cluster, _ = cluster  # two nodes of one CPU each: two CPUs in all, but not on one node
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "big.yaml"
    spec.write_text(yaml.safe_dump({**SMOKE, "resources": {"cpu": 2}, "storage_path": str(tmp_path / "shared"),
                                    "storage_shared": True, "tracking_uri": "http://127.0.0.1:9"}))
    assert main(["sweep", "run", str(spec), "--address", cluster.address]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.yaml"]
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("ieskips: error: resources.cpu: each trial asks for 2 CPU, but no node of the cluster")
    preflight.check_nodes_import({"json"})  # every node imports it
    with pytest.raises(ConfigError, match=r"node [0-9.]+ cannot import ieskips_no_such_package.*pip install"):
        preflight.check_nodes_import({"ieskips_no_such_package"})
