"""Sweeps that grow: trial identity, readable names, extending a sweep in place, rerunning a killed trial."""
import json
import os
import signal
from types import SimpleNamespace

import pytest

from ieskips.config import TrialConfig
from orchestration.sweep.identity import SCHEME, identity, naming, pending, run_name, trial_config
from orchestration.sweep.spec import parse_spec

from .helpers import REPO, cli, ray_env, runs, wait_for, write_spec

SMOKE = REPO / "sweeps" / "smoke.yaml"

# TrialConfig's defaults when identity.SCHEME was set: an identity leaves defaults out of its hash, so a
# changed default would silently keep old identities. Changing one means bumping SCHEME (every trial reruns).
PINNED_DEFAULTS = {
    "model": "preact_resnet18", "width": 8, "ie_steps": 0, "ie_step_size": 0.05, "inner_grad": "detached",
    "norm": "group", "dataset": "digits", "train_subset": None, "test_subset": None, "eval_subset": 256,
    "augment": True, "method": "natural", "train_eps": 8 / 255, "train_alpha": 2 / 255, "train_steps": 10,
    "trades_beta": 6.0, "epochs": 180, "batch_size": 128, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
    "milestones": [80, 120, 160], "lr_factor": 0.2, "seed": 0, "bf16": False, "diagnostics": False,
    "diagnostics_examples": 64,
    "eval_attacks": [{"name": "fgsm", "eps": 8 / 255}, {"name": "pgd", "eps": 8 / 255, "alpha": 1 / 255, "steps": 20}],
}


def finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


# --- identity and names (unit) ------------------------------------------------------------------------

@pytest.mark.unit
def test_identity_follows_resolved_values_not_spelling_or_runtime():
    base = {"dataset": "digits", "epochs": 2}
    same = identity(TrialConfig.from_dict(base))
    assert identity(TrialConfig.from_dict({**base, "lr": 0.05, "seed": 0})) == same  # defaults spelled out
    assert identity(TrialConfig.from_dict({**base, "lr": 5e-2})) == same
    assert identity(TrialConfig.from_dict({**base, "device": "cpu", "num_workers": 2, "data_dir": "/x",
                                           "paper_table": "t1", "checkpoint_every": 3})) == same
    for change in ({"seed": 1}, {"ie_steps": 1}, {"lr": 0.01}, {"eval_attacks": [{"name": "fgsm", "eps": 0.1}]},
                   {"bf16": True}):
        assert identity(TrialConfig.from_dict({**base, **change})) != same, change


@pytest.mark.unit
def test_trial_config_defaults_are_pinned_for_the_identity_scheme():
    defaults = TrialConfig.model_construct().to_dict()
    changed = {k: (v, defaults.get(k)) for k, v in PINNED_DEFAULTS.items() if defaults.get(k, "<gone>") != v}
    assert not changed, (f"TrialConfig defaults changed {changed}: identities leave defaults out, so bump "
                         f"orchestration.sweep.identity.SCHEME (now {SCHEME}; every trial reruns) or keep the default")


@pytest.mark.unit
def test_run_names_are_readable_and_unique_per_identity():
    spec = parse_spec({**_smoke(), "grid": {"ie_steps": [0, 1], "method": ["natural", "fgsm"], "seed": [0, 1]}})
    names = [run_name(trial_config(spec.base, p), **naming(spec)) for p in spec.grid_points()]
    assert "preact_resnet18-K1-fgsm-s1" in names and len(set(names)) == len(names) == 8
    gamma = parse_spec({**_smoke(), "grid": {"ie_steps": [1], "ie_step_size": [0.05, 0.1]}})
    assert [run_name(trial_config(gamma.base, p), **naming(gamma)) for p in gamma.grid_points()] == [
        "preact_resnet18-K1-natural-s0-g0.05", "preact_resnet18-K1-natural-s0-g0.1"]
    search = parse_spec({**_smoke(), "search": {"samples": 3, "params": {
        "ie_step_size": {"type": "uniform", "low": 0.01, "high": 0.2}}}})
    config = trial_config(search.base, {"ie_steps": 1, "method": "natural", "ie_step_size": 0.123})
    assert run_name(config, **naming(search)) == f"preact_resnet18-K1-natural-s0-{identity(config)[:6]}"


