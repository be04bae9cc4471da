"""Stability diagnostics against analytic and dense float64 references, summaries, a real model."""
import math

import pytest
import torch
from torch import nn

from ieskips.attacks import FGSM
from ieskips.diagnostics import (loader_diagnostics, norm_i_plus_j, smin_i_minus_j, stability_diagnostics,
                                 summary, unit_diagnostics)
from ieskips.models import ExplicitEuler, IESkip, build_model
from ieskips.models.blocks import basic_branch

pytestmark = pytest.mark.unit


def linear_conv(weight: torch.Tensor) -> nn.Conv2d:
    """f(x) = W x at every pixel: a 1x1 convolution, so J_f = W repeated on the diagonal."""
    conv = nn.Conv2d(len(weight), len(weight), 1, bias=False).double()
    conv.weight.data.copy_(weight[:, :, None, None])
    return conv


def dense_extremes(f, x_prev, x):
    """Per example ||I + J_f(x_prev)||_2 and sigma_min(I - J_f(x)) from dense float64 Jacobians."""
    def jac(point):
        j = torch.autograd.functional.jacobian(lambda z: f(z[None])[0], point)
        return j.reshape(point.numel(), point.numel())

    eye = torch.eye(x[0].numel(), dtype=torch.float64)
    norm = [torch.linalg.svdvals(eye + jac(p)).max() for p in x_prev]
    smin = [torch.linalg.svdvals(eye - jac(p)).min() for p in x]
    return torch.stack(norm), torch.stack(smin)


def test_linear_branch_gives_the_analytic_singular_values():
    weight = torch.randn(6, 6, dtype=torch.float64) / 3
    f = linear_conv(weight)
    x = torch.randn(5, 6, 2, 2, dtype=torch.float64)
    eye = torch.eye(6, dtype=torch.float64)
    norm = norm_i_plus_j(f, x, iters=20, tol=1e-12)
    smin = smin_i_minus_j(f, x, iters=20, tol=1e-12)
    # Tolerance 1e-8: a 6-dim Krylov space closes after at most 6 steps, then the values are exact.
    torch.testing.assert_close(norm.sigma, torch.linalg.svdvals(eye + weight).max().expand(5), rtol=1e-8, atol=0)
    torch.testing.assert_close(smin.sigma, torch.linalg.svdvals(eye - weight).min().expand(5), rtol=1e-8, atol=0)
    assert norm.converged.all() and smin.converged.all() and (norm.iters <= 7).all()


def test_flat_linear_branch_in_an_ie_skip():
    lin = nn.Linear(8, 8, bias=False).double()
    skip = IESkip(lin, steps=2, step_size=0.1)
    x_prev = torch.randn(4, 8, dtype=torch.float64)
    out = unit_diagnostics(skip, x_prev, skip(x_prev).detach(), conditions="both", iters=20, tol=1e-12)
    eye, w = torch.eye(8, dtype=torch.float64), lin.weight.detach()
    torch.testing.assert_close(out["prop2_norm"], torch.linalg.svdvals(eye + w).max().expand(4), rtol=1e-8, atol=0)
    torch.testing.assert_close(out["prop3_smin"], torch.linalg.svdvals(eye - w).min().expand(4), rtol=1e-8, atol=0)


def _conv_skip(norm: str) -> IESkip:
    branch = basic_branch(2, 2, 1, norm).double()
    for m in branch.modules():  # non-trivial running statistics, so eval-mode BatchNorm is not identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return IESkip(branch, steps=1, step_size=0.05).eval()


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_conv_block_matches_dense_jacobians(norm):
    skip = _conv_skip(norm)
    x_prev = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    x = skip(x_prev).detach()
    ref_norm, ref_smin = dense_extremes(skip.residual, x_prev, x)
    out = unit_diagnostics(skip, x_prev, x, conditions="both", iters=40, tol=1e-12)
    # 32 dimensions, 40 steps: converged to float64 rounding; 1e-6 leaves room for Lanczos drift.
    torch.testing.assert_close(out["prop2_norm"], ref_norm, rtol=1e-6, atol=0)
    torch.testing.assert_close(out["prop3_smin"], ref_smin, rtol=1e-6, atol=0)
    assert out["prop2_converged"].all() and out["prop3_converged"].all()


def test_default_budget_is_close_and_errs_optimistically():
    skip = _conv_skip("group")
    x_prev = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    x = skip(x_prev).detach()
    ref_norm, ref_smin = dense_extremes(skip.residual, x_prev, x)
    out = unit_diagnostics(skip, x_prev, x, conditions="both", iters=10, tol=1e-3)
    # Ritz values lie inside the spectrum: the norm from below, sigma_min from above.
    assert (out["prop2_norm"] <= ref_norm * (1 + 1e-9)).all() and (out["prop3_smin"] >= ref_smin * (1 - 1e-9)).all()
    torch.testing.assert_close(out["prop2_norm"], ref_norm, rtol=2e-2, atol=0)


def test_implicit_residual_falls_with_inner_steps_on_a_contractive_block():
    # f(x) = W x with ||W||_2 = 0.5, so sigma(I - W) lies in [0.5, 1.5]. The inner error obeys
    # e <- (I - 2 gamma (I - W)(I - W)^T) e, a contraction with factor <= 1 - 2 * 0.2 * 0.25 = 0.9.
    weight = torch.randn(8, 8, dtype=torch.float64)
    weight *= 0.5 / torch.linalg.matrix_norm(weight, 2)
    lin = nn.Linear(8, 8, bias=False).double()
    lin.weight.data.copy_(weight)
    x_prev = torch.randn(6, 8, dtype=torch.float64)
    residuals = []
    for k in (0, 1, 2, 4, 8, 16):
        skip = IESkip(lin, steps=k, step_size=0.2)
        out = unit_diagnostics(skip, x_prev, skip(x_prev).detach(), iters=5)
        residuals.append(out["residual"])
        torch.testing.assert_close(out["residual_explicit"], residuals[0])
    for before, after in zip(residuals, residuals[1:]):
        assert (after < before).all()
    assert (residuals[-1] < 0.9 ** 16 * 2 * residuals[0]).all()


