"""Natural and robust accuracy over a data loader, per attack and per-example worst case.

One path for every evaluation, at training time and any time later: the model is scored per example
(``correct_masks``), the masks are kept with the test-set indices and identity (``ExampleResults``),
and the metrics come from the masks. Results stored for a run compose: merging a later evaluation
adds its attacks, so the per-example worst case can only stay or fall.
"""
from __future__ import annotations

import io
import sys
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .attacks.base import Attack


def correct_masks(model: nn.Module, loader: Iterable, attacks: Mapping[str, Attack], device="cpu",
                  progress: bool | None = None, covered: Mapping[str, torch.Tensor] | None = None
                  ) -> dict[str, torch.Tensor]:
    """Per example, whether the model is right: ``"natural"`` on clean inputs, and per attack name
    right on the clean input *and* on that attack's adversarial input (a clean mistake is never
    counted robust). Boolean tensors over the loader's examples, in loader order; an attack named in
    ``covered`` (a boolean mask over the loader's examples, see ``fixed_draw``) is run on those
    examples only, and its tensor holds just them.
    """
    device = torch.device(device)
    model.to(device)
    was_training = model.training
    model.eval()
    covered = covered or {}
    masks = {name: [] for name in ("natural", *attacks)}
    show = sys.stderr.isatty() if progress is None else progress
    seen = 0
    try:
        for images, labels in tqdm(loader, desc="evaluate", disable=not show, leave=False):
            images, labels = images.to(device), labels.to(device)
            natural = _predict(model, images) == labels
            masks["natural"].append(natural.cpu())
            for name, attack in attacks.items():
                keep = covered[name][seen:seen + len(labels)].to(device) if name in covered else None
                x, y, right = (images, labels, natural) if keep is None else (images[keep], labels[keep], natural[keep])
                if len(y):
                    masks[name].append((right & (_predict(model, attack(model, x, y)) == y)).cpu())
            seen += len(labels)
    finally:
        model.train(was_training)
    return {name: torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool) for name, parts in masks.items()}


def fixed_draw(count: int, size: int) -> torch.Tensor:
    """A boolean mask over ``count`` examples choosing ``size`` of them: the first ``size`` of a seed-0
    permutation (as ``ieskips.data.subset`` draws), so every run and every later evaluation of the same
    examples attacks the same ones; a smaller draw lies inside a larger one."""
    chosen = torch.zeros(count, dtype=torch.bool)
    chosen[torch.randperm(count, generator=torch.Generator().manual_seed(0))[:size]] = True
    return chosen


def _predict(model, images):
    with torch.no_grad():
        return model(images).argmax(1)