@pytest.mark.unit
def test_pending_skips_complete_identities_and_reruns_the_rest():
    spec = parse_spec(_smoke())
    points = spec.grid_points()
    ids = [identity(trial_config(spec.base, p)) for p in points]

    def run(ident, status, **tags):
        return SimpleNamespace(info=SimpleNamespace(status=status),
                               data=SimpleNamespace(tags={"ieskips.identity": ident, **tags}, metrics={}))

    found = [run(ids[0], "FINISHED"), run(ids[1], "FAILED"), run(ids[2], "KILLED"),
             run(ids[3], "KILLED", **{"ieskips.stopped_early": "true"}), run("other", "FINISHED")]
    todo = pending(spec, found)
    assert todo.points == [points[1], points[2]] and todo.skipped == 2 and todo.samples == 2


@pytest.mark.unit
def test_pending_search_hands_known_results_and_counts_new_samples():
    spec = parse_spec({**_smoke(), "search": {"samples": 6, "metric": "natural_acc", "params": {
        "ie_step_size": {"type": "uniform", "low": 0.01, "high": 0.2}}}})

    def run(point, value):
        ident = identity(trial_config(spec.base, point))
        return SimpleNamespace(info=SimpleNamespace(status="FINISHED"), data=SimpleNamespace(
            tags={"ieskips.identity": ident, "ieskips.point": json.dumps(point)}, metrics={"natural_acc": value}))

    inside = {"ie_steps": 0, "method": "natural", "ie_step_size": 0.1}
    outside = {"ie_steps": 0, "method": "natural", "ie_step_size": 0.5}  # no longer in the searched range
    todo = pending(spec, [run(inside, 0.9), run(outside, 0.8)])
    assert todo.known == [(inside, 0.9)] and todo.samples == 5 and len(todo.points) == 4


@pytest.mark.unit
def test_the_searcher_gets_known_results_and_never_hands_out_a_complete_identity():
    from ray.tune.search import Searcher

    from orchestration.sweep.budget import Ledger
    from orchestration.sweep.tuner import searcher_for

    spec = parse_spec({**_smoke(), "grid": {"ie_steps": [1], "method": ["natural"]}, "search": {
        "samples": 3, "metric": "natural_acc", "params": {"ie_step_size": {"type": "choice", "values": [0.05, 0.1]}}}})
    done = {"ie_steps": 1, "method": "natural", "ie_step_size": 0.05}
    todo = SimpleNamespace(points=[], done={identity(trial_config(spec.base, done)): None}, known=[(done, 0.9)],
                           samples=3)
    space, searcher = searcher_for(spec, dict(spec.base), todo, Ledger(None, "cpu", 1))
    assert searcher.set_search_properties("natural_acc", "max", space)
    assert [(t.params["ie_step_size"], t.value) for t in searcher.inner._ot_study.trials] == [(0.05, 0.9)]
    assert searcher.suggest("t1")["ie_step_size"] == 0.1  # 0.05 is complete: drawn again
    assert searcher.suggest("t2") == Searcher.FINISHED  # 0.05 complete, 0.1 running: nothing new to run


def _smoke() -> dict:
    import yaml

    return yaml.safe_load(SMOKE.read_text())


# --- extending a sweep in place (integration) -----------------------------------------------------------

def _launch(spec, folder, env, expect=0):
    code, out = finish(cli("sweep", "run", str(spec), cwd=folder, env=env))
    assert code == expect, out[-3000:]
    return out


