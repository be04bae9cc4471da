"""Device-hour budgets: the ledger's arithmetic, and a sweep that stops starting trials at its cap."""
import pytest
import yaml

from ieskips.errors import ConfigError
from orchestration.sweep.budget import Ledger
from orchestration.sweep.spec import parse_spec

from .helpers import REPO, cli, ray_env, runs, write_spec

SMOKE = yaml.safe_load((REPO / "sweeps" / "smoke.yaml").read_text())


def finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


@pytest.mark.unit
def test_the_ledger_admits_a_trial_only_while_spent_plus_committed_plus_expected_fits():
    ledger = Ledger(limit=10.0, kind="gpu", unit=1.0, spent_before=2.0, seen=[3.0])  # one earlier trial: 3 h
    assert ledger.admits()  # 2 spent + 3 expected <= 10
    ledger.start("a", epochs=10)
    assert ledger.committed() == pytest.approx(5.0)  # a running trial counts as the expected 3 h
    assert ledger.admits()  # 5 + 3 <= 10
    ledger.start("b", epochs=10)
    assert not ledger.admits() and ledger.refused  # 8 + 3 > 10
    ledger.update("a", {"cost/wall_s": 3600.0, "epoch": 5})  # 1 h for half of it: 2 h in all
    ledger.complete("a", {"cost/wall_s": 2 * 3600.0, "epoch": 10})
    assert ledger.expected() == pytest.approx(2.5)  # mean of 3 h and 2 h
    assert ledger.spent() == pytest.approx(4.0)


@pytest.mark.unit
def test_with_nothing_seen_trials_start_while_under_the_cap_and_extrapolate_from_epochs():
    ledger = Ledger(limit=1.0, kind="cpu", unit=2.0)
    assert ledger.admits() and ledger.expected() is None
    ledger.start("a", epochs=4)
    ledger.update("a", {"cost/wall_s": 450.0, "epoch": 1})  # 2 CPUs x 450 s = 0.25 h per epoch -> 1 h
    assert ledger.expected() == pytest.approx(1.0)
    assert not ledger.admits()
    assert Ledger(limit=None, kind="cpu", unit=1.0).admits()


@pytest.mark.unit
@pytest.mark.parametrize("budget, resources, words", [
    ({"gpu_hours": 1, "cpu_hours": 1}, {"cpu": 1}, "one of gpu_hours or cpu_hours"),
    ({}, {"cpu": 1}, "one of gpu_hours or cpu_hours"),
    ({"gpu_hours": -1}, {"cpu": 1, "gpu": 1}, "budget.gpu_hours"),
    ({"gpu_hours": 5}, {"cpu": 1, "gpu": 0}, "resources.gpu is 0: use budget.cpu_hours"),
])
def test_malformed_budgets_give_one_clear_line(budget, resources, words):
    with pytest.raises(ConfigError, match=words):
        parse_spec({**SMOKE, "budget": budget, "resources": resources})


@pytest.mark.integration
@pytest.mark.slow
def test_a_cap_that_admits_two_of_four_trials_runs_two_and_says_so(tmp_path):
    env, uri = ray_env(), f"sqlite:///{tmp_path / 'mlflow.db'}"
    # One trial first, so that the sweep knows what a trial costs here; then the cap is set so that what is
    # spent plus two more such trials fits, and a third does not.
    first = write_spec(tmp_path, name="capped", grid={"seed": [1], "ie_steps": [0], "method": ["natural"]})
    code, out = finish(cli("sweep", "run", str(first), cwd=tmp_path, env=env))
    assert code == 0, out[-3000:]
    client, _, (seen,) = runs(uri, "ieskips-smoke")
    hours = seen.data.metrics["cost/cpu_hours"]
    assert hours == pytest.approx(seen.data.metrics["cost/wall_s"] / 3600)
    cap = 3.5 * hours
    spec = write_spec(tmp_path, name="capped", budget={"cpu_hours": cap})  # the smoke grid: four trials
    code, out = finish(cli("sweep", "run", str(spec), cwd=tmp_path, env=env))
    assert code == 0, out[-3000:]
    assert "4 trials in the file; 0 complete (skipped), 4 to run" in out and f"of {cap:g} cpu-hours spent" in out
    assert "2 trials not started: the budget" in out
    client, parents, trials = runs(uri, "ieskips-smoke")
    assert len(trials) == 3 and all(r.info.status == "FINISHED" for r in trials)
    assert parents[0].data.metrics["cost/cpu_hours"] == pytest.approx(sum(r.data.metrics["cost/cpu_hours"]
                                                                          for r in trials))
    code, out = finish(cli("sweep", "status", "capped", cwd=tmp_path, env=env))
    assert code == 0 and "3 FINISHED, 2 not started" in out and "2 trials left undone by it" in out, out
    code, out = finish(cli("sweep", "run", str(spec), cwd=tmp_path, env=env))
    assert code == 0 and "2 trials not started: the budget is spent" in out, out[-3000:]


@pytest.mark.unit
def test_time_left_comes_from_the_epoch_times_and_final_evaluations_seen_so_far():
    from types import SimpleNamespace

    from orchestration.sweep.budget import hours, time_left

    def run(run_id, epoch, wall, final=None):
        metrics = {"epoch": epoch, "cost/wall_s": wall, **({"final_eval_time": final} if final is not None else {})}
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id), data=SimpleNamespace(metrics=metrics))

    left, per_new, final = time_left([run("a", 2, 20.0), run("b", 4, 80.0), run("c", 0, 0.0)], lambda r: 10,
                                     planned_epochs=[10, 10])
    assert left == {"a": pytest.approx(80.0), "b": pytest.approx(120.0)}  # 10 s and 20 s per epoch so far
    assert per_new == pytest.approx(150.0) and final is None  # the mean rate, 15 s per epoch, times 10 epochs
    # A finished run's final evaluation (50 s) is not training: 10 s per epoch, and 50 s more for the others.
    left, per_new, final = time_left([run("a", 2, 20.0), run("done", 10, 150.0, final=50.0)], lambda r: 10,
                                     planned_epochs=[10])
    assert final == pytest.approx(50.0) and left["a"] == pytest.approx(80.0 + 50.0) and left["done"] == 0
    assert per_new == pytest.approx(10 * 10 + 50.0)
    assert hours(45) == "45s" and hours(600) == "10.0min" and hours(7200) == "2.0h" and hours(None) == "?"


def test_total_left_counts_killed_runs_and_those_not_started():
    from orchestration.sweep.budget import total_left

    left = {"killed": 300.0, "running": 100.0, "done": 0.0}
    # a killed run is continued by `sweep run`: its rest counts (it was left out once, so a resumed Table 1
    # showed half its hours); one that timed no epoch and one not started each count as a new trial
    total, wall = total_left(left, ["killed", "running", "untimed"], 50.0, not_started=2, slots=2)
    assert total == pytest.approx(550.0) and wall == pytest.approx(300.0)  # the killed one is the longest
    assert total_left(left, ["running"], 50.0, not_started=3, slots=2) == (pytest.approx(250.0),
                                                                          pytest.approx(125.0))
    assert total_left(left, ["killed"], None, not_started=0, slots=8) == (pytest.approx(300.0), pytest.approx(300.0))
    assert total_left(left, ["killed"], None, not_started=1) == (None, None)  # no rate seen to guess a new trial by
    assert total_left(left, [], None, not_started=0) == (0, 0)  # nothing left
