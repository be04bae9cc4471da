"""SPSA: gradient-free L-inf attack from finite differences along random directions."""
from __future__ import annotations

import torch

from ..errors import check_choice, check_range
from .base import Attack, check_eps, check_steps, per_example_loss, project_linf
from .registry import register_attack
from .surrogate import fooled_first


@register_attack("spsa")
class SPSA(Attack):
    """Simultaneous Perturbation Stochastic Approximation with Adam, L-inf.

    Paper: Uesato et al., "Adversarial Risk and the Dangers of Evaluating Against Weak Attacks",
    ICML 2018, https://arxiv.org/abs/1802.05666 (estimator: Spall 1992). Each iteration estimates the
    loss gradient from ``samples`` queries (antithetic Rademacher pairs ``x +/- delta * d``, clipped to
    [0, 1]), takes an Adam ascent step and projects. It only queries the model's outputs, so masked
    gradients cannot stop it. Per example the best iterate is kept (misclassified first, then loss)
    and an example stops being queried once misclassified. Random directions come from a generator
    seeded by ``seed`` (the global stream is untouched).
    Norm: L-inf. Defaults: eps 8/255, 100 iterations, 128 samples, delta 0.01, lr 0.01, margin loss.
    Cost: (samples + 1) forwards of the batch per iteration, in chunks of at most ``chunk`` images.
    Shapes: images (N, C, H, W) in [0, 1], labels (N,) -> adv (N, C, H, W) in [0, 1].
    Example: ``adv = SPSA(eps=8/255, iters=100)(model, images, labels)``
    """

    name = "spsa"

    def __init__(self, eps: float = 8 / 255, iters: int = 100, samples: int = 128, delta: float = 0.01,
                 lr: float = 0.01, loss: str = "cw", seed: int = 0, chunk: int = 4096):
        super().__init__(None)
        check_eps(eps)
        check_steps(iters, "iters")
        check_range("samples", samples, 2)
        check_range("delta", delta, 0, low_open=True)
        check_range("lr", lr, 0, low_open=True)
        check_choice("loss", loss, ("ce", "cw"))
        check_steps(chunk, "chunk")
        self.eps, self.iters, self.samples, self.delta = eps, int(iters), int(samples), delta
        self.lr, self.loss, self.seed, self.chunk = lr, loss, seed, int(chunk)

    @torch.no_grad()
    def perturb(self, model, images, labels):
        gen = torch.Generator(device=images.device).manual_seed(self.seed)
        adv, m, v = images.clone(), torch.zeros_like(images), torch.zeros_like(images)
        best, key = images.clone(), fooled_first(model(images), labels, self.loss)
        for t in range(1, self.iters + 1):
            signs = torch.randint(0, 2, (self.samples // 2, *images.shape), generator=gen, device=images.device)
            live = (key < 1e6).nonzero().squeeze(1)  # not yet misclassified
            if not len(live):
                break
            grad = self._estimate(model, adv[live], labels[live], signs[:, live] * 2.0 - 1)
            m[live] = 0.9 * m[live] + 0.1 * grad
            v[live] = 0.999 * v[live] + 0.001 * grad ** 2
            step = self.lr * (m[live] / (1 - 0.9 ** t)) / ((v[live] / (1 - 0.999 ** t)).sqrt() + 1e-8)
            adv[live] = project_linf(adv[live] + step, images[live], self.eps)
            new = fooled_first(model(adv[live]), labels[live], self.loss)
            better = new > key[live]
            best[live[better]], key[live[better]] = adv[live[better]], new[better]
        return best

    def _estimate(self, model, x, labels, directions):
        """Mean over pairs of ``(L(x + delta d) - L(x - delta d)) / (2 delta) * d``."""
        pairs, n = directions.shape[:2]
        per_chunk = max(1, self.chunk // (2 * n))
        total = torch.zeros_like(x)
        for start in range(0, pairs, per_chunk):
            d = directions[start:start + per_chunk]
            queries = torch.cat([x + self.delta * d, x - self.delta * d]).clamp(0, 1)
            loss = per_example_loss(model(queries.flatten(0, 1)), labels.repeat(2 * len(d)), self.loss)
            plus, minus = loss.view(2, len(d), n).unbind(0)
            total += (((plus - minus) / (2 * self.delta)).view(len(d), n, *[1] * (x.dim() - 1)) * d).sum(0)
        return total / pairs
