"""Pre-activation ResNets and WideResNet with IE-Skips, built from one stage-list description."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import check_choice, check_range
from .blocks import basic_branch, bottleneck_branch, conv3x3, make_block, make_norm
from .registry import register_model

# Per-channel statistics of the data sets; the model normalises its [0, 1] input itself.
INPUT_STATS = {
    1: ((0.1307,), (0.3081,)),  # MNIST
    3: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),  # CIFAR-10
}

RESNET_LAYOUTS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}
BRANCHES = {"basic": basic_branch, "bottleneck": bottleneck_branch}


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class ResNet(nn.Module):
    """stem conv -> stages of blocks -> norm-ReLU-pool-linear head.

    ``stages`` is a list of ``(channels, blocks, stride)``. The first block of a stage changes the
    shape unless ``channels`` equals the incoming width and ``stride`` is 1.
    """

    def __init__(self, branch: str, stages, *, stem_width: int, num_classes: int, in_channels: int,
                 norm: str = "group", ie_steps: int = 0, ie_step_size: float = 0.05,
                 inner_grad: str = "detached", shared_twice: bool = False, input_stats=None):
        super().__init__()
        mean, std = input_stats or INPUT_STATS.get(in_channels, ((0.5,) * in_channels, (0.5,) * in_channels))
        self.normalize = Normalize(mean, std)
        self.stem = conv3x3(in_channels, stem_width)
        blocks, width = [], stem_width
        for channels, count, stride in stages:
            for i in range(count):
                blocks.append(make_block(
                    BRANCHES[branch], width, channels, stride if i == 0 else 1, norm=norm,
                    ie_steps=ie_steps, ie_step_size=ie_step_size, inner_grad=inner_grad,
                    shared_twice=shared_twice))
                width = channels
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(make_norm(norm, width), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(width, num_classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(self.normalize(x))))


def _check_common(num_classes, in_channels, width):
    check_range("num_classes", num_classes, 2)
    check_range("in_channels", in_channels, 1)
    check_range("width", width, 1)


def preact_resnet(depth: int, *, num_classes=10, in_channels=3, width=16, shared_twice=False, **ie) -> ResNet:
    """PreAct ResNet-18/34 (basic blocks) or -50 (bottleneck, expansion 4), stage widths w, 2w, 4w, 8w
    (times 4 at the output of a bottleneck stage)."""
    check_choice("depth", depth, RESNET_LAYOUTS)
    _check_common(num_classes, in_channels, width)
    branch, counts = RESNET_LAYOUTS[depth]
    expansion = 4 if branch == "bottleneck" else 1
    stages = [(width * 2 ** i * expansion, n, 1 if i == 0 else 2) for i, n in enumerate(counts)]
    return ResNet(branch, stages, stem_width=width, num_classes=num_classes, in_channels=in_channels,
                  shared_twice=shared_twice, **ie)


@register_model
def preact_resnet18(**kw) -> ResNet:
    return preact_resnet(18, **kw)


@register_model
def preact_resnet34(**kw) -> ResNet:
    return preact_resnet(34, **kw)


@register_model
def preact_resnet50(**kw) -> ResNet:
    return preact_resnet(50, **kw)


@register_model
def sw_preact_resnet58(**kw) -> ResNet:
    """SwResNet-58: ResNet-34 with each same-shape block applied twice with shared weights
    (34 + 2 x 12 layers): as deep as a K=1 IE-ResNet-34 computes, with ResNet-34's parameters."""
    return preact_resnet(34, shared_twice=True, **kw)


@register_model
def wide_resnet34_10(*, num_classes=10, in_channels=3, width=160, **ie) -> ResNet:
    """WRN-34-10 (Zagoruyko & Komodakis; the TRADES model): 16-channel stem, 3 stages of 5 basic
    blocks at widths w, 2w, 4w with w = 16 x 10 = 160."""
    _check_common(num_classes, in_channels, width)
    stages = [(width, 5, 1), (width * 2, 5, 2), (width * 4, 5, 2)]
    return ResNet("basic", stages, stem_width=16, num_classes=num_classes, in_channels=in_channels, **ie)
