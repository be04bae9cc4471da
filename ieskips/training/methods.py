"""Training objectives: natural, FGSM-AT, PGD-AT (Madry) and TRADES. Attacks run in eval mode."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attacks import FGSM, PGD
from ..attacks.base import attack_mode, project_linf
from ..config import TrialConfig


def natural(model, images, labels, config: TrialConfig):
    logits = model(images)
    return F.cross_entropy(logits, labels), logits


def fgsm(model, images, labels, config: TrialConfig):
    """FGSM adversarial training (Goodfellow et al. 2015): loss on FGSM examples only."""
    adv = FGSM(config.train_eps)(model, images, labels)
    logits = model(adv)
    return F.cross_entropy(logits, labels), logits


def pgd(model, images, labels, config: TrialConfig):
    """Madry et al. 2018: loss on PGD-k examples (random start, alpha 2/255) only."""
    adv = PGD(config.train_eps, config.train_alpha, config.train_steps)(model, images, labels)
    logits = model(adv)
    return F.cross_entropy(logits, labels), logits


def trades(model, images, labels, config: TrialConfig):
    """TRADES (Zhang et al. 2019, https://arxiv.org/abs/1901.08573), as in its reference trades.py:
    CE(clean) + beta * KL(p(adv) || p(clean)), the adversary maximising that KL from x + 0.001 N(0, 1)."""
    adv = _trades_adversary(model, images, config)
    logits = model(images)
    robust = F.kl_div(F.log_softmax(model(adv), 1), F.softmax(logits, 1), reduction="batchmean")
    return F.cross_entropy(logits, labels) + config.trades_beta * robust, logits


def _trades_adversary(model, images, config):
    with attack_mode(model, None):
        with torch.no_grad():
            clean = F.softmax(model(images), 1)
        adv = images + 0.001 * torch.randn_like(images)
        for _ in range(config.train_steps):
            adv = adv.detach().requires_grad_()
            with torch.enable_grad():
                kl = F.kl_div(F.log_softmax(model(adv), 1), clean, reduction="sum")
                (grad,) = torch.autograd.grad(kl, adv)
            adv = project_linf(adv.detach() + config.train_alpha * grad.sign(), images, config.train_eps)
    return adv.detach()


METHODS = {"natural": natural, "fgsm": fgsm, "pgd": pgd, "trades": trades}
