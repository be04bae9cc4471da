"""Training objectives: natural, FGSM-AT, PGD-AT (Madry), TRADES; the clean warm-up. Attacks run in eval mode.

What the authors' code does (github.com/homles11/IE-Skips, the only working adversarial path is
``train.py -train pgd3``) and the options that reproduce it:

- ``clean_loss_weight``: their ``lib/training/train.py:49-66`` (``train_one_epoch``, from YOPO) runs
  ``CE(net(adv)).backward()``, then ``CE(net(x)).backward()``, then one optimizer step, for every
  attack: the objective is ``CE(adv) + CE(clean)``, weight 1 (``adv_coef=1``), two separate forwards.
- ``warmup_epochs``: their ``train.py:203-205`` trains epoch 1 cleanly whatever ``-train`` says, the
  lr rising per step as ``lr * t / T`` (``WarmUpLR``, utils.py:182-197; ``-warm 1``, train.py:147).
"""
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
    """FGSM adversarial training (Goodfellow et al. 2015): CE on FGSM examples (+ the clean term)."""
    adv = FGSM(config.train_eps)(model, images, labels)
    return adversarial_loss(model, adv, images, labels, config)


def pgd(model, images, labels, config: TrialConfig):
    """Madry et al. 2018: CE on PGD-k examples (random start) (+ the clean term, see ``adversarial_loss``)."""
    adv = PGD(config.train_eps, config.train_alpha, config.train_steps)(model, images, labels)
    return adversarial_loss(model, adv, images, labels, config)


def adversarial_loss(model, adv, images, labels, config: TrialConfig):
    """``CE(model(adv)) + clean_loss_weight * CE(model(images))``; the logits returned are the adversarial
    ones. The clean examples get their own forward after the adversarial one, as in the authors' code
    (with BatchNorm the two batches keep their own statistics)."""
    logits = model(adv)
    loss = F.cross_entropy(logits, labels)
    if config.clean_loss_weight:
        loss = loss + config.clean_loss_weight * F.cross_entropy(model(images), labels)
    return loss, logits


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


def method_for(config: TrialConfig, epoch: int):
    """The training step of epoch ``epoch + 1`` (``epoch`` epochs done): natural during the warm-up."""
    return natural if epoch < config.warmup_epochs else METHODS[config.method]


class LinearWarmup:
    """The lr of the first ``epochs`` epochs, per step: ``lr * t / T``, ``t`` the step counted from the
    start of training (1, 2, ...), ``T = epochs * batches``, ``lr`` the scheduled lr (the authors'
    ``WarmUpLR``: ``base_lr * last_epoch / total_iters``, stepped before each batch). Outside the warm-up
    it does nothing. ``next_batch()`` before each step; ``finish()`` puts the scheduled lr back before the
    epoch's scheduler step, so the schedule (and a checkpoint) never sees the ramp.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, epochs: int, epoch: int, batches: int):
        self.optimizer, self.active = optimizer, epoch < epochs
        self.step, self.total = epoch * batches, epochs * batches
        self.scheduled = [group["lr"] for group in optimizer.param_groups]

    def next_batch(self) -> None:
        if self.active:
            self.step += 1
            for group, lr in zip(self.optimizer.param_groups, self.scheduled):
                group["lr"] = lr * self.step / self.total

    def finish(self) -> None:
        if self.active:
            for group, lr in zip(self.optimizer.param_groups, self.scheduled):
                group["lr"] = lr