def _by_identity(trials):
    ids = [r.data.tags["ieskips.identity"] for r in trials]
    assert len(set(ids)) == len(ids), "two runs for one identity"
    return {r.data.tags["ieskips.identity"]: r for r in trials}


@pytest.mark.integration
@pytest.mark.slow
def test_extend_by_a_seed_then_a_grid_value_runs_only_the_new_trials(tmp_path):
    env, uri = ray_env(), f"sqlite:///{tmp_path / 'mlflow.db'}"
    small = {"epochs": 2}
    spec = write_spec(tmp_path, name="grow", base=small, grid={"ie_steps": [0, 1], "method": ["natural"]})
    out = _launch(spec, tmp_path, env)
    assert "2 trials in the file; 0 complete (skipped), 2 to run" in out
    _, parents, first = runs(uri, "ieskips-smoke")
    first = _by_identity(first)
    assert {r.info.run_name for r in first.values()} == {"preact_resnet18-K0-natural-s0",
                                                         "preact_resnet18-K1-natural-s0"}

    spec = write_spec(tmp_path, name="grow", base=small,
                      grid={"ie_steps": [0, 1], "method": ["natural"], "seed": [0, 1]})
    out = _launch(spec, tmp_path, env)
    assert "4 trials in the file; 2 complete (skipped), 2 to run" in out
    _, parents2, second = runs(uri, "ieskips-smoke")
    second = _by_identity(second)
    assert len(second) == 4 and set(first) < set(second)
    for ident, run in first.items():  # untouched: same run, same end
        assert second[ident].info.run_id == run.info.run_id and second[ident].info.end_time == run.info.end_time
    assert {r.info.run_name for i, r in second.items() if i not in first} == {
        "preact_resnet18-K0-natural-s1", "preact_resnet18-K1-natural-s1"}

    spec = write_spec(tmp_path, name="grow", base=small,
                      grid={"ie_steps": [0, 1, 2], "method": ["natural"], "seed": [0, 1]})
    out = _launch(spec, tmp_path, env)
    assert "6 trials in the file; 4 complete (skipped), 2 to run" in out
    client, parents3, third = runs(uri, "ieskips-smoke")
    third = _by_identity(third)
    assert len(third) == 6 and all(r.info.status == "FINISHED" for r in third.values())
    assert sorted(r.info.run_name for i, r in third.items() if i not in second) == [
        "preact_resnet18-K2-natural-s0", "preact_resnet18-K2-natural-s1"]
    assert len(parents3) == 1 and parents3[0].info.run_id == parents[0].info.run_id
    assert parents3[0].info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in third.values()} == {parents[0].info.run_id}
    assert len({r.data.tags["ieskips.launch"] for r in third.values()}) == 3
    total = sum(r.data.metrics["cost/cpu_hours"] for r in third.values())
    assert client.get_run(parents[0].info.run_id).data.metrics["cost/cpu_hours"] == pytest.approx(total)

    out = _launch(spec, tmp_path, env)
    assert "6 complete (skipped), 0 to run" in out  # nothing left: nothing started
    code, out = finish(cli("sweep", "status", "grow", cwd=tmp_path, env=env))
    assert code == 0 and "6 FINISHED" in out
    for run in third.values():
        assert run.info.run_name in out and run.data.tags["ieskips.identity"] in out


