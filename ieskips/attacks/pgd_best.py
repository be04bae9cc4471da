"""PGD that returns each example's highest-loss iterate (the transfer attacks' inner attack)."""
from __future__ import annotations

from .registry import register_attack
from .surrogate import SurrogatePGD


@register_attack("pgd_best")
class BestPGD(SurrogatePGD):
    """PGD that keeps per example the iterate with the highest loss on the model it attacks, over
    every step and restart, whether or not that model is ever fooled (PGD returns the last one).

    Paper: Madry et al. 2018, https://arxiv.org/abs/1706.06083; as a transfer attack's inner attack
    (``{name: transfer, source: explicit, attack: {name: pgd_best, steps: 20}}``) it is scored on the
    SOURCE at each iteration, which is all a transfer attack may see (Papernot et al. 2017,
    https://arxiv.org/abs/1602.02697): the highest source loss transfers best.
    Norm: L-inf. Defaults: eps 8/255, alpha 1/255, 20 steps, random start, CE loss.
    Shapes: images (N, C, H, W) in [0, 1], labels (N,) -> adv (N, C, H, W) in [0, 1].
    Example: ``adv = Transfer(source, BestPGD(eps=8/255, steps=20))(model, images, labels)``
    """

    name = "pgd_best"

    def __init__(self, eps: float = 8 / 255, alpha: float = 1 / 255, steps: int = 20, random_start: bool = True,
                 restarts: int = 1, loss: str = "ce", inner_grad: str | None = None):
        super().__init__(eps, alpha, steps, random_start, restarts, loss, "source", inner_grad)
