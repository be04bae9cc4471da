"""Shared attack-test models and batches, on the tests' device (``IESKIPS_TEST_DEVICE``, tests/device.py)."""
import pytest
import torch

from ieskips.models import build_model
from tests.attacks.tiny_ie import Linear


@pytest.fixture
def ie_model(device):
    torch.manual_seed(0)
    model = build_model("preact_resnet18", in_channels=1, width=2, num_classes=10, ie_steps=1, ie_step_size=0.1)
    return model.to(device)


@pytest.fixture
def batch(device):
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 1, 16, 16, generator=g).to(device), torch.randint(0, 10, (6,), generator=g).to(device)


@pytest.fixture
def linear_problem(device):
    """An honest 3-class linear model on 1x4x4 inputs and points it classifies right."""
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(3, 16, generator=g)
    model = Linear(weight, -0.5 * weight.sum(1))  # logits 0 at the grey image: small margins around it
    x = 0.4 + 0.2 * torch.rand(60, 1, 4, 4, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model.to(device), x.to(device), y.to(device)
