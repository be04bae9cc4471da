"""The trainer: every method, exact resume, divergence, bad configs."""
import pytest

from ieskips.config import TrialConfig, load_config
from ieskips.errors import ConfigError
from ieskips.training import TrainingDiverged, load_checkpoint, train
from ieskips.training.trainer import TIMINGS
from tests.device import DEVICE

pytestmark = pytest.mark.unit
SMALL = {"dataset": "digits", "width": 4, "epochs": 1, "batch_size": 64, "train_subset": 256, "test_subset": 64,
         "eval_subset": 32, "milestones": [], "train_steps": 2, "device": str(DEVICE),  # a GPU where one is lent
         "eval_attacks": [{"name": "fgsm", "eps": 0.1}, {"name": "pgd", "eps": 0.1, "alpha": 0.05, "steps": 3}]}


@pytest.mark.parametrize("method", ["natural", "fgsm", "pgd", "trades"])
def test_each_method_trains_one_epoch(method):
    seen = []
    final = train(TrialConfig.from_dict({**SMALL, "method": method, "ie_steps": 1}),
                  on_epoch=lambda e, m, p: seen.append((e, m)), progress=False)
    epoch, metrics = seen[0]
    assert epoch == 1 and {"train_loss", "train_acc", "natural_acc", "robust_acc/fgsm", "lr",
                           "epoch_time", "images_per_sec", "final/robust_acc/pgd3"} <= set(metrics)
    assert "robust_acc/pgd3" not in metrics  # monitoring: the cheapest gradient attack; the suite runs at the end
    assert 0 <= final["final/robust_acc/worst"] <= final["final/natural_acc"] <= 1


def test_monitoring_runs_its_own_attacks_each_epoch_and_the_suite_once():
    seen = []
    config = TrialConfig.from_dict({**SMALL, "epochs": 2, "monitor_attacks": [{"name": "pgd", "eps": 0.1, "steps": 2}],
                                    "eval_attacks": [*SMALL["eval_attacks"], {"name": "square", "eps": 0.1, "queries": 5}]})
    final = train(config, on_epoch=lambda e, m, p: seen.append(m), progress=False)
    assert {k for k in seen[0] if k.startswith("robust_acc/")} == {"robust_acc/pgd2", "robust_acc/worst"}
    assert {"final/robust_acc/fgsm", "final/robust_acc/pgd3", "final/robust_acc/square"} <= set(final)
    square = TrialConfig.from_dict({**SMALL, "eval_attacks": [{"name": "square", "eps": 0.1}]})
    assert square.monitors() == ()  # no gradient attack to monitor with: clean accuracy only
    assert TrialConfig.from_dict(SMALL).monitors() == ({"name": "fgsm", "eps": 0.1},)


@pytest.mark.parametrize("on_device", [True, False], ids=["device_loader", "dataloader"])
def test_resume_gives_identical_metrics(tmp_path, on_device):
    config = TrialConfig.from_dict({**SMALL, "epochs": 3, "ie_steps": 1, "method": "pgd", "milestones": [1],
                                    "data_on_device": on_device})
    straight = []
    final = train(config, on_epoch=lambda e, m, p: straight.append(m), progress=False)
    stopped = TrialConfig.from_dict({**config.to_dict(), "epochs": 3})
    first = []

    class Stop(Exception):
        pass

    def stop_after_two(epoch, metrics, path):
        first.append(metrics)
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train(stopped, on_epoch=stop_after_two, checkpoint_dir=tmp_path, progress=False)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 2
    rest = []
    resumed = train(stopped, on_epoch=lambda e, m, p: rest.append(m), checkpoint_dir=tmp_path,
                    resume_from=tmp_path / "checkpoint.pt", progress=False)
    drop = lambda m: {k: v for k, v in m.items() if k not in TIMINGS}  # noqa: E731
    assert [drop(m) for m in first + rest] == [drop(m) for m in straight]
    assert resumed == final


