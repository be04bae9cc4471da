"""Checkpoint selection on a held-out validation split, under a strong attack; never on the test set.

The paper reports one model per row without saying which epoch. The authors' code keeps, after epoch
125 of 150, the checkpoint with the best one-step PGD accuracy on the *test* set (train.py:240-244).
Here ``val_size`` training examples are held out (``ieskips.data.hold_out``); after each epoch past
``select_after`` the model is attacked there with ``select_attack`` and the weights with the best robust
accuracy are kept (ties keep the earlier epoch, as the authors' ``best_acc < adv_acc``). At the end the
test set scores both models with the same attacks, as two metric families a report column chooses by
name: ``final/...`` (the last epoch) and ``selected/...`` (the selected checkpoint, plus
``selected/epoch`` and ``selected/val_robust_acc``). Each candidate epoch also logs ``val/natural_acc``
and ``val/robust_acc``.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

from ..attacks import attack_label, build_attack
from ..config import TrialConfig
from ..data import hold_out, load_dataset, subset
from ..evaluation import ExampleResults, evaluate, evaluate_examples


def training_sets(config: TrialConfig, augment: bool, **data) -> tuple[Dataset, Dataset | None]:
    """The training examples (``augment`` and ``rotate`` in their transform; ``train_subset`` drawn from
    them) and, with ``val_size``, the held-out validation split, unaugmented; else ``None``."""
    train = load_dataset(config.dataset, True, augment=augment, rotate=config.rotate, **data)
    val = None
    if config.val_size:
        plain = load_dataset(config.dataset, True, augment=False, **data) if augment else train
        train, val = hold_out(train, plain, config.val_size)
    return subset(train, config.train_subset, config.seed), val


class Selection:
    """The best checkpoint so far on the validation loader; its weights are kept on the CPU."""

    def __init__(self, loader, attack_spec: dict, after: int, epochs: int, device):
        self.loader, self.device = loader, device
        self.attacks = {attack_label(attack_spec): build_attack(attack_spec)}
        self.after = min(after, epochs - 1)  # the last epoch always competes
        self.epoch, self.score, self.weights = 0, -math.inf, None

    @classmethod
    def build(cls, config: TrialConfig, loader, device) -> "Selection":
        return cls(loader, config.select_attack, config.select_after, config.epochs, device)

    def observe(self, model: torch.nn.Module, epoch: int) -> dict:
        """After epoch ``epoch``: score a candidate on the split, keep it if strictly better; its metrics."""
        if epoch <= self.after:
            return {}
        found = evaluate(model, self.loader, self.attacks, self.device, progress=False)
        score = found[f"robust_acc/{next(iter(self.attacks))}"]
        if score > self.score:
            self.epoch, self.score = epoch, score
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return {"val/natural_acc": found["natural_acc"], "val/robust_acc": score}

    def evaluate_selected(self, trial, progress: bool = False, done=None, on_pass=None) -> tuple[ExampleResults, dict]:
        """The selected weights scored on the trial's test examples with its attacks (which see the
        trial's model, so an ``explicit`` transfer follows the weights); the model's own weights are put
        back afterwards. Returns the per-example results and the ``selected/...`` metrics. ``done`` and
        ``on_pass``: as ``evaluate_examples``'s (a final evaluation resumed)."""
        model = trial.model
        current = {k: v.detach().clone() for k, v in model.state_dict().items()}

        def saved(masks):  # a pass's checkpoint holds the model's own weights: a resumed trial stores those
            model.load_state_dict(current)
            try:
                on_pass(masks)
            finally:
                model.load_state_dict(self.weights)

        model.load_state_dict(self.weights)
        try:
            results = evaluate_examples(model, trial.test_loader, trial.attacks, trial.device,
                                        identity=trial.test.identity, indices=trial.test.indices, progress=progress,
                                        seed=trial.config.seed, done=done, on_pass=saved if on_pass else None)
        finally:
            model.load_state_dict(current)
        metrics = {f"selected/{k}": v for k, v in results.accuracies().items()}
        metrics.update({"selected/epoch": self.epoch, "selected/val_robust_acc": self.score})
        return results, metrics

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "score": self.score, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.score, self.weights = int(state["epoch"]), float(state["score"]), state["weights"]
