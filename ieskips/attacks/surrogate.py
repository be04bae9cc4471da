"""What the adaptive PGD attacks share: gradients from a stand-in for the attacked model (the same
weights under another solver, the exact implicit step, or the model itself), restarts scored on the
attacked model, and optionally the best iterate kept instead of the last one."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import check_choice
from .base import per_example_loss
from .pgd import PGD

KEEP = ("last", "source", "target")


def fooled_first(logits: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
    """Every misclassified candidate above every correct one, then by loss (as PGD's restarts)."""
    fooled = logits.argmax(1) != labels
    return fooled.float() * 1e6 + per_example_loss(logits, labels, loss).clamp(-1e5, 1e5)


class _Tracked:
    """Calls ``source``; scores every input it is called on and keeps per example the best one.

    ``target`` None: scored by the loss on ``source``'s own logits (no extra forward; what a
    transfer attack can know). Else scored on ``target`` (one no-grad forward more), misclassified first.
    """

    def __init__(self, source: nn.Module, target: nn.Module | None, images, labels, loss: str):
        self.source, self.target, self.labels, self.loss = source, target, labels, loss
        self.best, self.key = images.clone(), torch.full_like(labels, float("-inf"), dtype=images.dtype)

    def __call__(self, x):
        logits = self.source(x)
        with torch.no_grad():
            if self.target is None:
                key = per_example_loss(logits.detach(), self.labels, self.loss)
            else:
                key = fooled_first(self.target(x), self.labels, self.loss)
            better = key > self.key
            self.best = torch.where(better[:, None, None, None], x.detach(), self.best)
            self.key = torch.where(better, key, self.key)
        return logits


class SurrogatePGD(PGD):
    """PGD whose gradient steps follow ``self.surrogate(model)`` while the attacked model scores the
    restarts; the loop, the projection and the restarts are PGD's own.

    keep: ``"last"`` (PGD's last iterate), ``"source"`` (per example the iterate with the highest
    loss on the surrogate, even if it never misclassifies there), ``"target"`` (the iterate the
    attacked model scores worst, misclassified first: one more forward of it per step).
    """

    def __init__(self, eps: float = 8 / 255, alpha: float = 1 / 255, steps: int = 20, random_start: bool = True,
                 restarts: int = 1, loss: str = "ce", keep: str = "last", inner_grad: str | None = None):
        super().__init__(eps, alpha, steps, random_start, restarts, loss, inner_grad)
        check_choice("keep", keep, KEEP)
        self.keep = keep

    def surrogate(self, model: nn.Module) -> nn.Module:
        return model

    def perturb(self, model, images, labels):
        source = self.surrogate(model)
        tracked = None
        if self.keep != "last":
            source = tracked = _Tracked(source, model if self.keep == "target" else None, images, labels, self.loss)
        self._source = source
        try:
            adv = super().perturb(model, images, labels)
        finally:
            del self._source
        return adv if tracked is None else tracked.best

    def _run(self, model, images, labels):
        adv = super()._run(self._source, images, labels)
        if self.keep != "last":
            with torch.no_grad():
                self._source(adv)  # the final iterate is a candidate too
        return adv