def test_checkpoint_holds_the_resolved_config_and_loads_weights_only(tmp_path):
    config = TrialConfig.from_dict({**SMALL, "ie_steps": 2})
    train(config, checkpoint_dir=tmp_path, progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert TrialConfig.from_dict(state["config"]) == config
    assert not list(tmp_path.glob(".*.tmp"))


def test_divergence_is_a_clear_error():
    config = TrialConfig.from_dict({**SMALL, "lr": 1e6, "momentum": 0.0, "ie_steps": 1, "ie_step_size": 50.0})
    with pytest.raises(TrainingDiverged, match="diverged at epoch 1"):
        train(config, progress=False)


@pytest.mark.parametrize("values, words", [
    ({"epochz": 3}, ["epochz", "valid keys"]),
    ({"ie_steps": -1}, ["ie_steps", "greater than or equal to 0"]),
    ({"method": "madry"}, ["method", "trades"]),
    ({"dataset": "imagenet"}, ["dataset", "cifar10"]),
    ({"model": "resnet18"}, ["unknown model", "preact_resnet18"]),
    ({"eval_attacks": [{"name": "pgd", "eps": 2}]}, ["eps"]),
    ({"preset": "imagenet"}, ["preset", "cifar"]),
    ({"device": "tpu"}, ["device"]),
])
def test_bad_config_is_refused_with_one_line(values, words):
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_dict(values)
    assert all(w in str(info.value) for w in words) and "\n" not in str(info.value)


def test_yaml_file_with_overrides(tmp_path):
    path = tmp_path / "trial.yaml"
    path.write_text("preset: mnist\nie_steps: 1\n")
    config = load_config(path, ["ie_steps=3", "lr=0.1"])
    assert (config.epochs, config.ie_steps, config.lr) == (35, 3, 0.1)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(path, ["ie_steps"])
    (tmp_path / "bad.yaml").write_text("ie_steps: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_transfer_attacks_from_an_oracle_checkpoint_and_from_the_explicit_twin(tmp_path):
    train(TrialConfig.from_dict({**SMALL, "ie_steps": 0}), checkpoint_dir=tmp_path / "oracle", progress=False)
    attacks = [{"name": "transfer", "source": str(tmp_path / "oracle" / "checkpoint.pt"),
                "attack": {"name": "fgsm", "eps": 0.2}},
               {"name": "transfer", "label": "from_twin", "source": "explicit", "attack": {"name": "fgsm", "eps": 0.2}}]
    final = train(TrialConfig.from_dict({**SMALL, "ie_steps": 1, "eval_attacks": attacks}), progress=False)
    assert {"final/robust_acc/transfer_fgsm", "final/robust_acc/from_twin"} <= set(final)
    assert final["final/robust_acc/transfer_fgsm"] <= final["final/natural_acc"]
    with pytest.raises(ConfigError, match="source"):
        TrialConfig.from_dict({**SMALL, "eval_attacks": [{"name": "transfer", "attack": {"name": "fgsm"}}]})
    with pytest.raises(ConfigError, match="does not exist"):
        train(TrialConfig.from_dict({**SMALL, "eval_attacks": [{**attacks[0], "source": str(tmp_path / "no.pt")}]}),
              progress=False)


def test_diagnostics_switch_logs_stability_each_epoch_and_with_the_final_metrics():
    seen = []
    config = TrialConfig.from_dict({**SMALL, "epochs": 2, "ie_steps": 1, "diagnostics": True,
                                    "diagnostics_examples": 16})
    final = train(config, on_epoch=lambda e, m, p: seen.append(m), progress=False)
    for metrics in seen:
        assert metrics["diag/examples"] == 16 and 0 <= metrics["diag/stable_frac/all"] <= 1
        assert metrics["diag/prop3_frac/all"] <= metrics["diag/prop3_frac/block0"]
        assert metrics["diag/residual/mean"] < metrics["diag/residual_explicit/mean"]  # K = 1 corrects it
        assert metrics["diag/stage_gain/mean"] > 0  # along the strongest attack's perturbation
    assert final["final/diag/stable_frac/all"] == seen[-1]["diag/stable_frac/all"]
    assert not any(k.startswith("final/diag/") for k in train(TrialConfig.from_dict(SMALL), progress=False))


def test_channels_last_trains_to_the_same_metrics_on_cpu():
    """A memory format only (not part of a trial's identity): the same numbers within float tolerance."""
    config = {**SMALL, "device": "cpu", "ie_steps": 1, "eval_attacks": [{"name": "fgsm", "eps": 0.1}]}
    plain = train(TrialConfig.from_dict(config), progress=False)
    fast = train(TrialConfig.from_dict({**config, "channels_last": True}), progress=False)
    assert fast == pytest.approx(plain, abs=0.02)
