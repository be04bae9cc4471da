"""Sweeps on a local Ray: the smoke sweep, Optuna with ASHA, and a driver killed mid-sweep."""
import os
import signal

import pytest

from .helpers import cli, ray_env, runs, wait_for, write_spec

pytestmark = pytest.mark.integration


def finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def test_smoke_sweep_one_finished_child_run_per_trial(tmp_path):
    spec = write_spec(tmp_path)
    code, out = finish(cli("sweep", "run", str(spec), cwd=tmp_path, env=ray_env()))
    assert code == 0, out[-3000:]
    client, parents, trials = runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "ieskips-smoke")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parents[0].info.run_id}
    assert {(r.data.params["ie_steps"], r.data.params["method"]) for r in trials} == {
        ("0", "natural"), ("1", "natural"), ("0", "fgsm"), ("1", "fgsm")}
    assert {r.info.run_name for r in trials} == {f"preact_resnet18-K{k}-{m}-s0" for k in (0, 1)
                                                 for m in ("natural", "fgsm")}
    epochs = int(trials[0].data.params["epochs"])
    for run in trials:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "robust_acc/fgsm")] == list(
            range(1, epochs + 1))  # the per-epoch monitoring: the cheapest gradient attack
        assert {"final/robust_acc/worst", "final/robust_acc/pgd10"} <= set(run.data.metrics)
        assert run.data.metrics["final/natural_acc"] > 0.5, run.info.run_name  # every model in the table learns
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.json", "manifest.json"} <= artifacts
        # the data it trained and was tested on, as MLflow dataset inputs (the UI's Dataset column)
        inputs = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
        assert set(inputs) == {"train", "test"} and inputs["test"].name == "digits"
        assert inputs["test"].digest == "96688cdd0b541403"  # ieskips.data.identity of digits' test split
        # system metrics from the trial's own process, and its device-hours
        assert run.data.metrics["system/process_cpu_percentage"] > 0
        assert run.data.metrics["system/process_memory_megabytes"] > 0
        assert run.data.metrics["cost/cpu_hours"] == pytest.approx(run.data.metrics["cost/wall_s"] / 3600)
        assert run.data.metrics["cost/gpu_hours"] == 0
    parent = client.get_run(parents[0].info.run_id)
    assert parent.data.metrics["cost/cpu_hours"] == pytest.approx(sum(r.data.metrics["cost/cpu_hours"] for r in trials))
    manifest = client.download_artifacts(trials[0].info.run_id, "manifest.json", str(tmp_path))
    assert '"commit"' in open(manifest).read()
    status = cli("sweep", "status", "smoke", cwd=tmp_path, env=ray_env())
    code, out = finish(status)
    assert code == 0 and "sweep smoke: 4 FINISHED" in out
    for run in trials:
        line = next(line for line in out.splitlines() if run.info.run_name in line)
        assert line.startswith("FINISHED") and run.data.tags["ieskips.identity"] in line
        assert f"{epochs}/{epochs}" in line


def test_an_error_retries_cannot_fix_fails_its_trial_at_once_with_the_cause(tmp_path):
    # lr 1e6 diverges in the first epoch: a retry from the checkpoint would diverge again
    spec = write_spec(tmp_path, name="diverge", retries=2, base={"epochs": 2},
                      grid={"ie_steps": [1], "method": ["natural"], "lr": [0.01, 1e6]})
    code, out = finish(cli("sweep", "run", str(spec), cwd=tmp_path, env=ray_env()))
    assert code == 1, out[-3000:]
    client, parents, trials = runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "ieskips-smoke")
    assert len(trials) == 2 and parents[0].info.status == "FAILED"
    bad = next(r for r in trials if r.data.params["lr"] != "0.01")
    good = next(r for r in trials if r.data.params["lr"] == "0.01")
    assert good.info.status == "FINISHED"
    assert bad.info.status == "FAILED" and bad.info.run_name == "preact_resnet18-K1-natural-s0-lr1e+06"
    cause = bad.data.tags["ieskips.error"]
    assert cause.startswith("TrainingDiverged: diverged at epoch 1") and "\n" not in cause
    assert len(bad.data.tags["ieskips.nodes"].split(",")) == 1  # one attempt, not 1 + retries
    assert f"FAILED    {bad.info.run_name}  cause: {cause}" in out
    assert "2 trials run, 1 failed" in out


def test_optuna_with_asha_stops_trials_early_and_runs_them_concurrently(tmp_path):
    # Natural accuracy as the target here: on 64 test images, robust accuracy after an epoch ties too
    # often for ASHA's strict "below the cutoff" rule to stop anything reliably.
    spec = write_spec(tmp_path, name="asha", base={"epochs": 4, "train_subset": 256},
                      search={"samples": 6, "seed": 1, "metric": "natural_acc",
                              "params": {"ie_step_size": {"type": "uniform", "low": 0.01, "high": 0.2}}},
                      scheduler={"grace_period": 1, "reduction_factor": 2, "metric": "natural_acc"},
                      grid={"ie_steps": [0, 1]})
    code, out = finish(cli("sweep", "run", str(spec), cwd=tmp_path, env=ray_env()))
    assert code == 0, out[-3000:]
    client, parents, trials = runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "ieskips-smoke")
    assert len(trials) == 6 and {r.data.params["ie_steps"] for r in trials} == {"0", "1"}
    early = []
    for run in trials:
        epochs = len(client.get_metric_history(run.info.run_id, "train_loss"))
        if epochs < 4:
            early.append(run)
            assert run.info.status == "KILLED" and run.data.tags["ieskips.stopped_early"] == "true"
        else:
            assert run.info.status == "FINISHED" and "ieskips.stopped_early" not in run.data.tags
    assert early, "ASHA stopped no trial early"
    spans = sorted((r.info.start_time, r.info.end_time) for r in trials)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), "no two trials overlapped in time"


def test_driver_killed_then_resumed_leaves_one_finished_run_per_trial(tmp_path):
    spec = write_spec(tmp_path, name="resume", base={"epochs": 8}, max_concurrent=2)
    env = ray_env()
    driver = cli("sweep", "run", str(spec), cwd=tmp_path, env=env, start_new_session=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def some_trial_midway():
        client, _, trials = runs(uri, "ieskips-smoke")
        return any(len(client.get_metric_history(r.info.run_id, "train_loss")) >= 2 for r in trials)

    wait_for(some_trial_midway, 300)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait(timeout=60)
    _, _, before = runs(uri, "ieskips-smoke")
    assert any(r.info.status == "RUNNING" for r in before)
    code, out = finish(cli("sweep", "resume", "resume", cwd=tmp_path, env=env))
    assert code == 0, out[-3000:]
    client, parents, trials = runs(uri, "ieskips-smoke")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trials) == 4 and len({r.data.tags["ieskips.trial_id"] for r in trials}) == 4
    for run in trials:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert steps == list(range(1, 9)), steps
    assert any("ieskips.resumed_from_epoch" in r.data.tags for r in trials)