def accuracies(masks: Mapping[str, torch.Tensor], covered: Mapping[str, torch.Tensor] | None = None
               ) -> dict[str, float]:
    """``natural_acc``, ``robust_acc/<name>`` and ``robust_acc/worst`` (right under every attack).
    ``covered``: for attacks run on a subset, which examples their masks hold (see ``correct_masks``);
    each attack's accuracy is over its own examples, the worst case over those every attack faced."""
    covered = covered or {}
    natural = masks["natural"]
    out = {"natural_acc": natural.float().mean().item()}
    attack_masks = {name: m for name, m in masks.items() if name != "natural"}
    for name, mask in attack_masks.items():
        out[f"robust_acc/{name}"] = mask.float().mean().item()
    if attack_masks:
        known = torch.ones_like(natural)
        right = torch.ones_like(natural)
        for name, mask in attack_masks.items():
            where = covered.get(name, known.new_ones(len(natural)))
            full = torch.zeros_like(natural)
            full[where] = mask
            known, right = known & where, right & full
        out["robust_acc/worst"] = right[known].float().mean().item()
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
    covered: dict = field(default_factory=dict)  # label -> boolean mask over ``indices``: an attack run on a subset

    def accuracies(self) -> dict[str, float]:
        return accuracies(self.masks, self.covered)

    def merge(self, other: "ExampleResults") -> "ExampleResults":
        """Both evaluations' attacks. A label in both keeps an example only where both runs of it left
        it right (a second run of an attack can only find more adversarial examples)."""
        if other.identity != self.identity or not torch.equal(other.indices, self.indices):
            raise ValueError(f"per-example results of different test examples cannot be combined "
                             f"({self.identity}, {len(self.indices)} examples vs {other.identity}, "
                             f"{len(other.indices)} examples)")
        masks, covered = dict(self.masks), dict(self.covered)
        for label, mask in other.masks.items():
            if label in masks and not torch.equal(self._coverage(label), other._coverage(label)):
                raise ValueError(f"per-example results of {label!r} on different examples cannot be combined")
            masks[label] = masks[label] & mask if label in masks else mask
            if label in other.covered:
                covered[label] = other.covered[label]
        return ExampleResults(self.identity, self.indices, masks, covered)

    def _coverage(self, label: str) -> torch.Tensor:
        return self.covered.get(label, torch.ones(len(self.indices), dtype=torch.bool))

    def only(self, labels) -> "ExampleResults":
        return ExampleResults(self.identity, self.indices, {k: v for k, v in self.masks.items() if k in labels},
                              {k: v for k, v in self.covered.items() if k in labels})

    def to_bytes(self, label: str) -> bytes:
        """One label's mask as a compressed ``.npz`` (indices, mask, identity): a few bytes per example."""
        buffer = io.BytesIO()
        indices = self.indices[self.covered[label]] if label in self.covered else self.indices
        np.savez_compressed(buffer, indices=indices.numpy(), correct=self.masks[label].numpy(),
                            identity=np.array(self.identity), label=np.array(label))
        return buffer.getvalue()

    @classmethod
    def from_files(cls, paths: Iterable[str | Path]) -> "ExampleResults | None":
        """Merge the ``.npz`` files ``to_bytes`` wrote (read without pickle); None for no file. The file
        with the most examples (``natural``) names them all; a label on fewer covers those it holds."""
        parts = []
        for path in paths:
            with np.load(path, allow_pickle=False) as data:
                parts.append((str(data["identity"]), torch.from_numpy(data["indices"]).long(), str(data["label"]),
                              torch.from_numpy(data["correct"]).bool()))
        if not parts:
            return None
        everything = max((indices for _, indices, _, _ in parts), key=len)
        merged = None
        for identity, indices, label, correct in parts:
            covered = {}
            if not torch.equal(indices, everything):
                covered = {label: torch.isin(everything, indices)}
                if int(covered[label].sum()) != len(indices) or not torch.equal(everything[covered[label]], indices):
                    raise ValueError(f"per-example results of {label!r} hold examples outside the others'")
            part = cls(identity, everything, {label: correct}, covered)
            merged = part if merged is None else merged.merge(part)
        return merged


def evaluate_examples(model: nn.Module, loader: Iterable, attacks: Mapping[str, Attack], device="cpu", *,
                      identity: str, indices: torch.Tensor, progress: bool | None = None, seed: int = 0,
                      done: Mapping[str, torch.Tensor] | None = None,
                      on_pass: Callable[[dict], None] | None = None) -> ExampleResults:
    """``correct_masks`` kept with the examples' indices and the test set's identity. An attack with a
    ``subset`` (too costly for every example) runs on that fixed draw of them (``fixed_draw``).

    Each attack has its own pass over the loader, its random draws seeded by ``seed`` and its label, so
    an evaluation cut short and continued gives the same masks as one run whole: ``done`` holds the
    masks of the passes already made (as ``on_pass`` received them after each pass), which are not
    made again. An hour-long final evaluation then loses at most one attack's pass to a lost machine."""
    covered = {name: fixed_draw(len(indices), attack.subset) for name, attack in attacks.items()
               if getattr(attack, "subset", None) and attack.subset < len(indices)}
    masks = {name: mask for name, mask in (done or {}).items() if name == "natural" or name in attacks}
    for name in ("natural", *attacks):
        if name in masks:
            continue
        chosen = {name: attacks[name]} if name in attacks else {}
        with _seeded(seed, name, torch.device(device)):
            masks[name] = correct_masks(model, loader, chosen, device, progress, covered)[name]
        if on_pass is not None:
            on_pass(dict(masks))
    if len(masks["natural"]) != len(indices):
        raise ValueError(f"the loader gave {len(masks['natural'])} examples for {len(indices)} indices")
    return ExampleResults(identity, indices.long(), {name: masks[name] for name in ("natural", *attacks)}, covered)


@contextmanager
def _seeded(seed: int, label: str, device: torch.device):
    """The global RNG (an attack's random start draws from it) seeded by ``seed`` and ``label`` inside,
    as it was outside."""
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed * 1_000_003 + zlib.crc32(label.encode()))
        yield
