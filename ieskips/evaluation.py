"""Natural and robust accuracy over a data loader, per attack and per-example worst case.

One path for every evaluation, at training time and any time later: the model is scored per example
(``correct_masks``), the masks are kept with the test-set indices and identity (``ExampleResults``),
and the metrics come from the masks. Results stored for a run compose: merging a later evaluation
adds its attacks, so the per-example worst case can only stay or fall.
"""
from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .attacks.base import Attack


def correct_masks(model: nn.Module, loader: Iterable, attacks: Mapping[str, Attack], device="cpu",
                  progress: bool | None = None) -> dict[str, torch.Tensor]:
    """Per example, whether the model is right: ``"natural"`` on clean inputs, and per attack name
    right on the clean input *and* on that attack's adversarial input (a clean mistake is never
    counted robust). Boolean tensors over the loader's examples, in loader order.
    """
    device = torch.device(device)
    model.to(device)
    was_training = model.training
    model.eval()
    masks = {name: [] for name in ("natural", *attacks)}
    show = sys.stderr.isatty() if progress is None else progress
    try:
        for images, labels in tqdm(loader, desc="evaluate", disable=not show, leave=False):
            images, labels = images.to(device), labels.to(device)
            natural = _predict(model, images) == labels
            masks["natural"].append(natural.cpu())
            for name, attack in attacks.items():
                adv = attack(model, images, labels)
                masks[name].append((natural & (_predict(model, adv) == labels)).cpu())
    finally:
        model.train(was_training)
    return {name: torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool) for name, parts in masks.items()}


def _predict(model, images):
    with torch.no_grad():
        return model(images).argmax(1)


def accuracies(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``natural_acc``, ``robust_acc/<name>`` and ``robust_acc/worst`` (right under every attack)."""
    out = {"natural_acc": masks["natural"].float().mean().item()}
    attack_masks = {name: m for name, m in masks.items() if name != "natural"}
    for name, mask in attack_masks.items():
        out[f"robust_acc/{name}"] = mask.float().mean().item()
    if attack_masks:
        out["robust_acc/worst"] = torch.stack(list(attack_masks.values())).all(0).float().mean().item()
    return out


def evaluate(model: nn.Module, loader: Iterable, attacks: Mapping[str, Attack], device="cpu",
             progress: bool | None = None) -> dict[str, float]:
    """``{"natural_acc": ..., "robust_acc/<name>": ..., "robust_acc/worst": ...}`` as fractions in [0, 1]."""
    return accuracies(correct_masks(model, loader, attacks, device, progress))


@dataclass(frozen=True)
class ExampleResults:
    """Per example, whether the model was right: ``masks["natural"]`` and one mask per attack label
    (right on the clean and on the adversarial input), over the test examples ``indices`` of the test
    set ``identity`` (see ``ieskips.data.ScoredExamples``)."""

    identity: str
    indices: torch.Tensor
    masks: dict

    def accuracies(self) -> dict[str, float]:
        return accuracies(self.masks)

    def merge(self, other: "ExampleResults") -> "ExampleResults":
        """Both evaluations' attacks. A label in both keeps an example only where both runs of it left
        it right (a second run of an attack can only find more adversarial examples)."""
        if other.identity != self.identity or not torch.equal(other.indices, self.indices):
            raise ValueError(f"per-example results of different test examples cannot be combined "
                             f"({self.identity}, {len(self.indices)} examples vs {other.identity}, "
                             f"{len(other.indices)} examples)")
        masks = dict(self.masks)
        for label, mask in other.masks.items():
            masks[label] = masks[label] & mask if label in masks else mask
        return ExampleResults(self.identity, self.indices, masks)

    def only(self, labels) -> "ExampleResults":
        return ExampleResults(self.identity, self.indices, {k: v for k, v in self.masks.items() if k in labels})

    def to_bytes(self, label: str) -> bytes:
        """One label's mask as a compressed ``.npz`` (indices, mask, identity): a few bytes per example."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, indices=self.indices.numpy(), correct=self.masks[label].numpy(),
                            identity=np.array(self.identity), label=np.array(label))
        return buffer.getvalue()

    @classmethod
    def from_files(cls, paths: Iterable[str | Path]) -> "ExampleResults | None":
        """Merge the ``.npz`` files ``to_bytes`` wrote (read without pickle); None for no file."""
        merged = None
        for path in paths:
            with np.load(path, allow_pickle=False) as data:
                part = cls(str(data["identity"]), torch.from_numpy(data["indices"]).long(),
                           {str(data["label"]): torch.from_numpy(data["correct"]).bool()})
            merged = part if merged is None else merged.merge(part)
        return merged


def evaluate_examples(model: nn.Module, loader: Iterable, attacks: Mapping[str, Attack], device="cpu", *,
                      identity: str, indices: torch.Tensor, progress: bool | None = None) -> ExampleResults:
    """``correct_masks`` kept with the examples' indices and the test set's identity."""
    masks = correct_masks(model, loader, attacks, device, progress)
    if len(masks["natural"]) != len(indices):
        raise ValueError(f"the loader gave {len(masks['natural'])} examples for {len(indices)} indices")
    return ExampleResults(identity, indices.long(), masks)
