"""PGD through another inner solver of the same weights (test-time K, step size)."""
from __future__ import annotations

from ..errors import check_range
from ..models.solver import SolverVariant
from .registry import register_attack
from .surrogate import SurrogatePGD


@register_attack("pgd_solver")
class SolverPGD(SurrogatePGD):
    """PGD whose gradients come from the model with its IE-Skips run by another solver; the
    adversarial examples are scored on the model as it is.

    Paper: Madry et al. 2018 (PGD), https://arxiv.org/abs/1706.06083, attacking through a surrogate
    forward as in BPDA (Athalye, Carlini & Wagner, ICML 2018, https://arxiv.org/abs/1802.00420);
    solver-dependent robustness: Yang, Pang & Liu, NeurIPS 2022, https://arxiv.org/abs/2306.01429.
    ``ie_steps=0`` is the explicit twin (vanilla ResNet, same weights), ``ie_steps`` above the
    model's K solves better, ``ie_step_size_scale`` multiplies every IE-Skip's step size (damped < 1).
    ``keep`` as in ``SurrogatePGD`` ("target": per example the iterate the real model scores worst).
    Norm: L-inf. Defaults: eps 8/255, alpha 1/255, 20 steps, random start, the model's own K and step.
    Shapes: images (N, C, H, W) in [0, 1], labels (N,) -> adv (N, C, H, W) in [0, 1].
    Example: ``adv = SolverPGD(eps=8/255, steps=20, ie_steps=0)(model, images, labels)``
    """

    name = "pgd_solver"

    def __init__(self, eps: float = 8 / 255, alpha: float = 1 / 255, steps: int = 20, random_start: bool = True,
                 restarts: int = 1, loss: str = "ce", ie_steps: int | None = None,
                 ie_step_size_scale: float | None = None, keep: str = "last", inner_grad: str | None = None):
        super().__init__(eps, alpha, steps, random_start, restarts, loss, keep, inner_grad)
        if ie_steps is not None:
            check_range("ie_steps", ie_steps, 0)
        if ie_step_size_scale is not None:
            check_range("ie_step_size_scale", ie_step_size_scale, 0)
        self.ie_steps, self.ie_step_size_scale = ie_steps, ie_step_size_scale

    def surrogate(self, model):
        return SolverVariant(model, self.ie_steps, self.ie_step_size_scale)
