"""Checkpoint selection: the held-out split, the choice of epoch, the two metric families, resume."""
import pytest
import torch
from torch import nn

from ieskips.config import TrialConfig
from ieskips.data import hold_out, load_dataset
from ieskips.errors import ConfigError
from ieskips.evaluation import evaluate
from ieskips.training import Trial, load_checkpoint, train
from ieskips.training.selection import Selection

pytestmark = pytest.mark.unit
SELECT = {"name": "pgd", "eps": 0.1, "alpha": 0.05, "steps": 2}
SMALL = {"dataset": "digits", "width": 2, "batch_size": 64, "train_subset": 192, "test_subset": 48,
         "eval_subset": 16, "milestones": [], "train_steps": 2, "method": "fgsm", "train_eps": 0.1,
         "eval_attacks": [{"name": "fgsm", "eps": 0.1}], "val_size": 100, "select_attack": SELECT}


def test_hold_out_is_a_fixed_disjoint_unaugmented_draw():
    train_set, plain = load_dataset("digits", True), load_dataset("digits", True)
    rest, val = hold_out(train_set, plain, 100)
    assert len(val) == 100 and len(rest) == len(train_set) - 100
    assert not set(val.indices) & set(rest.indices) and val.dataset is plain and rest.dataset is train_set
    assert hold_out(train_set, plain, 100)[1].indices == val.indices  # the same for every trial
    with pytest.raises(ConfigError, match="val_size"):
        hold_out(train_set, plain, len(train_set))


def test_the_trial_trains_without_the_held_out_examples():
    trial = Trial.build(TrialConfig.from_dict({**SMALL, "train_subset": None, "data_on_device": False}))
    held = set(trial.selection.loader.dataset.indices)
    assert len(held) == 100 and not held & set(trial.train_loader.dataset.indices)
    assert len(trial.train_loader.dataset) == len(load_dataset("digits", True)) - 100


class Constant(nn.Module):
    """Predicts class ``k`` for every input; ``k`` is a buffer, so it travels in the state dict."""

    def __init__(self, k):
        super().__init__()
        self.register_buffer("k", torch.tensor(k))

    def forward(self, x):
        return nn.functional.one_hot(self.k.expand(len(x)), 3).to(x.dtype) * 10 + 0 * x.flatten(1)[:, :1]


def test_the_best_epoch_after_select_after_wins_and_ties_keep_the_earlier():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    loader = [(torch.rand(6, 1, 2, 2), labels)]
    selection = Selection(loader, {"name": "fgsm", "eps": 0.1}, after=1, epochs=5, device="cpu")
    model = Constant(0)
    scores = {}
    for epoch, k in enumerate([0, 2, 1, 0, 1], start=1):  # val accuracy 1/2, 1/6, 1/3, 1/2, 1/3
        model.k.fill_(k)
        scores[epoch] = selection.observe(model, epoch)
    assert scores[1] == {} and scores[2]["val/robust_acc"] == pytest.approx(1 / 6)
    assert selection.epoch == 4 and selection.score == pytest.approx(1 / 2) and int(selection.weights["k"]) == 0
    late = Selection(loader, {"name": "fgsm", "eps": 0.1}, after=99, epochs=5, device="cpu")
    assert late.after == 4 and late.observe(model, 5)  # the last epoch always competes


def test_train_reports_both_families_and_keeps_the_final_weights():
    config = TrialConfig.from_dict({**SMALL, "epochs": 3, "select_after": 1})
    trial = Trial.build(config)
    seen = []
    final = train(config, trial=trial, on_epoch=lambda e, m, p: seen.append(m), progress=False)
    assert "val/robust_acc" not in seen[0] and "val/robust_acc" in seen[1] and "val/robust_acc" in seen[2]
    chosen = final["selected/epoch"]
    assert chosen in (2, 3)
    assert final["selected/val_robust_acc"] == max(m["val/robust_acc"] for m in seen[1:])
    assert {"final/natural_acc", "final/robust_acc/fgsm", "selected/natural_acc", "selected/robust_acc/fgsm",
            "selected/robust_acc/worst"} <= set(final) and set(final) <= set(seen[-1])
    # the selected family scores the selected weights on the same test examples; the model keeps its own
    final_weights = {k: v.clone() for k, v in trial.model.state_dict().items()}
    trial.model.load_state_dict(trial.selection.weights)
    again = evaluate(trial.model, trial.test_loader, {"fgsm": trial.attacks["fgsm"]}, progress=False)
    assert again["robust_acc/fgsm"] == pytest.approx(final["selected/robust_acc/fgsm"])
    assert torch.equal(trial.selected_results.indices, trial.results.indices)
    trial.model.load_state_dict(final_weights)
    assert final["final/natural_acc"] == pytest.approx(evaluate(trial.model, trial.test_loader, {}, progress=False)
                                                       ["natural_acc"])


