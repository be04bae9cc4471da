"""A tiny IE-ResNet trained for a few seconds on the digits, shared by the adaptive-attack tests."""
import functools

import torch
import torch.nn.functional as F
from torch import nn

from ieskips.data import load_dataset
from ieskips.models import IESkip, build_model


@functools.lru_cache(maxsize=None)
def _trained_state():
    data = load_dataset("digits", train=True)
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([data[i][1] for i in range(len(data))])
    rng = torch.get_rng_state()
    torch.manual_seed(0)
    model = build_model("preact_resnet18", num_classes=10, in_channels=1, width=4, ie_steps=1)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(x), (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    torch.set_rng_state(rng)
    test = load_dataset("digits", train=False)
    test_x = torch.stack([test[i][0] for i in range(64)])
    return model.state_dict(), test_x, torch.tensor([test[i][1] for i in range(64)])


def trained_ie(n: int = 16):
    """A fresh copy of the trained model (eval mode) and ``n`` test digits it classifies right."""
    state, x, y = _trained_state()
    model = build_model("preact_resnet18", num_classes=10, in_channels=1, width=4, ie_steps=1)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        right = model(x).argmax(1) == y
    return model, x[right][:n], y[right][:n]


class Masked(IESkip):
    """Alg. 1 whose output carries no gradient when it corrects (steps > 0): PGD through the model's
    own gradients sees zero; the explicit twin, the exact implicit step and the stem are honest."""

    def algorithm1(self, x_prev):
        x = super().algorithm1(x_prev)
        return x.detach() + 0 * x if self.steps > 0 else x  # connected, zero gradient


def masked(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if type(m) is IESkip:
            m.__class__ = Masked
    return model


class Linear(nn.Module):
    """``x.flatten(1) @ weight.T + bias``: a model whose gradients and minimal perturbations are known."""

    def __init__(self, weight, bias):
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)

    def forward(self, x):
        return x.flatten(1) @ self.weight.T + self.bias


class Quantised(nn.Module):
    """A model behind a non-differentiable input quantiser: zero input gradients everywhere."""

    def __init__(self, inner, levels=16):
        super().__init__()
        self.inner, self.levels = inner, levels

    def forward(self, x):
        return self.inner(torch.round(x * self.levels) / self.levels)
