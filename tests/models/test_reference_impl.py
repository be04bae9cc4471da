"""Our IE-ResNets against the authors' network, same weights, float64.

The reference below is the authors' SIR_ResNet18/34 (github.com/homles11/IE-Skips @93c2b3d,
models/sirResNet.py), rewritten compactly from their code: their stem ``conv1`` (conv -> GroupNorm ->
ReLU, l.21-24), their inner step (``loss_y = torch.norm(x - x_prev - (1 - theta) t - theta f_d(x)) ** 2``,
``f_y = autograd.grad(loss_y, x, create_graph=self.graph)``, ``x = x - wd * f_y[0]``, l.193-209), their
explicit dimension-changing blocks ``conv_k(x) + d_k(x)`` (l.231) and head (l.299-302), fed raw [0, 1]
inputs (utils.py:82). Their weight-aliased copies ``conv*_d`` (``.data`` assigned in every forward,
l.161-191) are the residual module itself here: the same values; with ``graph=True`` their parameter
gradient would be split between the aliased copies, so the total is what we compare. ``last_sign``
is the sign in front of ``theta * f_d(x)`` in their last stage: ``+1`` as they wrote it (l.283/293),
``-1`` as in every other stage and in Alg. 1.

Their ResNet-50 is not compared: its aliasing leaves two layers of each ``_d`` copy at their random
initialisation (l.805-839), so its inner objective is not the block's ``f``.
"""
import pytest
import torch
from torch import nn

from ieskips.models import build_model
from ieskips.models.resnet import INPUT_STATS

pytestmark = pytest.mark.unit
LAYOUTS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
TOL = dict(rtol=0, atol=1e-12)


def branch(c_in, c_out, stride=1):
    """Their residual Sequential: GN, ReLU, conv3x3 (stride), GN, ReLU, conv3x3 (sirResNet.py l.26-32)."""
    return nn.Sequential(nn.GroupNorm(1, c_in), nn.ReLU(), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                         nn.GroupNorm(1, c_out), nn.ReLU(), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False))


class Reference(nn.Module):
    """The authors' SIR_ResNet{18,34}; ``graph`` is their ``self.graph`` (False in their code: detached)."""

    def __init__(self, depth, width=16, in_channels=3, num_classes=10, wd=0.1, it=1, theta=1.0,
                 last_sign=1.0, graph=False, stem="conv_gn_relu"):
        super().__init__()
        self.wd, self.it, self.theta, self.last_sign, self.graph = wd, it, theta, last_sign, graph
        conv = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.conv1 = nn.Sequential(conv, nn.GroupNorm(1, width), nn.ReLU()) if stem == "conv_gn_relu" else conv
        self.stages = nn.ModuleList()
        c_in = width
        for s, count in enumerate(LAYOUTS[depth]):
            c_out, blocks = width * 2 ** s, nn.ModuleList()
            for i in range(count):
                if s > 0 and i == 0:  # conv_k and its shortcut d_k: GN, ReLU, conv3x3 stride 2 (l.60-70)
                    blocks.append(nn.ModuleDict({"conv": branch(c_in, c_out, 2), "d": nn.Sequential(
                        nn.GroupNorm(1, c_in), nn.ReLU(), nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False))}))
                else:
                    blocks.append(nn.ModuleDict({"conv": branch(c_out, c_out)}))
                c_in = c_out
            self.stages.append(blocks)
        self.final_bn, self.fc = nn.GroupNorm(1, c_in), nn.Linear(c_in, num_classes)

    def ie_block(self, f, x_prev, sign):
        t = f(x_prev)
        x = x_prev + t
        for _ in range(self.it):
            with torch.set_grad_enabled(True):
                loss_y = torch.norm(x - x_prev - (1 - self.theta) * t + sign * self.theta * f(x)) ** 2
                f_y = torch.autograd.grad(loss_y, x, retain_graph=self.graph, create_graph=self.graph)
            x = x - self.wd * f_y[0]
        return x

    def forward(self, x):
        x = self.conv1(x)
        for s, blocks in enumerate(self.stages):
            sign = self.last_sign if s == len(self.stages) - 1 else -1.0
            for block in blocks:
                x = block["conv"](x) + block["d"](x) if "d" in block else self.ie_block(block["conv"], x, sign)
        x = torch.relu(self.final_bn(x)).mean((2, 3))
        return self.fc(x)


