"""PGD along the gradient of the exact implicit step (implicit function theorem)."""
from __future__ import annotations

from ..errors import check_range
from ..models.solver import ImplicitModel
from .registry import register_attack
from .surrogate import SurrogatePGD


@register_attack("pgd_ift")
class IFTPGD(SurrogatePGD):
    """PGD whose gradients are those of the exact implicit-Euler model: every IE-Skip solved to
    ``tol`` (Anderson acceleration on ``x = x_prev + f(x)``) and differentiated by the implicit
    function theorem (``ieskips.models.solver.ImplicitModel``); the examples are scored on the
    model as it is (K inner steps of Alg. 1).

    Paper: Madry et al. 2018 (PGD), https://arxiv.org/abs/1706.06083; implicit gradients of a
    fixed point: Bai, Kolter & Koltun, "Deep Equilibrium Models", NeurIPS 2019,
    https://arxiv.org/abs/1909.01377; their use against implicit models: Yang, Pang & Liu, NeurIPS
    2022, https://arxiv.org/abs/2306.01429. A model without IE-Skips gets plain PGD.
    Norm: L-inf. Defaults: eps 8/255, alpha 1/255, 20 steps, random start, tol 1e-4, 30 solver iterations.
    Shapes: images (N, C, H, W) in [0, 1], labels (N,) -> adv (N, C, H, W) in [0, 1].
    Example: ``adv = IFTPGD(eps=8/255, steps=20, tol=1e-4)(model, images, labels)``
    """

    name = "pgd_ift"

    def __init__(self, eps: float = 8 / 255, alpha: float = 1 / 255, steps: int = 20, random_start: bool = True,
                 restarts: int = 1, loss: str = "ce", tol: float = 1e-4, max_iter: int = 30, keep: str = "last"):
        super().__init__(eps, alpha, steps, random_start, restarts, loss, keep)
        check_range("tol", tol, 0, low_open=True)
        check_range("max_iter", max_iter, 0, low_open=True)
        self.tol, self.max_iter = tol, int(max_iter)

    def surrogate(self, model):
        return ImplicitModel(model, self.tol, self.max_iter)
