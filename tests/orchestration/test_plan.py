"""`ieskips sweep plan`: trials, epochs and device-hours before anything runs."""
import pytest

from ieskips.config import TrialConfig
from orchestration.plan import attack_passes, method_passes, plan, trial_seconds
from orchestration.spec import load_spec, smoke_spec

from .helpers import REPO

pytestmark = pytest.mark.unit


def test_a_trial_is_counted_in_forward_backward_passes():
    config = TrialConfig.from_dict({"dataset": "digits", "epochs": 3, "method": "pgd", "train_steps": 5,
                                    "train_subset": 100, "test_subset": 40, "eval_subset": 20,
                                    "eval_attacks": [{"name": "pgd", "steps": 10}, {"name": "square", "queries": 30}]})
    assert method_passes(config) == 6
    per_example = 1 + (10 + 1 / 3) + 30 / 3
    expected = 3 * (100 * 6 + 20 * per_example) + 40 * per_example
    assert trial_seconds(config, rate=50.0) == pytest.approx(expected / 50)
    assert attack_passes({"name": "transfer", "attack": {"name": "fgsm"}}) > attack_passes({"name": "fgsm"})


def test_plan_of_a_paper_sweep_at_a_given_rate_scales_by_the_gpus_each_trial_holds():
    spec = load_spec(REPO / "sweeps" / "table1.yaml")
    result = plan(spec, "cpu", images_per_sec=1000.0)
    assert result["trials"] == 9 and sum(r["trials"] for r in result["rows"]) == 9
    assert result["device"] == "gpu" and result["device_hours"] == pytest.approx(result["trial_hours"] * 0.25)
    assert result["trial_hours"] == pytest.approx(sum(trial_seconds(c, 1000.0) for c in spec.trial_configs()) / 3600)


def test_plan_command_calibrates_here_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from orchestration.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "plan", str(REPO / "sweeps" / "smoke.yaml"), "--smoke", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "smoke-smoke: 4 trials" in out and "calibration on cpu" in out and "cpu-hours" in out
    assert list(tmp_path.iterdir()) == []
    assert main(["sweep", "plan", str(REPO / "sweeps" / "smoke.yaml"), "--images-per-sec", "0"]) == 2
    spec = smoke_spec(load_spec(REPO / "sweeps" / "smoke.yaml"))
    assert plan(spec, "cpu")["rows"][0]["images_per_sec"] > 0