def pair(depth, *, steps=1, gamma=0.1, last_sign=-1.0, graph=False, stem="conv_norm_relu", input_norm=False,
         inner_grad="detached", seed=0):
    """Our model and the reference with the same (random, affine included) float64 weights."""
    torch.manual_seed(seed)
    ours = build_model(f"preact_resnet{depth}", width=16, ie_steps=steps, ie_step_size=gamma,
                       inner_grad=inner_grad, stem=stem, input_norm=input_norm).double()
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.5) + (1.0 if p.dim() == 1 else 0.0))
    ref = Reference(depth, wd=gamma, it=steps, last_sign=last_sign, graph=graph,
                    stem="conv_gn_relu" if stem == "conv_norm_relu" else "conv").double()
    theirs = list(ref.parameters())
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs]
    with torch.no_grad():
        for mine, their in zip(ours.parameters(), theirs):
            their.copy_(mine)
    return ours, ref


def inputs(n=3, seed=1):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def gradients(model, x, seed=2):
    """Logits, and the gradients of a fixed random projection of them w.r.t. the input and every parameter."""
    x = x.clone().requires_grad_()
    out = model(x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    params = list(model.parameters())
    grads = torch.autograd.grad((out * weights).sum(), [x, *params])
    return out.detach(), grads[0], grads[1:]


@pytest.mark.parametrize("depth, steps", [(18, 1), (18, 3), (34, 1)])
def test_logits_equal_theirs_with_the_last_stage_sign_of_algorithm_1(depth, steps):
    ours, ref = pair(depth, steps=steps)
    x = inputs()
    torch.testing.assert_close(ours(x), ref(x), **TOL)


def test_their_last_stage_sign_is_a_different_network():
    ours, ref = pair(18, last_sign=+1.0)
    x = inputs()
    assert (ours(x) - ref(x)).abs().max() > 1e-3


@pytest.mark.parametrize("depth", [18, 34])
@pytest.mark.parametrize("inner_grad, graph", [("detached", False), ("unrolled", True)])
def test_input_and_parameter_gradients_equal_theirs_in_both_modes(depth, inner_grad, graph):
    ours, ref = pair(depth, steps=2, inner_grad=inner_grad, graph=graph)
    x = inputs(2)
    out_o, gx_o, gp_o = gradients(ours, x)
    out_r, gx_r, gp_r = gradients(ref, x)
    torch.testing.assert_close(out_o, out_r, **TOL)
    torch.testing.assert_close(gx_o, gx_r, **TOL)
    for mine, theirs in zip(gp_o, gp_r):
        torch.testing.assert_close(mine, theirs, **TOL)


def test_the_two_modes_differ_in_gradients_not_values():
    detached, _ = pair(18, steps=2, inner_grad="detached")
    unrolled, _ = pair(18, steps=2, inner_grad="unrolled")
    x = inputs(2)
    out_d, gx_d, _ = gradients(detached, x)
    out_u, gx_u, _ = gradients(unrolled, x)
    torch.testing.assert_close(out_d, out_u, **TOL)
    assert (gx_d - gx_u).abs().max() > 1e-6


def test_each_model_option_covers_one_difference():
    """Our defaults (bare conv stem, normalised input) differ from theirs; ``stem`` alone makes ours their
    network on normalised inputs, ``input_norm`` alone their network with a bare conv stem."""
    x = inputs()
    stem_only, ref = pair(18, stem="conv_norm_relu", input_norm=True)
    mean, std = stem_only.normalize.mean, stem_only.normalize.std  # INPUT_STATS[3], as the model holds them
    torch.testing.assert_close(mean.flatten().float(), torch.tensor(INPUT_STATS[3][0]))
    torch.testing.assert_close(stem_only(x), ref((x - mean) / std), **TOL)
    assert (stem_only(x) - ref(x)).abs().max() > 1e-3
    raw_only, ref_bare = pair(18, stem="conv", input_norm=False)
    torch.testing.assert_close(raw_only(x), ref_bare(x), **TOL)
    default, ref_bare = pair(18, stem="conv", input_norm=True)  # both differences: theirs needs both undone
    torch.testing.assert_close(default(x), ref_bare((x - mean) / std), **TOL)


def test_swresnet58_doubles_the_first_twelve_same_shape_blocks():
    """58 layers = stem conv + 2 convs per block application + the linear head; ResNet-34 has 13
    same-shape blocks (its s2ResNet would double all, 60 layers); we double the first twelve."""
    from ieskips.models.blocks import ProjectionBlock, SharedTwiceSkip
    from ieskips.models.ie_skip import IESkip

    model = build_model("sw_preact_resnet58", width=2)
    kinds = [type(b) for b in model.blocks]
    applications = sum(2 if k is SharedTwiceSkip else 1 for k in kinds)
    assert 1 + 2 * applications + 1 == 58 and sum(k is ProjectionBlock for k in kinds) == 3
    same_shape = [k for k in kinds if k is not ProjectionBlock]
    assert same_shape == [SharedTwiceSkip] * 12 + [IESkip] and kinds[-1] is IESkip
