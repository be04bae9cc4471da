"""`ieskips sweep plan`: trials, epochs and device-hours before anything runs."""
import pytest

from ieskips.config import TrialConfig
from ieskips.attacks.cost import SURVIVING, attack_passes
from orchestration.sweep.plan import calibrate, costs_at_rate, method_passes, phases, plan, trial_seconds
from orchestration.sweep.spec import load_spec, smoke_spec

from .helpers import REPO

pytestmark = pytest.mark.unit


def test_a_trial_is_counted_phase_by_phase():
    config = TrialConfig.from_dict({"dataset": "digits", "epochs": 3, "method": "pgd", "train_steps": 5,
                                    "train_subset": 100, "test_subset": 40, "eval_subset": 20,
                                    "eval_attacks": [{"name": "pgd", "steps": 10},
                                                     {"name": "square", "queries": 30, "subset": 10}]})
    assert method_passes(config) == 6
    costs = costs_at_rate(config, rate=50.0)
    pgd, square = (10 + 1 / 3) / 50, 30 / 3 * SURVIVING / 50
    assert costs.attacks == {"pgd10": pytest.approx(pgd), "square": pytest.approx(square)}
    split = phases(config, costs)
    assert split["train"] == pytest.approx(3 * 100 * 6 / 50)
    assert split["monitor"] == pytest.approx(3 * 20 * (1 / 3 + 10 + 1 / 3) / 50)  # the cheapest gradient attack
    assert split["final"] == pytest.approx(40 * (1 / 3) / 50 + 40 * pgd + 10 * square)  # square on its subset
    assert trial_seconds(config, costs) == pytest.approx(sum(split.values()))
    selected = TrialConfig.from_dict({**config.to_dict(), "val_size": 10, "select_after": 1})
    assert phases(selected, costs)["final"] == pytest.approx(2 * split["final"])  # the selected checkpoint too
    assert phases(selected, costs)["select"] > 0
    assert attack_passes({"name": "transfer", "attack": {"name": "fgsm"}}) > attack_passes({"name": "fgsm"})
    assert attack_passes({"name": "pgd", "inner_grad": "unrolled"}) > attack_passes({"name": "pgd"})


def test_a_calibration_times_each_attack_at_the_trials_batch_size_and_scales_it(monkeypatch):
    """What is timed and how it is scaled (a fixed clock: timings themselves are the benchmark's,
    benchmarks/plan_accuracy.py)."""
    import orchestration.sweep.plan as plan_module

    timed = []

    def clock(fn, batch, device, repeats):
        fn()
        timed.append(batch)
        return 1.0

    monkeypatch.setattr(plan_module, "_per_example", clock)
    config = TrialConfig.from_dict({"dataset": "digits", "width": 4, "batch_size": 16, "ie_steps": 1,
                                    "eval_attacks": [{"name": "fgsm"}, {"name": "pgd", "steps": 20, "restarts": 2},
                                                     {"name": "pgd", "steps": 20, "inner_grad": "unrolled"},
                                                     {"name": "square", "queries": 100, "subset": 10}]})
    costs = calibrate(config, "cpu")
    assert set(timed) == {16}  # the trial's batch size throughout
    assert costs.attacks == {"fgsm": 1.0, "pgd20": 20.0, "pgd20_unrolled": 10.0,
                             "square": pytest.approx(1 + 100 * SURVIVING)}  # two steps timed, then scaled
    assert costs.train == costs.forward == 1.0


def test_plan_of_a_paper_sweep_at_a_given_rate_scales_by_the_gpus_each_trial_holds():
    spec = load_spec(REPO / "sweeps" / "table1.yaml")
    result = plan(spec, "cpu", images_per_sec=1000.0)
    assert result["trials"] == 9 and sum(r["trials"] for r in result["rows"]) == 9
    assert result["device"] == "gpu" and result["device_hours"] == pytest.approx(result["trial_hours"] * 0.25)
    assert result["trial_hours"] == pytest.approx(
        sum(trial_seconds(c, costs_at_rate(c, 1000.0)) for c in spec.trial_configs()) / 3600)


def test_plan_command_calibrates_here_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from orchestration.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "plan", str(REPO / "sweeps" / "smoke.yaml"), "--smoke", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "smoke-smoke: 4 trials" in out and "calibration on cpu" in out and "cpu-hours" in out and "final" in out
    assert list(tmp_path.iterdir()) == []
    assert main(["sweep", "plan", str(REPO / "sweeps" / "smoke.yaml"), "--images-per-sec", "0"]) == 2
    spec = smoke_spec(load_spec(REPO / "sweeps" / "smoke.yaml"))
    assert plan(spec, "cpu")["rows"][0]["images_per_sec"] > 0