def test_summary_fractions_from_known_values():
    done = torch.tensor([True, True, True, True])
    result = {"blocks": {"block0": {"steps": 1, "prop3_smin": torch.tensor([1.2, 0.8, 1.5, 1.1]),
                                    "prop3_converged": torch.tensor([True, False, False, True])},
                         "block1": {"steps": 1, "prop3_smin": torch.tensor([1.0, 1.3, 0.9, 1.4]),
                                    "prop3_converged": done}},
              "stage_gain": {}, "correct": None}
    metrics = summary(result)
    assert metrics["diag/prop3_frac/block0"] == 0.75 and metrics["diag/prop3_frac/block1"] == 0.75
    assert metrics["diag/prop3_frac/all"] == 0.5  # examples 0 and 3
    assert metrics["diag/prop3_undecided/all"] == 0  # examples 1, 2 are unconverged but not in /all
    result["blocks"]["block0"]["prop3_converged"] = ~done
    assert summary(result)["diag/prop3_undecided/all"] == 0.5
    assert metrics["diag/prop3_smin/mean"] == pytest.approx(9.2 / 8)


@pytest.fixture
def tiny_ie_model():
    return build_model("preact_resnet18", num_classes=10, in_channels=1, width=4, ie_steps=1)


def test_fractions_mode_and_identical_inputs(tiny_ie_model):
    model = tiny_ie_model.train()
    model.head[0].eval()  # a module in its own mode must keep it
    x = torch.rand(6, 1, 8, 8)
    result = stability_diagnostics(model, x, adv_images=x.clone(), iters=8, conditions="both")
    assert model.training and not model.head[0].training and model.blocks[0].training
    metrics = result["metrics"]
    for cond in ("prop2", "prop3"):
        fracs = {k: v for k, v in metrics.items() if k.startswith(f"diag/{cond}_frac/")}
        units = ("all", "block0", "block1", "block3", "block5", "block7")
        assert set(fracs) == {f"diag/{cond}_frac/{b}" for b in units}
        assert all(0 <= v <= 1 for v in fracs.values())
        assert all(fracs[f"diag/{cond}_frac/all"] <= v for v in fracs.values())
    assert all(torch.isnan(g).all() for g in result["stage_gain"].values())
    assert not any(k.startswith("diag/stage_gain") or k == "diag/c_stable_frac" for k in metrics)
    assert not any(math.isnan(v) for v in metrics.values())


def test_tiny_real_model_end_to_end(tiny_ie_model):
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    result = stability_diagnostics(tiny_ie_model, x, y, attack=FGSM(eps=0.1), iters=10)
    # Projection blocks (2, 4, 6) are stages for the gain only; IE blocks carry Prop. 3.
    assert set(result["blocks"]) == {"block0", "block1", "block3", "block5", "block7"}
    assert set(result["stage_gain"]) == {"stem", *(f"block{i}" for i in range(8))}
    assert all(v.shape == (8,) for q in result["blocks"].values() for v in q.values() if torch.is_tensor(v))
    m = result["metrics"]
    assert m["diag/examples"] == 8 and "diag/prop2_norm/mean" not in m
    for key in ("prop3_frac/all", "residual/mean", "residual_explicit/mean", "prop3_smin/mean",
                "stage_gain/mean", "stage_gain/block3", "iters/max", "converged_frac", "c_stable_frac"):
        assert math.isfinite(m[f"diag/{key}"]), key
    assert m["diag/residual/mean"] < m["diag/residual_explicit/mean"]  # one inner step helps
    assert 1 <= m["diag/iters/max"] <= 10


def test_loader_and_vanilla_model():
    model = build_model("preact_resnet18", num_classes=10, in_channels=1, width=4, ie_steps=0)
    data = torch.utils.data.TensorDataset(torch.rand(10, 1, 8, 8), torch.randint(0, 10, (10,)))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    result = loader_diagnostics(model, loader, max_examples=7, iters=5)
    assert result["correct"].shape == (7,) and result["blocks"]["block0"]["prop2_norm"].shape == (7,)
    assert "diag/prop2_frac/all" in result["metrics"] and "diag/prop3_frac/all" not in result["metrics"]
    torch.testing.assert_close(result["blocks"]["block1"]["residual"], result["blocks"]["block1"]["residual_explicit"])


def test_shared_twice_block_gives_two_units():
    model = build_model("sw_preact_resnet58", num_classes=10, in_channels=1, width=2, ie_steps=1)
    result = stability_diagnostics(model, torch.rand(2, 1, 8, 8), iters=3)
    assert {"block0", "block0_2", "block1", "block1_2"} <= set(result["blocks"])
    first, second = result["blocks"]["block0"], result["blocks"]["block0_2"]
    assert not torch.equal(first["residual_explicit"], second["residual_explicit"])


def test_settings_a_wrapper_sets_for_its_forward_are_used(tiny_ie_model):
    twin = ExplicitEuler(tiny_ie_model)  # every IE-Skip with 0 steps, but only inside its forward
    result = stability_diagnostics(twin, torch.rand(3, 1, 8, 8), iters=5)
    block = result["blocks"]["block1"]
    assert block["steps"] == 0 and "prop2_norm" in block and "prop3_smin" not in block
    torch.testing.assert_close(block["residual"], block["residual_explicit"])
    assert tiny_ie_model.blocks[1].steps == 1
