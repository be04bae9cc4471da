"""Feature-space attack: move the features entering the IE stages toward another class's."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError, check_range
from .base import Attack, check_eps, check_steps, project_linf
from .registry import register_attack


class _Stop(Exception):
    """Raised by the capture hook: nothing after the feature layer needs computing."""


class _Features:
    """``features(x)``: the output of ``model``'s submodule ``layer``, the rest of the forward skipped."""

    def __init__(self, model: nn.Module, layer: str):
        names = dict(model.named_modules())
        matches = [n for n in names if n == layer] or [n for n in names if n.endswith("." + layer)]
        if len(matches) != 1:
            top = ", ".join(n for n, _ in model.named_children())
            raise ConfigError(f"the feature attack's layer {layer!r} names {len(matches)} submodules of the "
                              f"model; set layer to one dotted module name (top level: {top})")
        self.model, self.module = model, names[matches[0]]

    def __call__(self, x):
        captured = []

        def hook(module, inputs, output):
            captured.append(output)
            raise _Stop

        handle = self.module.register_forward_hook(hook)
        try:
            self.model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        return captured[0]


@register_attack("feature")
class FeatureSpace(Attack):
    """Feature-space attack: L-inf PGD that pulls an input's features at ``layer`` (default the
    stem, i.e. what enters the first IE stage) toward those of a correctly classified example of its
    clean runner-up class, the nearest such one in feature space (from the batch, or ``pool``).

    Paper: Croce et al., "Evaluating the Adversarial Robustness of Adaptive Test-time Defenses",
    ICML 2022, https://arxiv.org/abs/2202.13711 (adaptive attacks that bypass the defended part);
    feature targets as in Sabour et al., "Adversarial Manipulation of Deep Representations", ICLR
    2016, https://arxiv.org/abs/1511.05122. The gradient never passes through an IE-Skip when
    ``layer`` lies before them, so a masked inner solve cannot hide it. Where the runner-up class has
    no candidate the next most likely class that has one is used; an example with none at all is
    returned unchanged. Returns the last iterate.
    Norm: L-inf. Defaults: eps 8/255, alpha 1/255, 50 steps, random start, layer "stem".
    Shapes: images (N, C, H, W) in [0, 1], labels (N,) -> adv (N, C, H, W) in [0, 1];
    ``pool``: an optional (images, labels) pair of target candidates.
    Example: ``adv = FeatureSpace(eps=8/255, steps=50)(model, images, labels)``
    """

    name = "feature"

    def __init__(self, eps: float = 8 / 255, alpha: float = 1 / 255, steps: int = 50, layer: str = "stem",
                 random_start: bool = True, pool: tuple | None = None):
        super().__init__(None)
        check_eps(eps)
        check_range("alpha", alpha, 0, low_open=True)
        check_steps(steps)
        if pool is not None and not (len(pool) == 2 and all(torch.is_tensor(t) for t in pool)):
            raise ConfigError("the feature attack's pool must be an (images, labels) pair of tensors; leave it "
                              "unset in a spec (the batch is the pool)")
        self.eps, self.alpha, self.steps, self.layer = eps, alpha, int(steps), layer
        self.random_start, self.pool = random_start, pool

    def perturb(self, model, images, labels):
        features = _Features(model, self.layer)
        pool_x, pool_y = (images, labels) if self.pool is None else (t.to(images.device) for t in self.pool)
        with torch.no_grad():
            order = model(images).argsort(1, descending=True)
            own, pool_feats = features(images), features(pool_x)
            usable = model(pool_x).argmax(1) == pool_y
        target = _nearest_of_runner_up(order, own.flatten(1), pool_feats.flatten(1), pool_y, usable)
        goal = pool_feats[target.clamp(min=0)]
        adv = images
        if self.random_start:
            adv = project_linf(images + torch.empty_like(images).uniform_(-self.eps, self.eps), images, self.eps)
        for _ in range(self.steps):
            step = self.alpha * _distance_gradient(features, adv, goal).sign()
            adv = project_linf(adv - step, images, self.eps)
        return torch.where((target >= 0)[:, None, None, None], adv, images)


def _nearest_of_runner_up(order, own, pool_feats, pool_y, usable):
    """Per example the pool index of the nearest usable candidate of the most likely other class
    that has one (rank 1 first); -1 where no class has one."""
    dist = torch.cdist(own, pool_feats)
    target = torch.full((len(own),), -1, dtype=torch.long, device=own.device)
    for rank in range(1, order.shape[1]):
        cls = order[:, rank]
        valid = (pool_y[None, :] == cls[:, None]) & usable[None, :]
        d = dist.masked_fill(~valid, float("inf"))
        found = (target < 0) & torch.isfinite(d.min(1).values)
        target = torch.where(found, d.argmin(1), target)
    return target


def _distance_gradient(features, adv, goal):
    """Gradient of the summed per-example squared feature distance, with respect to the input only."""
    adv = adv.detach().requires_grad_()
    with torch.enable_grad():
        dist = (features(adv) - goal).pow(2).sum()
        (grad,) = torch.autograd.grad(dist, adv)
    return grad
