"""Pre-activation residual branches and the blocks built from them (paper Fig. 2)."""
from __future__ import annotations

from torch import nn

from ..errors import check_choice
from .ie_skip import IESkip

NORMS = ("group", "batch")


def make_norm(kind: str, channels: int) -> nn.Module:
    """GroupNorm(1, C) keeps samples independent (the authors' choice); BatchNorm is the usual one."""
    check_choice("norm", kind, NORMS)
    return nn.GroupNorm(1, channels) if kind == "group" else nn.BatchNorm2d(channels)


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def basic_branch(c_in: int, c_out: int, stride: int, norm: str) -> nn.Sequential:
    """norm-ReLU-conv3x3, norm-ReLU-conv3x3; the stride sits on the first convolution."""
    return nn.Sequential(
        make_norm(norm, c_in), nn.ReLU(), conv3x3(c_in, c_out, stride),
        make_norm(norm, c_out), nn.ReLU(), conv3x3(c_out, c_out),
    )


def bottleneck_branch(c_in: int, c_out: int, stride: int, norm: str, expansion: int = 4) -> nn.Sequential:
    """norm-ReLU-1x1, norm-ReLU-3x3 (strided), norm-ReLU-1x1 with a ``c_out / expansion`` bottleneck."""
    mid = c_out // expansion
    return nn.Sequential(
        make_norm(norm, c_in), nn.ReLU(), nn.Conv2d(c_in, mid, 1, bias=False),
        make_norm(norm, mid), nn.ReLU(), conv3x3(mid, mid, stride),
        make_norm(norm, mid), nn.ReLU(), nn.Conv2d(mid, c_out, 1, bias=False),
    )


class ProjectionBlock(nn.Module):
    """A dimension-changing block: explicit, ``f(x) + shortcut(x)`` with a norm-ReLU-3x3 conv shortcut
    (Fig. 2; the authors' ``d_k``, sirResNet.py l.66-70)."""

    def __init__(self, residual: nn.Module, c_in: int, c_out: int, stride: int, norm: str):
        super().__init__()
        self.residual = residual
        self.shortcut = nn.Sequential(make_norm(norm, c_in), nn.ReLU(), conv3x3(c_in, c_out, stride))

    def forward(self, x):
        return self.residual(x) + self.shortcut(x)


class SharedTwiceSkip(IESkip):
    """The same block applied twice with shared weights (SwResNet, the paper's Table 6 control).

    A subclass rather than a wrapper so that its parameter names equal a plain block's.
    """

    def forward(self, x):
        return super().forward(super().forward(x))


def make_block(branch, c_in: int, c_out: int, stride: int, *, norm: str, ie_steps: int,
               ie_step_size: float, inner_grad: str, shared_twice: bool = False) -> nn.Module:
    """An IE-Skip block where input and output shapes agree, else an explicit projection block."""
    residual = branch(c_in, c_out, stride, norm)
    if stride != 1 or c_in != c_out:
        return ProjectionBlock(residual, c_in, c_out, stride, norm)
    skip = SharedTwiceSkip if shared_twice else IESkip
    return skip(residual, ie_steps, ie_step_size, inner_grad)
