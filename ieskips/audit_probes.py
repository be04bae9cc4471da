"""The audit's probes for a network that solves something in its forward pass (issue 12): the
unrolled gradient against finite differences, forward consistency (grad on/off, batch size,
inference mode), AutoAttack's own flags, and robustness under other test-time solvers."""
from __future__ import annotations

import contextlib
import copy
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from .attacks import PGD
from .attacks.base import input_gradient, per_example_loss
from .evaluation import correct_masks
from .models.ie_skip import IESkip, has_ie_skips, inner_grad_mode
from .models.solver import ImplicitModel, SolverVariant, inner_residual


@dataclass(frozen=True)
class Check:
    name: str  # short id, e.g. "pgd_beats_fgsm"
    passed: bool | None  # None: not applicable to this model
    detail: str  # one line a reader can act on
    numbers: dict = field(default_factory=dict)


def probe_batch(loader, device, n):
    images, labels = next(iter(loader))
    return images[:n].to(device), labels[:n].to(device)


def gradient_exactness(model: nn.Module, images, labels, *, adversarial=None, directions: int = 3,
                       rtol: float = 1e-2, seed: int = 0) -> Check:
    """The input gradient an attack would follow equals a float64 central finite difference.

    On a float64 copy (IE-Skips unrolled: the exact gradient of the K-step forward), per example and
    for ``directions`` random directions ``d``, ``<grad L, d>`` against ``(L(x + h d) - L(x - h d)) / 2h``
    (the better of h = 1e-5 and 1e-6, and per example the median over the directions, so that a ReLU
    kink crossed along one direction does not count: a cut gradient is wrong along all), at ``images``
    and at ``adversarial``. ``rtol`` 1e-2: an exact gradient lands within about 1e-3 even at PGD points
    (which sit near ReLU kinks), a cut one is off by 1e-1 or more. The as-implemented gradient (the model's own mode, e.g. detached) is
    reported beside it, not judged: it is approximate by design.
    """
    ref = copy.deepcopy(model).double().eval()
    gen = torch.Generator().manual_seed(seed)
    points = {"clean": images} if adversarial is None else {"clean": images, "adversarial": adversarial}
    ie = has_ie_skips(ref)
    worst, own = {}, {}
    for name, x in points.items():
        x = x.detach().double()
        dirs = [torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device) for _ in range(directions)]
        with inner_grad_mode(ref, "unrolled") if ie else contextlib.nullcontext():
            worst[name] = _median_error(ref, x, labels, dirs)
        own[name] = _median_error(ref, x, labels, dirs) if ie else worst[name]
    err = max(worst.values())
    what = "unrolled input gradient" if ie else "input gradient"
    return Check("gradient_exact", err <= rtol,
                 f"{what} vs float64 finite differences, largest relative error: " + _errors(worst)
                 + " (must be ~0: else the gradient does not describe the model); the model's own gradient mode: "
                 + _errors(own), {"error": worst, "own_mode_error": own})


def _errors(errors: dict) -> str:
    return ", ".join(f"{k} {v:.1e}" for k, v in errors.items())


def _median_error(model, x, labels, dirs) -> float:
    """Per example the median relative error over the directions; the largest over the examples."""
    return torch.stack([_fd_error(model, x, labels, d) for d in dirs]).median(0).values.max().item()


def _fd_error(model, x, labels, d) -> torch.Tensor:
    xg = x.clone().requires_grad_()
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(per_example_loss(model(xg), labels, "ce").sum(), xg)
    analytic = (grad * d).flatten(1).sum(1)
    scale = 1e-6 * grad.flatten(1).norm(dim=1) * d.flatten(1).norm(dim=1) + 1e-30
    loss = lambda t: per_example_loss(model(t), labels, "ce")  # noqa: E731
    best = None
    with torch.no_grad():
        for h in (1e-5, 1e-6):
            fd = (loss(x + h * d) - loss(x - h * d)) / (2 * h)
            err = (analytic - fd).abs() / torch.maximum(torch.maximum(analytic.abs(), fd.abs()), scale)
            best = err if best is None else torch.minimum(best, err)
    return best


