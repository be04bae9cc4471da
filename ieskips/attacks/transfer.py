"""Black-box transfer attack."""
from __future__ import annotations

from torch import nn

from .base import Attack
from .registry import register_attack


@register_attack("transfer")
class Transfer(Attack):
    """Adversarial examples crafted on a source (oracle) model, then scored on the target.

    Paper: Papernot et al., "Practical Black-Box Attacks against Machine Learning", AsiaCCS 2017,
    https://arxiv.org/abs/1602.02697; the IE paper's Table 4 crafts FGSM (eps 16/255) on one ResNet-50
    and scores another. The target model passed to ``__call__`` is never queried for gradients.
    Norm: that of the inner attack. Shapes: as the inner attack.
    Example: ``adv = Transfer(source, FGSM(eps=16/255))(target, images, labels)``
    """

    name = "transfer"

    def __init__(self, source_model: nn.Module, attack: Attack):
        super().__init__(None)
        self.source_model, self.attack = source_model, attack

    def __call__(self, model, images, labels):
        return self.attack(self.source_model, images, labels)
