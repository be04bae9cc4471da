"""FGSM."""
from __future__ import annotations

from .base import Attack, check_eps, input_gradient
from .registry import register_attack


@register_attack("fgsm")
class FGSM(Attack):
    """Fast Gradient Sign Method.

    Paper: Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015,
    https://arxiv.org/abs/1412.6572
    Norm: L-inf. Defaults: eps 8/255 (the IE paper uses 0.15 on MNIST, 1/255 and 16/255 on CIFAR).
    Shapes: images (N, C, H, W) in [0, 1], labels (N,) -> adv (N, C, H, W) in [0, 1].
    Example: ``adv = FGSM(eps=0.15)(model, images, labels)``
    """

    name = "fgsm"

    def __init__(self, eps: float = 8 / 255, inner_grad: str | None = None):
        super().__init__(inner_grad)
        check_eps(eps)
        self.eps = eps

    def perturb(self, model, images, labels):
        grad = input_gradient(model, images, labels, "ce")
        return (images + self.eps * grad.sign()).clamp(0, 1)
