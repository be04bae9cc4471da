"""The bf16 policy: the network under autocast, the IE inner steps in fp32 (their residual cancels).
Checked on CPU autocast here; the same test runs on a GPU where one is lent (``IESKIPS_TEST_DEVICE=cuda``,
tests/device.py)."""
import pytest
import torch
import torch.nn.functional as F

from ieskips.config import TrialConfig
from ieskips.models import inner_grad_mode
from ieskips.models.ie_skip import IESkip
from ieskips.training import Trial, train
from tests.device import DEVICE

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def trained():
    """A briefly trained IE-1 model (gradients of a random network are mostly noise in any precision)."""
    config = TrialConfig.from_dict({"dataset": "digits", "width": 8, "epochs": 3, "batch_size": 64, "ie_steps": 1,
                                    "milestones": [], "eval_attacks": [], "eval_subset": 16, "device": str(DEVICE)})
    trial = Trial.build(config)
    train(config, trial=trial, progress=False)
    images, labels = next(iter(trial.test_loader))
    return trial.model.eval(), images, labels


def input_gradient(model, images, labels, mode, bf16):
    images = images.clone().requires_grad_()
    with inner_grad_mode(model, mode), torch.autocast(DEVICE.type, torch.bfloat16, enabled=bf16):
        loss = F.cross_entropy(model(images).float(), labels, reduction="sum")
    return torch.autograd.grad(loss, images)[0]


@pytest.mark.parametrize("mode", ["detached", "unrolled"])
def test_bf16_input_gradient_keeps_its_direction(trained, mode):
    model, images, labels = trained
    exact = input_gradient(model, images, labels, mode, bf16=False)
    mixed = input_gradient(model, images, labels, mode, bf16=True)
    assert F.cosine_similarity(exact.flatten(), mixed.flatten(), dim=0) >= 0.99


def test_the_inner_steps_run_in_fp32_under_autocast(trained):
    model, images, _ = trained
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.dtype)) for m in model.modules()
             if isinstance(m, IESkip) and m.steps > 0]
    with torch.autocast(DEVICE.type, torch.bfloat16):
        model(images)
    for hook in hooks:
        hook.remove()
    assert seen and set(seen) == {torch.float32}


def test_a_bf16_trial_trains():
    config = TrialConfig.from_dict({"dataset": "digits", "width": 4, "epochs": 1, "batch_size": 64, "ie_steps": 1,
                                    "train_subset": 128, "test_subset": 32, "milestones": [], "bf16": True,
                                    "eval_attacks": [{"name": "fgsm", "eps": 0.1}], "device": str(DEVICE)})
    final = train(config, progress=False)
    assert 0 <= final["final/robust_acc/fgsm"] <= final["final/natural_acc"] <= 1
