"""Alg. 1 against an independent float64 reference, gradients in both modes, BatchNorm handling. The block
runs on ``IESKIPS_TEST_DEVICE`` where a test takes ``device`` (tests/device.py): a GPU where one is lent."""
import pytest
import torch
from torch import nn

from ieskips.errors import ConfigError
from ieskips.models import IESkip

pytestmark = pytest.mark.unit


class TanhLinear(nn.Module):
    """f(x) = tanh(W x + b) on flat per-sample vectors: a residual branch with a closed-form Jacobian."""

    def __init__(self, dim):
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, x):
        return torch.tanh(self.lin(x))


def reference_alg1(f, x_prev, steps, step_size):
    """Alg. 1 per sample with the Jacobian written out: x -= gamma * 2 (I - J)^T (x - x_prev - f(x))."""
    W, b = f.lin.weight.detach(), f.lin.bias.detach()
    out = []
    for xp in x_prev.detach():
        x = xp + torch.tanh(W @ xp + b)
        for _ in range(steps):
            fx = torch.tanh(W @ x + b)
            jac = (1 - fx ** 2)[:, None] * W
            err = x - xp - fx
            x = x - step_size * 2 * (torch.eye(len(x), dtype=x.dtype) - jac).T @ err
        out.append(x)
    return torch.stack(out)


@pytest.mark.parametrize("mode", ["detached", "unrolled"])
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_forward_matches_float64_reference(mode, steps, device):
    f = TanhLinear(6).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    expected = reference_alg1(f, x, steps, 0.1)  # on the CPU, before the block moves to the device
    block = IESkip(f, steps, 0.1, mode).to(device)
    torch.testing.assert_close(block(x.to(device)).cpu(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["detached", "unrolled"])
def test_forward_same_under_no_grad_and_in_eval(mode):
    f = TanhLinear(5).double()
    x = torch.randn(3, 5, dtype=torch.float64)
    block = IESkip(f, 2, 0.1, mode)
    expected = block(x).detach()
    block.eval()
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, rtol=1e-12, atol=1e-12)


def test_update_of_a_sample_does_not_depend_on_the_batch():
    f = TanhLinear(5).double()
    x = torch.randn(8, 5, dtype=torch.float64)
    block = IESkip(f, 3, 0.1)
    torch.testing.assert_close(block(x[:1]), block(x)[:1], rtol=1e-12, atol=1e-12)


def test_unrolled_gradcheck_inputs_and_parameters(device):
    f = TanhLinear(4).double()
    block = IESkip(f, 2, 0.1, "unrolled").to(device)
    x = torch.randn(2, 4, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,))
    params = dict(block.named_parameters())

    def as_function_of_params(weight, bias):
        return torch.func.functional_call(block, {"residual.lin.weight": weight, "residual.lin.bias": bias}, (x,))

    assert torch.autograd.gradcheck(as_function_of_params, (params["residual.lin.weight"], params["residual.lin.bias"]))


def test_detached_gradient_treats_the_correction_as_constant():
    f = TanhLinear(4).double()
    block = IESkip(f, 2, 0.1, "detached")
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, 4, dtype=torch.float64)
    (grad,) = torch.autograd.grad((block(x) * v).sum(), x)
    # Reference: d/dx of x + f(x) alone (the correction contributes nothing), by the closed-form Jacobian.
    W, b = f.lin.weight.detach(), f.lin.bias.detach()
    jac = (1 - torch.tanh(x.detach() @ W.T + b) ** 2)[:, :, None] * W
    expected = v + torch.einsum("ni,nij->nj", v, jac)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


def test_unrolled_and_detached_gradients_differ():
    f = TanhLinear(4).double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    grads = [torch.autograd.grad(IESkip(f, 2, 0.1, m)(x).sum(), x)[0] for m in ("detached", "unrolled")]
    assert not torch.allclose(*grads)


@pytest.mark.parametrize("mode", ["detached", "unrolled"])
def test_every_parameter_gets_a_gradient_and_no_inner_leak(mode, device):
    f = TanhLinear(4)
    block = IESkip(f, 2, 0.1, mode).to(device)
    block(torch.randn(3, 4, device=device)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())


def test_batchnorm_running_stats_updated_once_per_forward():
    def branch():
        torch.manual_seed(1)
        return nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 3, 3, padding=1))

    x = torch.randn(4, 3, 5, 5)
    vanilla, ie = IESkip(branch(), 0, 0.1), IESkip(branch(), 3, 0.1)
    vanilla(x), ie(x)
    bn_v, bn_ie = vanilla.residual[0], ie.residual[0]
    torch.testing.assert_close(bn_ie.running_mean, bn_v.running_mean)
    torch.testing.assert_close(bn_ie.running_var, bn_v.running_var)
    assert int(bn_ie.num_batches_tracked) == 1


@pytest.mark.parametrize("kwargs, word", [
    ({"steps": -1, "step_size": 0.1}, "ie_steps"),
    ({"steps": 1, "step_size": -0.1}, "ie_step_size"),
    ({"steps": 1, "step_size": 0.1, "inner_grad": "full"}, "detached"),
])
def test_bad_arguments_give_a_clear_error(kwargs, word):
    with pytest.raises(ConfigError, match=word):
        IESkip(nn.Identity(), **kwargs)
