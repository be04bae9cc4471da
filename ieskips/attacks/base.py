"""What every attack shares: argument checks, eval mode, the inner-gradient switch, projection."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, check_choice, check_range
from ..models.ie_skip import INNER_GRAD_MODES, inner_grad_mode


def check_images(images: torch.Tensor) -> None:
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ConfigError(f"attack inputs must lie in [0, 1], got values in [{images.min():.3g}, {images.max():.3g}]; "
                          "pass unnormalised images (the model normalises)")


def check_eps(eps: float) -> None:
    check_range("eps", eps, 0, 1)


def check_steps(steps: int, name: str = "steps") -> None:
    check_range(name, steps, 0, low_open=True)


@contextlib.contextmanager
def attack_mode(model: nn.Module, inner_grad: str | None):
    """Eval mode (and optionally another IE gradient mode) for the attack; restored afterwards."""
    was_training = model.training
    model.eval()
    switch = inner_grad_mode(model, inner_grad) if inner_grad else contextlib.nullcontext()
    try:
        with switch:
            yield
    finally:
        model.train(was_training)


class Attack:
    """``attack(model, images, labels) -> adv_images``, inputs and outputs in [0, 1].

    Subclasses implement ``perturb``. The model is attacked in eval mode (restored afterwards);
    ``inner_grad`` ("detached" / "unrolled") switches the IE-Skips' gradient mode for the attack only.
    Gradients are taken with respect to the input alone, so no parameter ``.grad`` is touched.
    """

    name = "attack"
    subset: int | None = None  # set by build_attack: evaluate on a fixed draw of this many examples only

    def __init__(self, inner_grad: str | None = None):
        if inner_grad is not None:
            check_choice("inner_grad", inner_grad, INNER_GRAD_MODES)
        self.inner_grad = inner_grad

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_images(images)
        with attack_mode(model, self.inner_grad):
            adv = self.perturb(model, images.detach(), labels.detach())
        return adv.detach()

    def perturb(self, model, images, labels):  # pragma: no cover - abstract
        raise NotImplementedError


def project_linf(adv: torch.Tensor, images: torch.Tensor, eps: float) -> torch.Tensor:
    """Into the L-inf ball of radius ``eps`` around ``images``, then into [0, 1]."""
    return torch.clamp(images + torch.clamp(adv - images, -eps, eps), 0, 1)


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example C&W margin: best wrong logit minus the true logit (positive = misclassified)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    wrong = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return wrong - true


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "ce":
        return F.cross_entropy(logits, labels, reduction="none")
    return margin_loss(logits, labels)


def input_gradient(model: nn.Module, adv: torch.Tensor, labels: torch.Tensor, loss: str = "ce") -> torch.Tensor:
    """Gradient of the summed per-example loss with respect to the input only.

    Summed, not averaged, so an example's gradient does not depend on the batch size.
    """
    adv = adv.detach().requires_grad_()
    with torch.enable_grad():
        value = per_example_loss(model(adv), labels, loss).sum()
        (grad,) = torch.autograd.grad(value, adv)
    return grad
