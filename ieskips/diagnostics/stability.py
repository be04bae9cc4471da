"""Per-example stability quantities of a model on a batch or over a loader (see the package doc)."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

from ..errors import check_choice, check_range
from ..models.ie_skip import IESkip
from .capture import eval_mode, find_stages, run_recorded
from .spectral import DEFAULT_ITERS, DEFAULT_TOL, dot, norm_i_plus_j, smin_i_minus_j
from .summary import summary

CONDITIONS = ("own", "both")
DEFAULT_EXAMPLES = 64


def relative_norm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per example ``||a|| / ||b||``; nan where ``||b|| == 0``."""
    den = dot(b, b).sqrt()
    return torch.where(den > 0, dot(a, a).sqrt() / den, torch.full_like(den, float("nan")))


def unit_diagnostics(skip: IESkip, x_prev: torch.Tensor, x: torch.Tensor, *, implicit: bool | None = None,
                     conditions: str = "own", iters: int = DEFAULT_ITERS, tol: float = DEFAULT_TOL,
                     seed: int = 0) -> dict:
    """One application of an IE-Skip, ``x_prev -> x``: implicit residuals and the Prop. 2/3 quantities
    (Prop. 3 when ``implicit``, by default when the skip has inner steps, else Prop. 2)."""
    f = skip.residual
    implicit = skip.steps > 0 if implicit is None else implicit
    with torch.no_grad():
        explicit = x_prev + f(x_prev)
        out = {"steps": skip.steps,
               "residual": relative_norm(x - x_prev - f(x), x),
               "residual_explicit": relative_norm(explicit - x_prev - f(explicit), explicit)}
    if not implicit or conditions == "both":
        est = norm_i_plus_j(f, x_prev, iters=iters, tol=tol, seed=seed)
        out.update(prop2_norm=est.sigma, prop2_iters=est.iters, prop2_converged=est.converged)
    if implicit or conditions == "both":
        est = smin_i_minus_j(f, x, iters=iters, tol=tol, seed=seed)
        out.update(prop3_smin=est.sigma, prop3_iters=est.iters, prop3_converged=est.converged)
    return {k: v.cpu() if torch.is_tensor(v) else v for k, v in out.items()}


def stage_gains(stages, clean: dict, adv: dict, images, adv_images) -> dict:
    """Per stage and example ``||s_i(x') - s_i(x)|| / ||x' - x||`` (Definition 1), ``"stem"`` first
    (from the input image to the first block's input); nan where the inputs coincide."""
    first = stages[0][0]
    gains = {"stem": relative_norm(adv[first][0] - clean[first][0], adv_images - images)}
    for name, _ in stages:
        (x_in, x_out), (a_in, a_out) = clean[name], adv[name]
        gains[name] = relative_norm(a_out - x_out, a_in - x_in)
    return {name: g.cpu() for name, g in gains.items()}


def stability_diagnostics(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None,
                          adv_images: torch.Tensor | None = None, *, attack: Callable | None = None,
                          iters: int = DEFAULT_ITERS, tol: float = DEFAULT_TOL, conditions: str = "own",
                          seed: int = 0) -> dict:
    """Stability diagnostics of ``model`` on one batch (inputs in [0, 1], on the model's device).

    Returns ``{"blocks": {unit: {quantity: (B,) tensor, "steps": K}}, "stage_gain": {stage: (B,)}``
    (empty without adversarial inputs), ``"correct": (B,) bool or None, "metrics": summary(...)}``.
    ``adv_images`` or ``attack(model, images, labels)`` give ``x'`` for the stage gains. ``tol=0``
    runs all ``iters`` Lanczos steps. ``conditions="both"`` also evaluates Prop. 2 at IE blocks and
    Prop. 3 at vanilla ones. The model runs in eval mode; every module's mode is restored afterwards.
    """
    result = _batch(model, images, labels, adv_images, attack, iters=iters, tol=tol,
                    conditions=conditions, seed=seed)
    result["metrics"] = summary(result)
    return result


def loader_diagnostics(model: nn.Module, loader: Iterable, *, attack: Callable | None = None,
                       max_examples: int | None = DEFAULT_EXAMPLES, device=None, **options) -> dict:
    """``stability_diagnostics`` over the first ``max_examples`` examples (all when None) of a loader
    of ``(images, labels)`` batches, per-example tensors concatenated in loader order."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    parts, seen = [], 0
    for images, labels in loader:
        if max_examples is not None:
            images, labels = images[:max_examples - seen], labels[:max_examples - seen]
        parts.append(_batch(model, images.to(device), labels.to(device), None, attack, **options))
        seen += len(images)
        if max_examples is not None and seen >= max_examples:
            break
    result = _concat(parts)
    result["metrics"] = summary(result)
    return result


def diagnose(model: nn.Module, loader: Iterable, attacks: dict, robust: dict, *, device=None,
             max_examples: int | None = DEFAULT_EXAMPLES) -> dict[str, float]:
    """The metrics of ``loader_diagnostics`` with x' from the strongest of ``attacks``: the one with the
    lowest ``robust[f"robust_acc/{label}"]`` (Definition 1's gain along the worst direction found)."""
    strongest = min(attacks, key=lambda k: robust.get(f"robust_acc/{k}", math.inf), default=None)
    attack = attacks[strongest] if strongest is not None else None
    return loader_diagnostics(model, loader, attack=attack, max_examples=max_examples, device=device)["metrics"]


def _batch(model, images, labels, adv_images, attack, *, iters=DEFAULT_ITERS, tol=DEFAULT_TOL,
           conditions="own", seed=0) -> dict:
    check_choice("diagnostics conditions", conditions, CONDITIONS)
    check_range("diagnostics iters", iters, 1)
    check_range("diagnostics tol", tol, 0)
    stages = find_stages(model)
    with torch.inference_mode(False), eval_mode(model):  # the Jacobian products need autograd
        images = images.clone()
        adv_images = None if adv_images is None else adv_images.clone()
        units = []
        logits, clean = run_recorded(model, images, stages, units)
        blocks = {u.name: {**unit_diagnostics(u.skip, u.x_prev, u.x, implicit=u.implicit, conditions=conditions,
                                              iters=iters, tol=tol, seed=seed), "steps": u.steps}
                  for u in units}
        if adv_images is None and attack is not None:
            adv_images = attack(model, images, labels)
        gains = {}
        if adv_images is not None and stages:
            _, adv = run_recorded(model, adv_images, stages)
            gains = stage_gains(stages, clean, adv, images, adv_images)
    correct = None if labels is None else (logits.argmax(1) == labels).cpu()
    return {"blocks": blocks, "stage_gain": gains, "correct": correct}


def _concat(parts: list) -> dict:
    """Per-example tensors of several batches joined; other values (``steps``, None) from the first."""
    def merge(values):
        if isinstance(values[0], dict):
            return {k: merge([v[k] for v in values]) for k in values[0]}
        return torch.cat(values) if torch.is_tensor(values[0]) else values[0]

    return merge(parts) if parts else {"blocks": {}, "stage_gain": {}, "correct": None}