@pytest.mark.integration
@pytest.mark.slow
def test_a_trial_killed_for_good_resumes_alone_where_its_bundle_is_imported(tmp_path):
    """The machine that ran it is gone (its Tune storage with it): the killed trial's run, carried in a
    bundle with its last checkpoint, resumes from that checkpoint in the store it is imported to."""
    env, uri = ray_env(), f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = write_spec(tmp_path, name="kill", base={"epochs": 24}, retries=0,
                      grid={"ie_steps": [0, 1], "method": ["natural"]})
    driver = cli("sweep", "run", str(spec), cwd=tmp_path, env=env, start_new_session=True)
    try:
        def victim():
            client, _, trials = runs(uri, "ieskips-smoke")
            return next((r for r in trials if r.data.tags.get("ieskips.pid") and r.info.status == "RUNNING"
                         and len(client.get_metric_history(r.info.run_id, "train_loss")) >= 2), None)

        target = wait_for(victim, 300, every=0.2)
        os.kill(int(target.data.tags["ieskips.pid"]), signal.SIGKILL)  # the trial's worker process, for good
        code, out = finish(driver)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert code == 1, out[-3000:]
    assert f"FAILED    {target.info.run_name}" in out and "cause:" in out
    _, parents, trials = runs(uri, "ieskips-smoke")
    before = _by_identity(trials)
    killed = before[target.data.tags["ieskips.identity"]]
    assert killed.info.status == "FAILED" and killed.data.tags["ieskips.error"]
    other = next(r for r in before.values() if r.info.run_id != killed.info.run_id)
    assert other.info.status == "FINISHED"

    bundle, elsewhere = tmp_path / "bundle", tmp_path / "elsewhere"
    assert finish(cli("results", "export", str(spec), str(bundle), cwd=tmp_path, env=env))[0] == 0
    carried = json.loads((bundle / "bundle.json").read_text())["files"]
    assert f"runs/{killed.info.run_name}/artifacts/resume/checkpoint.pt" in carried
    assert f"runs/{other.info.run_name}/artifacts/resume/checkpoint.pt" not in carried  # finished: its model is
    elsewhere.mkdir()
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{elsewhere / 'mlflow.db'}"}
    assert finish(cli("results", "import", str(bundle), cwd=elsewhere, env=env))[0] == 0
    out = _launch(spec, elsewhere, env)
    assert "2 trials in the file; 1 complete (skipped), 1 to run" in out
    _, parents, trials = runs(env["MLFLOW_TRACKING_URI"], "ieskips-smoke")
    after = _by_identity(trials)
    assert len(after) == 2 and all(r.info.status == "FINISHED" for r in after.values())
    rerun = after[target.data.tags["ieskips.identity"]]
    assert rerun.data.tags["ieskips.imported_from"] == killed.info.run_id and "ieskips.error" not in rerun.data.tags
    assert int(rerun.data.tags["ieskips.resumed_from_epoch"]) >= 2  # not from scratch
    assert after[other.data.tags["ieskips.identity"]].info.end_time == other.info.end_time
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


@pytest.mark.integration
@pytest.mark.slow
def test_extending_a_search_adds_samples_and_hands_the_searcher_what_it_has(tmp_path):
    env, uri = ray_env(), f"sqlite:///{tmp_path / 'mlflow.db'}"
    search = {"samples": 2, "seed": 3, "metric": "natural_acc",
              "params": {"ie_step_size": {"type": "uniform", "low": 0.01, "high": 0.2}}}
    spec = write_spec(tmp_path, name="searching", base={"epochs": 1}, grid={"ie_steps": [1], "method": ["natural"]},
                      search=search)
    out = _launch(spec, tmp_path, env)
    assert "search of 2 samples; 0 complete" in out and "2 to run" in out
    _, _, first = runs(uri, "ieskips-smoke")
    assert len(_by_identity(first)) == 2

    spec = write_spec(tmp_path, name="searching", base={"epochs": 1}, grid={"ie_steps": [1], "method": ["natural"]},
                      search={**search, "samples": 4})
    out = _launch(spec, tmp_path, env)
    assert "search of 4 samples; 2 complete (their results go to the searcher first), 2 to run" in out
    _, parents, trials = runs(uri, "ieskips-smoke")
    trials = _by_identity(trials)
    assert len(trials) == 4 and len(parents) == 1
    assert all(r.info.status == "FINISHED" for r in trials.values())
    assert {r.info.run_id for r in first} <= {r.info.run_id for r in trials.values()}