def forward_consistency(model: nn.Module, images, *, atol: float = 1e-4, rtol: float = 1e-4) -> Check:
    """The same logits with autograd on (input requiring grad), under ``no_grad``, twice, one example
    at a time and under ``torch.inference_mode()`` (or an error there, reported)."""
    was_training = model.training
    model.eval()
    diffs, error = {}, None
    try:
        with torch.no_grad():
            ref = model(images)
            diffs["repeat"] = (model(images) - ref).abs().max().item()
            singles = torch.cat([model(images[i:i + 1]) for i in range(len(images))])
            diffs["batch_size_1"] = (singles - ref).abs().max().item()
        with torch.enable_grad():
            diffs["grad_enabled"] = (model(images.clone().requires_grad_()).detach() - ref).abs().max().item()
        try:
            with torch.inference_mode():
                diffs["inference_mode"] = (model(images.clone()) - ref).abs().max().item()
        except RuntimeError as err:
            error = str(err).splitlines()[0]
    finally:
        model.train(was_training)
    bound = atol + rtol * ref.abs().max().item()
    bad = {k: v for k, v in diffs.items() if not v <= bound}
    detail = ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()) + f" (largest logit change; bound {bound:.2g})"
    if error:
        detail += f"; torch.inference_mode() fails: {error}"
    return Check("forward_consistent", not bad and error is None, detail, {**diffs, "inference_error": error})


def autoattack_flags(model: nn.Module, images, labels) -> Check:
    """AutoAttack's own sanity checks (randomised, probabilities, zero gradients, dynamic), captured.

    An IE model is always "dynamic" (autograd inside its forward): expected, and answered by the
    adaptive attacks; any other flag fails the check. Not applicable without ``pyautoattack``.
    """
    try:
        from pyautoattack import checks  # noqa: PLC0415  (optional dependency)
    except ImportError:
        return Check("autoattack_flags", None, "pyautoattack is not installed", {})
    flags = []

    class Log:
        def warning(self, msg):
            flags.append(msg)

    was_training, tracer = model.training, sys.gettrace()
    model.eval()
    try:
        checks.check_randomized(model, images, labels, logger=Log())
        checks.check_range_output(model, images, logger=Log())
        checks.check_zero_gradients(input_gradient(model, images, labels), logger=Log())
        checks.funcs.update({k: 0 for k in checks.funcs})  # its call counters are global and never reset
        checks.check_dynamic(model, images, logger=Log())
    finally:
        sys.settrace(tracer)  # check_dynamic leaves no tracer at all, not the one it found
        model.train(was_training)
    expected = [f for f in flags if "dynamic" in f] if has_ie_skips(model) else []
    others = [f for f in flags if f not in expected]
    detail = "; ".join(f.split(" See ")[0] for f in flags) or "no flags"
    return Check("autoattack_flags", not others, detail + (" (dynamic is expected of IE-Skips: see "
                                                          "adaptive_not_better)" if expected else ""), {"flags": flags})


