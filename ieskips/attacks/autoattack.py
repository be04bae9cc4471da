"""AutoAttack and Square through ``pyautoattack`` (the reference attack code; optional extra)."""
from __future__ import annotations

import logging

import torch

from ..errors import ConfigError, check_choice
from .base import Attack, check_eps, check_steps
from .registry import register_attack

log = logging.getLogger(__name__)


def _pyautoattack():
    try:
        import pyautoattack
    except ImportError as err:
        raise ConfigError("AutoAttack and Square need pyautoattack; install it with "
                          "`pip install 'ieskips[autoattack]'`") from err
    return pyautoattack


@register_attack("autoattack")
class AutoAttack(Attack):
    """AutoAttack, standard version: APGD-CE, APGD-T, FAB-T and Square, per-example worst case.

    Paper: Croce & Hein, "Reliable Evaluation of Adversarial Robustness with an Ensemble of Diverse
    Parameter-Free Attacks", ICML 2020, https://arxiv.org/abs/2003.01690 (code: pyautoattack 0.2.0).
    Norm: L-inf (or L2). Defaults: eps 8/255, seed 0.
    IE models: AutoAttack's ``check_dynamic`` traces the forward and warns "it seems to be a dynamic
    defense" because every IE-Skip calls autograd inside its forward (Alg. 1's inner gradient steps).
    The warning is right in spirit: the gradients APGD follows are the model's own (``detached`` by
    default), so run it with ``inner_grad="unrolled"`` too and take the worst case (the audit does).
    Shapes: images (N, C, H, W) in [0, 1], labels (N,) -> adv, same shape.
    Example: ``adv = AutoAttack(eps=8/255)(model, images, labels)``
    """

    name = "autoattack"

    def __init__(self, eps: float = 8 / 255, norm: str = "Linf", seed: int = 0, batch_size: int = 250,
                 inner_grad: str | None = None):
        super().__init__(inner_grad)
        check_eps(eps)
        check_choice("norm", norm, ("Linf", "L2"))
        self.eps, self.norm, self.seed, self.batch_size = eps, norm, seed, batch_size

    def perturb(self, model, images, labels):
        runner = _pyautoattack().AutoAttack(model, eps=self.eps, norm=self.norm, seed=self.seed,
                                            device=images.device, version="standard")
        adv, _ = runner.run_standard_evaluation(images, labels, batch_size=self.batch_size)
        return adv


@register_attack("square")
class Square(Attack):
    """Square Attack: gradient-free, score-based random search (AutoAttack's black-box member).

    Paper: Andriushchenko et al., "Square Attack: a query-efficient black-box adversarial attack via
    random search", ECCV 2020, https://arxiv.org/abs/1912.00049 (code: pyautoattack 0.2.0).
    Norm: L-inf (or L2). Defaults: eps 8/255, 5000 queries, 1 restart, margin loss, p_init 0.8.
    It never uses gradients, so it cannot be fooled by masked ones: where it beats a gradient attack
    on an example, that gradient attack is not to be trusted.
    Shapes: images (N, C, H, W) in [0, 1], labels (N,) -> adv, same shape.
    Example: ``adv = Square(eps=8/255, queries=1000)(model, images, labels)``
    """

    name = "square"

    def __init__(self, eps: float = 8 / 255, queries: int = 5000, restarts: int = 1, norm: str = "Linf",
                 seed: int = 0):
        super().__init__(None)
        check_eps(eps)
        check_steps(queries, "queries")
        check_steps(restarts, "restarts")
        check_choice("norm", norm, ("Linf", "L2"))
        self.eps, self.queries, self.restarts, self.norm, self.seed = eps, int(queries), int(restarts), norm, seed

    def perturb(self, model, images, labels):
        from pyautoattack.square import SquareAttack  # noqa: PLC0415  (optional dependency)

        _pyautoattack()
        attack = SquareAttack(model, norm=self.norm, n_queries=self.queries, eps=self.eps, p_init=0.8,
                              n_restarts=self.restarts, seed=self.seed, loss="margin", resc_schedule=False,
                              device=images.device)
        rng = torch.get_rng_state()  # Square reseeds the global generator; keep the caller's stream
        try:
            with torch.no_grad():
                return attack.perturb(images, labels)
        finally:
            torch.set_rng_state(rng)
