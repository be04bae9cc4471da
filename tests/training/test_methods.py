"""The authors' training options against hand-computed references: the mixed clean/adversarial loss
(lib/training/train.py:49-75 of github.com/homles11/IE-Skips) and the clean warm-up with its per-step lr
ramp (train.py:203-205, utils.py:182-197)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ieskips.attacks import PGD
from ieskips.config import TrialConfig
from ieskips.errors import ConfigError
from ieskips.training import Trial, train
from ieskips.training.methods import LinearWarmup, fgsm, method_for, natural, pgd
from tests.attacks.tiny_ie import Linear

pytestmark = pytest.mark.unit
SMALL = {"dataset": "digits", "width": 2, "batch_size": 64, "train_subset": 128, "test_subset": 32,
         "eval_subset": 16, "milestones": [], "train_steps": 2, "eval_attacks": [{"name": "fgsm", "eps": 0.1}]}


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    model = Linear(torch.randn(3, 16, generator=g, dtype=torch.float64),
                   torch.randn(3, generator=g, dtype=torch.float64))
    x = torch.rand(8, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=g)
    return model, x, y


def softmax_regression(weight, bias, x, y):
    """Mean cross-entropy of ``x W^T + b`` and its gradients, in closed form."""
    flat = x.flatten(1)
    p = torch.softmax(flat @ weight.T + bias, 1)
    onehot = F.one_hot(y, weight.shape[0]).to(p.dtype)
    loss = -(onehot * p.log()).sum(1).mean()
    d_logits = (p - onehot) / len(y)
    return loss, d_logits.T @ flat, d_logits.sum(0), (p - onehot) @ weight  # loss, dW, db, per-example dx


@pytest.mark.parametrize("w", [0.0, 1.0, 0.5])
def test_fgsm_with_clean_term_equals_the_closed_form(problem, w):
    model, x, y = problem
    eps = 0.1
    config = TrialConfig.from_dict({"method": "fgsm", "train_eps": eps, "clean_loss_weight": w})
    loss, logits = fgsm(model, x, y, config)
    loss.backward()
    weight, bias = model.weight.detach(), model.bias.detach()
    _, _, _, dx = softmax_regression(weight, bias, x, y)
    adv = (x + eps * dx.sign().view_as(x)).clamp(0, 1)  # FGSM by hand
    adv_loss, adv_dw, adv_db, _ = softmax_regression(weight, bias, adv, y)
    clean_loss, clean_dw, clean_db, _ = softmax_regression(weight, bias, x, y)
    torch.testing.assert_close(loss.detach(), adv_loss + w * clean_loss)
    torch.testing.assert_close(model.weight.grad, adv_dw + w * clean_dw)
    torch.testing.assert_close(model.bias.grad, adv_db + w * clean_db)
    torch.testing.assert_close(logits.detach(), adv.flatten(1) @ weight.T + bias)  # train_acc: adversarial


def test_pgd_with_clean_term_equals_the_authors_two_backward_passes(problem):
    """Their train_one_epoch: attack, ``CE(net(adv)).backward()``, ``CE(net(x)).backward()``, one step."""
    model, x, y = problem
    config = TrialConfig.from_dict({"method": "pgd", "train_eps": 0.1, "train_alpha": 0.03, "train_steps": 3,
                                    "clean_loss_weight": 1.0})
    torch.manual_seed(5)
    pgd(model, x, y, config)[0].backward()
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.manual_seed(5)
    adv = PGD(0.1, 0.03, 3)(model, x, y)
    F.cross_entropy(model(adv), y).backward()
    F.cross_entropy(model(x), y).backward()
    for mine, theirs in zip(ours, (p.grad for p in model.parameters())):
        torch.testing.assert_close(mine, theirs)


def test_the_clean_term_is_only_for_fgsm_and_pgd():
    with pytest.raises(ConfigError, match="clean_loss_weight"):
        TrialConfig.from_dict({"method": "trades", "clean_loss_weight": 1.0})
    with pytest.raises(ConfigError, match="clean_loss_weight"):
        TrialConfig.from_dict({"method": "natural", "clean_loss_weight": 1.0})


def test_warmup_epochs_train_naturally():
    config = TrialConfig.from_dict({"method": "pgd", "warmup_epochs": 2})
    assert [method_for(config, e) for e in range(4)] == [natural, natural, pgd, pgd]


def test_linear_warmup_is_the_authors_warmuplr():
    """Their WarmUpLR: ``base_lr * last_epoch / total_iters``, stepped before each batch of the warm-up
    epochs (``last_epoch`` 1, 2, ...); afterwards the scheduled lr, untouched."""
    batches, epochs, lr = 5, 2, 0.1
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr)
    seen = []
    for epoch in range(3):
        warmup = LinearWarmup(optimizer, epochs, epoch, batches)
        for _ in range(batches):
            warmup.next_batch()
            seen.append(optimizer.param_groups[0]["lr"])
        warmup.finish()
        assert optimizer.param_groups[0]["lr"] == lr
    by_hand = [lr * t / (epochs * batches) for t in range(1, epochs * batches + 1)] + [lr] * batches
    assert seen == pytest.approx(by_hand, rel=1e-15)


def test_trainer_warmup_then_mixed_loss_equals_a_hand_written_loop():
    """Two epochs of ``train``: a clean warm-up epoch with the per-step lr ramp, then FGSM training on
    CE(adv) + CE(clean); replayed by hand on a copy of the model with the trainer's own batches."""
    config = TrialConfig.from_dict({**SMALL, "epochs": 2, "method": "fgsm", "train_eps": 0.1,
                                    "clean_loss_weight": 1.0, "warmup_epochs": 1, "lr": 0.05})
    trial = Trial.build(config)
    start = trial.train_loader.generator.get_state()
    epochs = [[(x.clone(), y.clone()) for x, y in trial.train_loader] for _ in range(2)]
    trial.train_loader.generator.set_state(start)
    model = copy.deepcopy(trial.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    steps = len(epochs[0])
    model.train()
    for epoch, batches in enumerate(epochs):
        for b, (x, y) in enumerate(batches):
            optimizer.param_groups[0]["lr"] = config.lr * (b + 1) / steps if epoch == 0 else config.lr
            optimizer.zero_grad()
            if epoch == 0:
                F.cross_entropy(model(x), y).backward()
            else:
                model.eval()
                x_in = x.clone().requires_grad_()
                (g,) = torch.autograd.grad(F.cross_entropy(model(x_in), y, reduction="sum"), x_in)
                adv = (x + 0.1 * g.sign()).clamp(0, 1)
                model.train()
                F.cross_entropy(model(adv), y).backward()
                F.cross_entropy(model(x), y).backward()
            optimizer.step()
    seen = []
    train(config, trial=trial, on_epoch=lambda e, m, p: seen.append(m["lr"]), progress=False)
    assert seen == [config.lr, config.lr]
    for mine, theirs in zip(trial.model.parameters(), model.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