def solver_sensitivity(model: nn.Module, loader, device="cpu", *, eps: float, steps: int = 20, tol: float = 0.02,
                       implicit_tol: float = 1e-4, probe=None, progress: bool | None = None):
    """Robust accuracy (PGD-``steps`` on each variant along its exact gradient: Alg. 1 unrolled, the
    implicit step by the IFT) and the inner residual under test-time solvers other than training's:
    K = 0 and 2K, the step size x0.5 and x2, and the exact implicit step. Flags robustness that grows
    as the solve gets worse (any variant with twice the best residual more robust than the best-solved
    one by more than ``tol``; on few examples this is noisy), and adversarial points
    where the trained solver leaves a much larger residual than at clean ones (``probe``: (clean,
    adversarial) images). Returns (checks, accuracies)."""
    skip = next(m for m in model.modules() if isinstance(m, IESkip) and m.steps > 0)
    k = skip.steps
    variants = {f"k{k}": SolverVariant(model), "k0": SolverVariant(model, steps=0),
                f"k{2 * k}": SolverVariant(model, steps=2 * k), "gamma0.5x": SolverVariant(model, step_size_scale=0.5),
                "gamma2x": SolverVariant(model, step_size_scale=2.0), "implicit": ImplicitModel(model, implicit_tol)}
    clean, adv = probe if probe is not None else (probe_batch(loader, device, 8)[0], None)
    acc, residual = {}, {}
    was_training = model.training
    model.eval()
    try:
        for name, net in variants.items():
            attack = PGD(eps, 2.5 * eps / steps, steps, inner_grad="unrolled")  # each variant's exact gradient
            masks = correct_masks(net, loader, {"pgd": attack}, device, progress)
            acc[f"solver/{name}/natural_acc"] = masks["natural"].float().mean().item()
            acc[f"solver/{name}/robust_acc"] = masks["pgd"].float().mean().item()
            residual[name] = inner_residual(net, clean).mean().item()
        adv_residual = inner_residual(model, adv).mean().item() if adv is not None else float("nan")
    finally:
        model.train(was_training)
    robust = {n: acc[f"solver/{n}/robust_acc"] for n in variants}
    best_solved = min(residual, key=residual.get)
    worse = [n for n in variants if residual[n] > 2 * residual[best_solved] + 1e-6]
    gain = max((robust[n] - robust[best_solved] for n in worse), default=0.0)
    table = ", ".join(f"{n}: robust {robust[n]:.3f}, residual {residual[n]:.2g}" for n in variants)
    checks = [
        Check("solver_robustness", gain <= tol,
              f"by test-time solver {table}; robustness gained by solving worse than {best_solved}: {gain:.3f} "
              "(> 0: the robust function is the approximation, not the implicit step; attack it adaptively)",
              {"robust": robust, "residual": residual, "gain": gain}),
        Check("adversarial_residual", not adv_residual > 1.5 * residual[f"k{k}"] + 1e-3,
              f"inner residual of the trained solver at clean points {residual[f'k{k}']:.3g}, at PGD points "
              f"{adv_residual:.3g} (much larger: the attack lands where the solve fails)",
              {"clean": residual[f"k{k}"], "adversarial": adv_residual}),
    ]
    return checks, acc


def static_comparison(model: nn.Module, loader, device, attacks: dict, credible: float, images, *, tol: float = 0.02,
                      progress: bool | None = None) -> Check:
    """The comparison that decides whether the defense helped (Croce et al., ICML 2022): the same
    weights run as the explicit twin (every IE-Skip with 0 inner steps, the static base model), under
    the same standard attacks, and what the inner steps cost at inference."""
    import time

    from .models.ie_skip import ExplicitEuler

    twin = ExplicitEuler(model)
    twin_credible = torch.stack([m for n, m in correct_masks(twin, loader, attacks, device, progress).items()
                                 if n != "natural"]).all(0).float().mean().item()

    def seconds(net):
        with torch.no_grad():
            net(images)
            times = []
            for _ in range(5):
                start = time.perf_counter()
                net(images)
                times.append(time.perf_counter() - start)
        return sorted(times)[2]

    ratio = seconds(model) / seconds(twin)
    gain = credible - twin_credible
    return Check("static_comparison", gain >= -tol,
                 f"worst case {credible:.4f} against {twin_credible:.4f} for the same weights run explicitly "
                 f"({gain:+.4f}) at {ratio:.2f}x the inference cost (flag: the inner steps make it less robust)",
                 {"twin_credible_robust_acc": twin_credible, "gain": gain, "inference_cost_ratio": ratio})
