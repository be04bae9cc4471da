"""Pre-activation ResNets and WideResNet with IE-Skips, built from one stage-list description.

Compared with the authors' code (github.com/homles11/IE-Skips, models/sirResNet.py) with the same weights
in float64 (tests/models/test_reference_impl.py), the IE blocks (both gradient modes), the explicit
dimension-changing blocks with their 3x3 conv shortcut and the head agree to ~1e-15. Three differences
remain, and two model options cover one each:

1. Last stage: their last-stage IE blocks minimise ``||x - x_prev + f(x)||^2`` (a sign slip,
   sirResNet.py l.283/293); ours follow Alg. 1, ``||x - x_prev - f(x)||^2``, everywhere. No option.
2. Stem: theirs is conv -> GroupNorm -> ReLU (sirResNet.py l.20-23), ours a bare conv by default;
   ``stem="conv_norm_relu"`` gives theirs (the norm is the model's ``norm``).
3. Input: they feed raw [0, 1] images (``Normalize`` is commented out, utils.py:82); ours normalise by
   the data set's mean and std inside the model by default; ``input_norm=False`` feeds them raw.
"""
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


STEMS = ("conv", "conv_norm_relu")


class ResNet(nn.Module):
    """(normalise) -> stem -> stages of blocks -> norm-ReLU-pool-linear head.

    ``stages`` is a list of ``(channels, blocks, stride)``. The first block of a stage changes the
    shape unless ``channels`` equals the incoming width and ``stride`` is 1. ``stem``: ``"conv"`` (a
    bare 3x3 conv) or ``"conv_norm_relu"`` (the authors' stem); ``input_norm``: normalise the [0, 1]
    input by the data set's mean and std (False: the authors' raw input). See the module docstring for
    which difference from the authors' network each covers. ``shared_twice``: True applies every
    same-shape block twice with shared weights; an int ``n``, the first ``n`` of them in forward order.
    """

    def __init__(self, branch: str, stages, *, stem_width: int, num_classes: int, in_channels: int,
                 norm: str = "group", ie_steps: int = 0, ie_step_size: float = 0.05,
                 inner_grad: str = "detached", shared_twice: bool | int = False, input_stats=None,
                 stem: str = "conv", input_norm: bool = True):
        super().__init__()
        check_choice("stem", stem, STEMS)
        mean, std = input_stats or INPUT_STATS.get(in_channels, ((0.5,) * in_channels, (0.5,) * in_channels))
        self.normalize = Normalize(mean, std) if input_norm else nn.Identity()
        self.stem = conv3x3(in_channels, stem_width) if stem == "conv" else nn.Sequential(
            conv3x3(in_channels, stem_width), make_norm(norm, stem_width), nn.ReLU())
        blocks, width, same_shape = [], stem_width, 0
        for channels, count, stride in stages:
            for i in range(count):
                block_stride = stride if i == 0 else 1
                same = block_stride == 1 and width == channels
                twice = same and (shared_twice is True or (shared_twice is not False and same_shape < shared_twice))
                same_shape += same
                blocks.append(make_block(
                    BRANCHES[branch], width, channels, block_stride, norm=norm,
                    ie_steps=ie_steps, ie_step_size=ie_step_size, inner_grad=inner_grad,
                    shared_twice=twice))
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


def preact_resnet(depth: int, *, num_classes=10, in_channels=3, width=16, shared_twice: bool | int = False,
                  **ie) -> ResNet:
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


SW_SHARED_BLOCKS = 12  # 58 = 34 + 2 x 12 layers


@register_model
def sw_preact_resnet58(**kw) -> ResNet:
    """SwResNet-58 (the paper's Table 6 control): PreAct ResNet-34 with twelve of its thirteen same-shape
    blocks applied twice with shared weights, 34 + 2 x 12 = 58 layers (conv and linear layers on the
    main path), with ResNet-34's parameters.

    Which twelve: the paper says only "sharing weights of two adjacent residual blocks with the same
    dimension" (Section 6.2; the details are in its supplementary, which we do not have) and the authors'
    s2ResNet.py would double all thirteen (60 layers) were its shape test not broken (l.53). Our choice:
    the first twelve same-shape blocks in forward order (stage 1: 3, stage 2: 3, stage 3: 5, stage 4: the
    first of its 2); the network's last block, which feeds the head, is applied once.
    """
    return preact_resnet(34, shared_twice=SW_SHARED_BLOCKS, **kw)


@register_model
def wide_resnet34_10(*, num_classes=10, in_channels=3, width=160, **ie) -> ResNet:
    """WRN-34-10 (Zagoruyko & Komodakis; the TRADES model): 16-channel stem, 3 stages of 5 basic
    blocks at widths w, 2w, 4w with w = 16 x 10 = 160.

    The authors' code has no WRN of its own (lib/base_model/wide_resnet.py is TRADES's, never imported).
    Against TRADES's (github.com/yaodongyu/TRADES models/wideresnet.py), for the vanilla and the IE model
    alike: the dimension-changing blocks use the paper's 3x3 conv shortcut on their own norm-ReLU
    (Fig. 2; Section 5.4 credits "the down-sampling connection we use" for the larger size) where TRADES
    has a 1x1 conv on the block's activated input, and weights keep PyTorch's default initialisation
    (TRADES: He-normal by fan-out). Its bare conv stem, BatchNorm (``norm="batch"``) and raw inputs
    (``input_norm=False``) are options here.
    """
    _check_common(num_classes, in_channels, width)
    stages = [(width, 5, 1), (width * 2, 5, 2), (width * 4, 5, 2)]
    return ResNet("basic", stages, stem_width=16, num_classes=num_classes, in_channels=in_channels, **ie)
