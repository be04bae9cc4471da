"""A trial on a data dir whose MNIST files do not match the known digests: ``ieskips train`` exits 2
before training, a local sweep is refused before it starts, and on a cluster (where the driver cannot
check each node's files) the trial's run is FAILED with the cause, at its first attempt."""
import pytest

from ieskips.data import mnist
from orchestration.cli import main
from tests.orchestration.helpers import ray_env, runs, write_spec

BAD = "t10k-labels-idx1-ubyte"
TINY = {"dataset": "mnist", "width": 4, "epochs": 1, "train_subset": 64, "test_subset": 32, "eval_subset": 16}


@pytest.fixture
def corrupt_root(real_root, tmp_path):
    """The real files, one of them copied with one byte flipped (same size: only its MD5 tells)."""
    raw = mnist.raw_dir(tmp_path / "corrupt")
    raw.mkdir(parents=True)
    for name in mnist.FILES:
        (raw / name).symlink_to(mnist.raw_dir(real_root) / name)
    (raw / BAD).unlink()
    data = bytearray((mnist.raw_dir(real_root) / BAD).read_bytes())
    data[5000] = (data[5000] + 1) % 10  # one test label changed
    (raw / BAD).write_bytes(bytes(data))
    return tmp_path / "corrupt"


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("ieskips: error: "), lines[-5:]
    return lines[-1]


@pytest.mark.integration
def test_train_exits_2_before_training_naming_the_file(corrupt_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    sets = [f"{k}={v}" for k, v in {**TINY, "data_dir": corrupt_root}.items()]
    assert main(["train", *[a for s in sets for a in ("--set", s)]]) == 2
    line = error_line(capsys)
    assert f"{mnist.raw_dir(corrupt_root) / BAD} has MD5 " in line and f"not {mnist.FILES[BAD][1]}" in line
    assert "move it away, then run `ieskips data fetch mnist --root" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no mlflow.db, no runs/


@pytest.mark.integration
def test_a_local_sweep_is_refused_before_it_starts(corrupt_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, name="corrupt", base={**TINY, "data_dir": str(corrupt_root)},
                      grid={"ie_steps": [0], "method": ["natural"]})
    assert main(["sweep", "run", str(spec)]) == 2
    assert f"{BAD} has MD5 " in error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt", "corrupt.yaml"]


@pytest.mark.integration
def test_on_a_cluster_the_trial_fails_at_once_with_the_cause(corrupt_root, tmp_path, monkeypatch, capsys):
    import ray

    for key, value in ray_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, name="corrupt", base={**TINY, "data_dir": str(corrupt_root)}, retries=2,
                      grid={"ie_steps": [0], "method": ["natural"]}, storage_path=str(tmp_path / "results"))
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)  # a one-node "cluster" the sweep joins
    try:
        code = main(["sweep", "run", str(spec), "--address", ray.get_runtime_context().gcs_address])
    finally:
        ray.shutdown()
    assert code == 1, capsys.readouterr()
    _, parents, trials = runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "ieskips-smoke")
    assert len(trials) == 1 and trials[0].info.status == "FAILED" and parents[0].info.status == "FAILED"
    cause = trials[0].data.tags["ieskips.error"]
    assert cause.startswith(f"ConfigError: {mnist.raw_dir(corrupt_root) / BAD} has MD5 ") and "\n" not in cause
    assert len(trials[0].data.tags["ieskips.nodes"].split(",")) == 1  # one attempt, not 1 + retries
    assert "train_loss" not in trials[0].data.metrics  # failed before training