def test_without_val_size_there_is_no_selected_family():
    final = train(TrialConfig.from_dict({**SMALL, "epochs": 1, "val_size": 0}), progress=False)
    assert not [k for k in final if k.startswith("selected/")]


def test_resume_keeps_the_selection(tmp_path):
    config = TrialConfig.from_dict({**SMALL, "epochs": 3, "select_after": 0})
    straight = train(config, progress=False)

    class Stop(Exception):
        pass

    def stop_after_two(epoch, metrics, path):
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train(config, on_epoch=stop_after_two, checkpoint_dir=tmp_path, progress=False)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["selection"]["epoch"] in (1, 2)
    resumed = train(config, checkpoint_dir=tmp_path, resume_from=tmp_path / "checkpoint.pt", progress=False)
    assert resumed == straight


def test_a_final_evaluation_cut_short_resumes_with_only_its_missing_passes(tmp_path):
    """A lost machine during the (long) final evaluation costs one attack's pass, not the last epoch and
    every pass: each finished pass is checkpointed, and the resumed evaluation (same seeds per attack)
    gives the results of one made whole."""
    attacks = [{"name": "fgsm", "eps": 0.1}, {"name": "pgd", "eps": 0.1, "alpha": 0.05, "steps": 2}]
    config = TrialConfig.from_dict({**SMALL, "epochs": 2, "select_after": 0, "eval_attacks": attacks})
    whole = Trial.build(config)
    straight = train(config, trial=whole, progress=False)
    saved = []

    class Lost(Exception):
        pass

    weights = []

    def lose_after_the_fourth_pass(path):  # saves: epochs 1, 2, natural, fgsm, pgd, natural (selected)
        state = load_checkpoint(path)
        saved.append(sorted(state.get("final_stage", {}).get("selected", [])))
        weights.append(state["model"])
        if len(saved) == 6:
            raise Lost

    with pytest.raises(Lost):
        train(config, checkpoint_dir=tmp_path, on_checkpoint=lose_after_the_fourth_pass, progress=False)
    assert saved[-1] == ["natural"] and load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 2
    # a pass of the selected checkpoint saves the model's own (last epoch's) weights, not the selected ones
    # it is scoring: else the resumed trial stores the selected model as its last epoch's
    assert straight["selected/epoch"] == 1  # the selected weights differ from the last epoch's
    for state in weights[2:]:
        assert all(torch.equal(state[k], v) for k, v in whole.model.state_dict().items())
    made, reported = [], []
    resumed = Trial.build(config)
    import ieskips.evaluation as evaluation
    real = evaluation.correct_masks

    def counted(model, loader, attacks, *args, **kwargs):
        made.append(tuple(attacks))
        return real(model, loader, attacks, *args, **kwargs)

    evaluation.correct_masks = counted
    try:
        again = train(config, trial=resumed, resume_from=tmp_path / "checkpoint.pt", progress=False,
                      on_epoch=lambda e, m, p: reported.append(m))
    finally:
        evaluation.correct_masks = real
    assert made == [("fgsm",), ("pgd2",)]  # the selected checkpoint's two attacks; nothing trained again
    assert again == straight
    assert all(torch.equal(resumed.model.state_dict()[k], v) for k, v in whole.model.state_dict().items())
    cut_short = load_checkpoint(tmp_path / "checkpoint.pt")["final_stage"]["seconds"]
    assert len(reported) == 1  # the last epoch's report only: nothing trained again
    assert reported[0]["final_eval_time"] >= cut_short > 0  # the lost attempt's passes count too
    for label in ("natural", "fgsm", "pgd2"):
        assert torch.equal(resumed.results.masks[label], whole.results.masks[label])
        assert torch.equal(resumed.selected_results.masks[label], whole.selected_results.masks[label])


def test_training_sets_rotate_after_crop_and_flip_and_hold_out_plain_images(tmp_path):
    """The authors' CIFAR transform (utils.py:76-83): crop, flip, RandomRotation(15); the held-out split
    gets none of it."""
    import pickle

    import numpy as np
    from torchvision import transforms

    from ieskips.training.selection import training_sets

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for file in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, 4).tolist()}
        (base / file).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    config = TrialConfig.from_dict({"dataset": "cifar10", "data_dir": str(tmp_path), "rotate": 15,
                                    "data_on_device": False, "val_size": 5, "select_attack": SELECT})
    train_set, val = training_sets(config, augment=True, root=config.data_dir)
    steps = [type(t) for t in train_set.dataset.transform.transforms]
    assert steps == [transforms.RandomCrop, transforms.RandomHorizontalFlip, transforms.RandomRotation,
                     transforms.ToTensor]
    assert train_set.dataset.transform.transforms[2].degrees == [-15.0, 15.0]
    assert [type(t) for t in val.dataset.transform.transforms] == [transforms.ToTensor]
    assert len(val) == 5 and len(train_set) == 15
