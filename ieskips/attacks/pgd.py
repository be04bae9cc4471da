"""PGD (L-inf) with random starts, restarts and a CE or C&W-margin loss."""
from __future__ import annotations

import torch

from ..errors import check_choice, check_range
from .base import Attack, check_eps, check_steps, input_gradient, per_example_loss, project_linf
from .registry import register_attack

LOSSES = ("ce", "cw")


@register_attack("pgd")
class PGD(Attack):
    """Projected Gradient Descent, L-inf.

    Paper: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018,
    https://arxiv.org/abs/1706.06083 (``loss="cw"``: the margin loss of Carlini & Wagner 2017,
    https://arxiv.org/abs/1608.04644, what later papers call "C&W-inf").
    Norm: L-inf. Defaults: eps 8/255, alpha 1/255, 20 steps, random start (the IE paper's evaluation:
    PGD-20 and PGD-100 with alpha 1/255; its training uses alpha 2/255 with 3 or 10 steps).
    With ``restarts > 1`` each example keeps its worst case: misclassified first, then highest loss.
    Shapes: images (N, C, H, W) in [0, 1], labels (N,) -> adv (N, C, H, W) in [0, 1].
    Example: ``adv = PGD(eps=8/255, alpha=1/255, steps=20)(model, images, labels)``
    """

    name = "pgd"

    def __init__(self, eps: float = 8 / 255, alpha: float = 1 / 255, steps: int = 20, random_start: bool = True,
                 restarts: int = 1, loss: str = "ce", inner_grad: str | None = None):
        super().__init__(inner_grad)
        check_eps(eps)
        check_range("alpha", alpha, 0, low_open=True)
        check_steps(steps)
        check_steps(restarts, "restarts")
        check_choice("loss", loss, LOSSES)
        self.eps, self.alpha, self.steps = eps, alpha, int(steps)
        self.random_start, self.restarts, self.loss = random_start, int(restarts), loss

    def perturb(self, model, images, labels):
        best = self._run(model, images, labels)
        if self.restarts == 1:
            return best
        best_key = self._score(model, best, labels)
        for _ in range(self.restarts - 1):
            adv = self._run(model, images, labels)
            key = self._score(model, adv, labels)
            better = key > best_key
            best = torch.where(better[:, None, None, None], adv, best)
            best_key = torch.maximum(key, best_key)
        return best

    def _run(self, model, images, labels):
        adv = images
        if self.random_start:
            adv = project_linf(images + torch.empty_like(images).uniform_(-self.eps, self.eps), images, self.eps)
        for _ in range(self.steps):
            step = self.alpha * input_gradient(model, adv, labels, self.loss).sign()
            adv = project_linf(adv + step, images, self.eps)
        return adv

    def _score(self, model, adv, labels):
        """Orders candidates: every misclassified one above every correct one, then by loss."""
        with torch.no_grad():
            logits = model(adv)
        loss = per_example_loss(logits, labels, self.loss)
        fooled = logits.argmax(1) != labels
        return fooled.float() * 1e6 + loss.clamp(-1e5, 1e5)
