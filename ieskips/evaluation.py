"""Natural and robust accuracy over a data loader, per attack and per-example worst case."""
from __future__ import annotations

import sys
from typing import Iterable, Mapping

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
