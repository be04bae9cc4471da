"""`ieskips train` and `ieskips evaluate`: MLflow contents, and bad input refused before anything runs."""
import subprocess
import sys

import pytest

from orchestration.cli import main

pytestmark = pytest.mark.integration
SMALL = ["dataset=digits", "width=4", "epochs=2", "batch_size=64", "train_subset=128", "test_subset=48",
         "eval_subset=32", "milestones=[]", "ie_steps=1", "paper_table=table1",
         "eval_attacks=[{name: fgsm, eps: 0.1}, {name: pgd, eps: 0.1, alpha: 0.05, steps: 3}]"]


def sets(pairs):
    return [arg for pair in pairs for arg in ("--set", pair)]


def test_train_logs_params_metrics_and_artifacts(tmp_path, monkeypatch, capsys):
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = tmp_path / "trial.yaml"
    config.write_text("method: natural\n")
    assert main(["train", "--config", str(config), *sets(SMALL)]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("ieskips").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["ie_steps"] == "1" and run.data.params["method"] == "natural"
    assert run.data.tags["paper_table"] == "table1"
    history = client.get_metric_history(run.info.run_id, "robust_acc/pgd3")
    assert [m.step for m in history] == [1, 2]
    assert "final/robust_acc/worst" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "trial.yaml", "checkpoint.pt"} <= artifacts
    mlflow.set_tracking_uri(None)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # set_tracking_uri exports it

    checkpoint = next(tmp_path.glob("runs/*/checkpoint.pt"))
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--attack", "{name: pgd, eps: 0.1, steps: 5}",
                 "--audit", "--subset", "24"]) == 0
    out = capsys.readouterr().out
    assert "pgd5" in out and "steps_converge" in out and "unrolled_gradients" in out
    assert "credible robust accuracy" in out


@pytest.mark.parametrize("args, words", [
    (["train", "--set", "ie_steps=-1"], "ie_steps"),
    (["train", "--set", "modle=x"], "modle"),
    (["train", "--config", "missing.yaml"], "does not exist"),
    (["train", "--set", "dataset=cifar10"], "cifar10 not found"),
    (["train", "--tracking-uri", "http://127.0.0.1:9", "--set", "epochs=1"], "cannot reach"),
    (["evaluate", "--checkpoint", "nope.pt"], "does not exist"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, words):
    done = subprocess.run([sys.executable, "-m", "orchestration.cli", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ieskips: error:") and words in last
    assert list(tmp_path.iterdir()) == []
