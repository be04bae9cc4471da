"""`ieskips train` and `ieskips evaluate`: MLflow contents, and bad input refused before anything runs."""
import random
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
    history = client.get_metric_history(run.info.run_id, "robust_acc/fgsm")  # monitored every epoch
    assert [m.step for m in history] == [1, 2]
    assert "final/robust_acc/pgd3" in run.data.metrics and not client.get_metric_history(run.info.run_id,
                                                                                        "robust_acc/pgd3")
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
    assert "audit on 24 test examples" in out  # --subset reaches the audit too
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


class _Payload:
    """A pickle that would create ``marker`` when loaded by an unsafe unpickler."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def not_checkpoints(folder):
    """Files a user might pass as a checkpoint that are not one: name -> path. The pickles would create
    ``folder / "PWNED"`` if anything unpickled them unsafely."""
    import pickle

    import torch

    from ieskips.config import TrialConfig
    from ieskips.stored import save_model
    from ieskips.training import model_for

    marker = folder / "PWNED"
    files = {"garbage": folder / "garbage.pt", "text": folder / "notes.pt", "truncated": folder / "truncated.pt",
             "pickle_torch": folder / "evil_torch.pt", "pickle_plain": folder / "evil_plain.pt"}
    files["garbage"].write_bytes(random.Random(0).randbytes(4096))
    files["text"].write_bytes(b"this is not a checkpoint\n" * 10)
    config = TrialConfig.from_dict({"dataset": "digits", "width": 2, "epochs": 1})
    whole = save_model(config, model_for(config), folder / "whole.pt").read_bytes()
    files["truncated"].write_bytes(whole[: len(whole) // 2])
    torch.save({"config": config.to_dict(), "model": _Payload(marker)}, files["pickle_torch"])
    files["pickle_plain"].write_bytes(pickle.dumps({"config": config.to_dict(), "model": _Payload(marker)}))
    (folder / "whole.pt").unlink()
    return marker, files


@pytest.mark.parametrize("kind", ["garbage", "text", "truncated", "pickle_torch",
                                  "pickle_plain"])
def test_evaluate_refuses_what_is_not_a_checkpoint_in_one_line_and_runs_no_code(tmp_path, kind):
    marker, files = not_checkpoints(tmp_path)
    done = subprocess.run([sys.executable, "-m", "orchestration.cli", "evaluate", "--checkpoint", str(files[kind])],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ieskips: error:") and files[kind].name in last and "not" in last
    assert not marker.exists(), "the pickle's code ran"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files.values())  # nothing written


def test_evaluate_run_refuses_a_stored_model_that_is_a_pickle_and_runs_no_code(tmp_path):
    from mlflow.tracking import MlflowClient

    marker, files = not_checkpoints(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("evil", artifact_location=str(tmp_path / "artifacts")))
    stored = tmp_path / "model" / "weights.pt"
    stored.parent.mkdir()
    stored.write_bytes(files["pickle_torch"].read_bytes())
    client.log_artifact(run.info.run_id, str(stored), "model")
    done = subprocess.run([sys.executable, "-m", "orchestration.cli", "evaluate", "--run", run.info.run_id,
                           "--tracking-uri", uri], cwd=tmp_path, capture_output=True, text=True, timeout=180,
                          env={"PATH": "/usr/bin:/bin", "RAY_AUTH_MODE": "disabled"})
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ieskips: error:") and run.info.run_id in last and "Traceback" not in done.stderr
    assert not marker.exists()


def test_train_refuses_a_transfer_source_that_is_a_pickle_in_one_line(tmp_path):
    marker, files = not_checkpoints(tmp_path)
    attacks = f"eval_attacks=[{{name: transfer, source: {files['pickle_torch']}}}]"
    done = subprocess.run([sys.executable, "-m", "orchestration.cli", "train", *sets(SMALL[:-1] + [attacks])],
                          cwd=tmp_path, capture_output=True, text=True, timeout=180, env={"PATH": "/usr/bin:/bin"})
    assert not marker.exists()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
