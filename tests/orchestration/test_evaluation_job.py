"""`ieskips evaluate --sweep / --run`: a trained sweep attacked again, results written into its runs."""
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
import yaml

from ieskips.evaluation import ExampleResults

from .helpers import REPO, cli, ray_env, runs, write_spec

pytestmark = pytest.mark.integration
NEW_ATTACK = "{name: pgd, eps: 0.15, alpha: 0.03, steps: 20}"  # label pgd20; the sweep ran fgsm and pgd10
FGSM02 = "{name: fgsm, eps: 0.2, label: fgsm_eps02}"


def finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The smoke sweep cut to two trials (vanilla and IE-1, natural training), with a report column for an
    attack it has not faced yet."""
    folder = tmp_path_factory.mktemp("evaluate")
    report = yaml.safe_load((REPO / "sweeps" / "smoke.yaml").read_text())["report"]
    report["rows"] = report["rows"][:2]
    report["columns"].append({"label": "PGD-20 (%)", "metric": "final/robust_acc/pgd20"})
    spec = write_spec(folder, name="evalsweep", grid={"ie_steps": [0, 1], "method": ["natural"]},
                      report=report)
    env = ray_env()
    code, out = finish(cli("sweep", "run", str(spec), cwd=folder, env=env))
    assert code == 0, out[-3000:]
    return folder, spec, env, f"sqlite:///{folder / 'mlflow.db'}"


def trial_runs(uri):
    client, _, trials = runs(uri, "ieskips-smoke")
    return client, sorted(trials, key=lambda r: r.info.run_name)


def per_example(client, run_id, folder) -> ExampleResults:
    local = Path(client.download_artifacts(run_id, "per_example", str(folder)))
    return ExampleResults.from_files(sorted(local.glob("*.npz")))


def test_every_trial_stores_its_model_and_per_example_results(trained, tmp_path):
    from ieskips.stored import read_model

    folder, _, _, uri = trained
    client, trials = trial_runs(uri)
    for run in trials:
        state = read_model(client.download_artifacts(run.info.run_id, "model/weights.pt", str(tmp_path / run.info.run_id)))
        assert state["config"]["ie_steps"] == int(run.data.params["ie_steps"])
        results = per_example(client, run.info.run_id, tmp_path / run.info.run_id)
        assert set(results.masks) == {"natural", "fgsm", "pgd10"} and len(results.indices) == 128
        assert results.accuracies()["robust_acc/worst"] == pytest.approx(run.data.metrics["final/robust_acc/worst"])
        models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
        assert len(models) == 1 and models[0].tags["ieskips.weights"].endswith("model/weights.pt")


def test_evaluate_sweep_adds_an_attack_to_every_run_then_skips(trained, tmp_path):
    folder, spec, env, uri = trained
    client, before = trial_runs(uri)
    code, out = finish(cli("evaluate", "--sweep", str(spec), "--attack", NEW_ATTACK, cwd=folder, env=env))
    assert code == 0, out[-3000:]
    assert "2 to evaluate" in out
    _, after = trial_runs(uri)
    for old, new in zip(before, after):
        assert (new.info.status, new.info.end_time) == (old.info.status, old.info.end_time)
        results = per_example(client, new.info.run_id, tmp_path / new.info.run_id)
        assert set(results.masks) == {"natural", "fgsm", "pgd10", "pgd20"}
        pgd20 = results.masks["pgd20"].float().mean().item()
        assert new.data.metrics["final/robust_acc/pgd20"] == pytest.approx(pgd20)
        worst = torch.stack([results.masks[k] for k in ("fgsm", "pgd10", "pgd20")]).all(0).float().mean().item()
        assert new.data.metrics["final/robust_acc/worst"] == pytest.approx(worst)  # per example, not a min
        assert worst <= old.data.metrics["final/robust_acc/worst"]
        assert yaml.safe_load(new.data.tags["ieskips.eval.pgd20"])["spec"]["steps"] == 20

    code, out = finish(cli("report", str(spec), "--out", "reports", cwd=folder, env=env))
    assert code == 0, out[-3000:]
    column = (folder / "reports" / "evalsweep.md").read_text()
    assert "PGD-20 (%) ours" in column and "no metric" not in column

    code, out = finish(cli("evaluate", "--sweep", "evalsweep", "--attack", NEW_ATTACK, cwd=folder, env=env))
    assert code == 0 and "0 to evaluate, 2 skipped" in out, out[-2000:]
    for run in after:
        assert len(client.get_metric_history(run.info.run_id, "final/robust_acc/pgd20")) == 1


def test_evaluate_run_writes_into_that_run_only(trained, tmp_path):
    folder, _, env, uri = trained
    client, trials = trial_runs(uri)
    target, other = trials
    code, out = finish(cli("evaluate", "--run", target.info.run_id, "--attack", "{name: fgsm, eps: 0.3}",
                           cwd=folder, env=env))
    assert code == 2 and "already has attack 'fgsm'" in out, out  # trained with eps 0.15 under that label
    strong = "{name: fgsm, eps: 0.3, label: fgsm_eps03}"
    code, out = finish(cli("evaluate", "--run", target.info.run_id, "--attack", strong, cwd=folder, env=env))
    assert code == 0, out[-3000:]
    assert "fgsm_eps03" in out
    metrics = client.get_run(target.info.run_id).data.metrics
    results = per_example(client, target.info.run_id, tmp_path)
    assert metrics["final/robust_acc/fgsm_eps03"] == pytest.approx(results.masks["fgsm_eps03"].float().mean().item())
    assert "ieskips.eval.fgsm_eps03" not in client.get_run(other.info.run_id).data.tags
    code, out = finish(cli("evaluate", "--run", target.info.run_id, "--attack", strong, "--force", cwd=folder, env=env))
    assert code == 0, out[-3000:]  # forced: run again and merged per example (the same seed: the same mask)
    history = client.get_metric_history(target.info.run_id, "final/robust_acc/fgsm_eps03")
    assert len(history) == 2 and history[0].value == history[1].value


@pytest.mark.parametrize("args, message", [
    (["--sweep", "nosuchsweep"], "no sweep 'nosuchsweep'"),
    (["--sweep", "evalsweep", "--attack", "{name: pgd, eps: 2}"], "eps must be"),
    (["--sweep", "evalsweep", "--attack", "{name: nosuch}"], "unknown attack"),
    (["--sweep", "evalsweep", "--match", "ie_steps=9"], "no finished trial matching"),
    (["--sweep", "evalsweep", "--audit"], "--audit runs on one model"),
    (["--run", "0123456789abcdef", "--attack", "fgsm"], "no run 0123456789abcdef"),
])
def test_bad_input_is_one_line_and_exit_2_before_anything_is_written(trained, args, message, monkeypatch, capsys):
    from orchestration.cli import main

    folder, _, _, uri = trained
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client, before = trial_runs(uri)
    assert main(["evaluate", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    _, after = trial_runs(uri)
    assert [r.data.metrics for r in after] == [r.data.metrics for r in before]


def test_a_run_whose_stored_model_is_missing_or_unreadable_stops_the_job(trained, tmp_path):
    folder, _, env, uri = trained
    client, trials = trial_runs(uri)
    stored = Path(urlparse(client.get_run(trials[0].info.run_id).info.artifact_uri).path) / "model" / "weights.pt"
    shutil.copy(stored, tmp_path / "weights.pt")
    try:
        stored.write_bytes(b"not a model")
        code, out = finish(cli("evaluate", "--sweep", "evalsweep", "--attack", FGSM02,
                               cwd=folder, env=env))
        assert code == 2 and "is not a readable ieskips model file" in out, out
        stored.unlink()
        code, out = finish(cli("evaluate", "--sweep", "evalsweep", "--attack", FGSM02,
                               cwd=folder, env=env))
        assert code == 2 and "has no stored model" in out, out
        _, after = trial_runs(uri)
        assert not any("final/robust_acc/fgsm_eps02" in r.data.metrics or "ieskips.eval.fgsm_eps02" in r.data.tags
                       for r in after)
    finally:
        shutil.copy(tmp_path / "weights.pt", stored)
    code, out = finish(cli("evaluate", "--checkpoint", str(tmp_path / "weights.pt"), "--subset", "16", cwd=folder,
                           env=env))
    assert code == 0 and "pgd10" in out, out[-2000:]


def test_evaluate_diagnostics_measures_stored_models_like_any_evaluation(trained):
    folder, _, env, uri = trained
    code, out = finish(cli("evaluate", "--sweep", "evalsweep", "--diagnostics", cwd=folder, env=env))
    assert code == 0 and "2 to evaluate" in out, out[-3000:]
    client, trials = trial_runs(uri)
    for run in trials:
        assert run.data.metrics["final/diag/examples"] == 64
        assert 0 <= run.data.metrics["final/diag/stable_frac/all"] <= 1
        along = yaml.safe_load(run.data.tags["ieskips.eval.diagnostics"])["spec"]["stage_gain_along"]
        assert run.data.metrics[f"final/robust_acc/{along}"] == min(
            v for k, v in run.data.metrics.items() if k.startswith("final/robust_acc/") and k != "final/robust_acc/worst")
    code, out = finish(cli("evaluate", "--sweep", "evalsweep", "--diagnostics", cwd=folder, env=env))
    assert code == 0 and "0 to evaluate" in out, out[-3000:]
