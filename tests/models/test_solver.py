"""Other solvers of IE-Skips: the exact implicit step (Anderson + IFT) against float64 references,
test-time settings switched and restored, residuals, inference mode."""
import pytest
import torch
from torch import nn

from ieskips.errors import ConfigError
from ieskips.models import IESkip, build_model
from ieskips.models.solver import (ImplicitModel, SolverVariant, anderson, inner_residual, solver_set,
                                   solver_settings)

pytestmark = pytest.mark.unit


class Contractive(nn.Module):
    """f(x) = 0.9 tanh(W x + b) with ||W||_2 = 0.9: Lipschitz 0.81, so x = x_prev + f(x) has one solution."""

    def __init__(self, dim=6):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        with torch.no_grad():
            self.lin.weight.mul_(0.9 / torch.linalg.matrix_norm(self.lin.weight, 2))

    def forward(self, x):
        return 0.9 * torch.tanh(self.lin(x))


@pytest.fixture
def contractive_net():
    torch.manual_seed(0)
    return nn.Sequential(IESkip(Contractive(), steps=1, step_size=0.1), nn.Linear(6, 3)).double()


def test_anderson_reaches_its_tolerance_on_a_contractive_branch(contractive_net):
    f = contractive_net[0].residual
    x_prev = torch.randn(5, 6, dtype=torch.double)
    solve = anderson(lambda z: x_prev + f(z), x_prev, tol=1e-12, max_iter=100)
    assert solve.converged.all() and (solve.residual <= 1e-12).all()
    with torch.no_grad():
        torch.testing.assert_close(solve.x, x_prev + f(solve.x), rtol=0, atol=1e-10)
    plain = anderson(lambda z: x_prev + f(z), x_prev, tol=1e-12, max_iter=100, memory=1)
    assert solve.iterations.max() < plain.iterations.max()  # acceleration pays


def test_implicit_model_solves_each_block_and_keeps_its_residuals(contractive_net):
    model = ImplicitModel(contractive_net, tol=1e-10, max_iter=100)
    x = torch.randn(4, 6, dtype=torch.double, requires_grad=True)
    model(x).sum().backward()
    (record,) = model.stats
    assert record["forward"].converged.all() and record["backward"].converged.all()
    assert (record["forward"].residual <= 1e-10).all()


def test_ift_gradient_matches_float64_finite_differences(contractive_net):
    model = ImplicitModel(contractive_net, tol=1e-12, max_iter=200)
    x = torch.randn(3, 6, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(model, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_ift_gradient_equals_the_closed_form(contractive_net):
    """dx*/dx_prev = (I - J_f(x*))^{-1}; the K-step model's gradient is something else."""
    model = ImplicitModel(contractive_net[:1], tol=1e-13, max_iter=200)
    x_prev, v = torch.randn(1, 6, dtype=torch.double, requires_grad=True), torch.randn(1, 6, dtype=torch.double)
    x_star = model(x_prev)
    (grad,) = torch.autograd.grad(x_star, x_prev, v)
    jac = torch.autograd.functional.jacobian(contractive_net[0].residual, x_star.detach()[0])
    expected = torch.linalg.solve((torch.eye(6, dtype=torch.double) - jac).T, v[0])
    torch.testing.assert_close(grad[0], expected, rtol=1e-8, atol=1e-10)


def test_implicit_model_is_batch_independent_and_restores_the_model():
    torch.manual_seed(0)
    net = build_model("preact_resnet18", num_classes=10, in_channels=1, width=4, ie_steps=1).eval()
    x = torch.rand(6, 1, 8, 8)
    implicit = ImplicitModel(net, tol=1e-4)
    with torch.no_grad():
        together, alone = implicit(x), torch.cat([implicit(x[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(alone, together, rtol=1e-4, atol=1e-4)
    assert all(s["forward"].converged.all() for s in implicit.stats)
    skips = [m for m in net.modules() if isinstance(m, IESkip)]
    assert all("solver" not in m.__dict__ and m.solver is None for m in skips)
    assert not any("solver" in k for k in net.state_dict())


def test_solver_settings_switch_and_restore_exactly():
    torch.manual_seed(0)
    net = build_model("preact_resnet18", num_classes=10, in_channels=1, width=4, ie_steps=2, ie_step_size=0.07)
    skips = [m for m in net.modules() if isinstance(m, IESkip)]
    with solver_settings(net, steps=5, step_size_scale=0.5):
        assert all(m.steps == 5 and m.step_size == 0.035 for m in skips)
    assert all(m.steps == 2 and m.step_size == 0.07 for m in skips)
    with pytest.raises(RuntimeError), solver_settings(net, steps=0):
        raise RuntimeError
    assert all(m.steps == 2 for m in skips)


def test_better_solves_leave_smaller_residuals():
    torch.manual_seed(0)
    net = build_model("preact_resnet18", num_classes=10, in_channels=1, width=4, ie_steps=1).eval()
    x = torch.rand(4, 1, 8, 8)
    res = {name: inner_residual(v, x).mean().item() for name, v in {
        "k0": SolverVariant(net, steps=0), "k1": net, "k4": SolverVariant(net, steps=4),
        "implicit": ImplicitModel(net, tol=1e-5, max_iter=60)}.items()}
    assert res["k0"] > res["k1"] > res["k4"] > res["implicit"] and res["implicit"] < 1e-4, res


@pytest.mark.parametrize("steps", [0, 2])
def test_inference_mode_gives_the_no_grad_logits(steps):
    torch.manual_seed(0)
    net = build_model("preact_resnet18", num_classes=10, in_channels=1, width=4, ie_steps=steps).eval()
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        expected = net(x)
    with torch.inference_mode():
        got = net(x)
        implicit = ImplicitModel(net)(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert implicit.shape == expected.shape and torch.isfinite(implicit).all()


def test_solver_set_nests_and_restores():
    skip = IESkip(Contractive(), 1, 0.1)
    outer, inner = (lambda s, x: x + 1), (lambda s, x: x + 2)
    with solver_set(skip, outer):
        with solver_set(skip, inner):
            assert skip(torch.zeros(1, 6)).eq(2).all()
        assert skip(torch.zeros(1, 6)).eq(1).all()
    assert "solver" not in skip.__dict__


def test_bad_solver_settings_are_refused():
    with pytest.raises(ConfigError, match="tol"):
        ImplicitModel(nn.Linear(2, 2), tol=0)
    with pytest.raises(ConfigError, match="ie_steps"):
        SolverVariant(nn.Linear(2, 2), steps=-1)
