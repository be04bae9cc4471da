"""Find a network's stages and record each stage's input and output with forward hooks.

Stages are the children of the model's ``blocks`` container (``nn.Sequential``; every model of this
library has one), named ``block0``, ``block1``, ...; a model without one falls back to its outermost
IE-Skips in order. Shape-changing blocks are ``ProjectionBlock``s (``f(x) + shortcut(x)``, explicit,
no identity skip): they are stages for the stage gain but have no ``I + J`` (the Jacobian maps
between spaces of different sizes), so Props. 2/3 are evaluated at the IE-Skips only, as the paper
does ("neglecting the size and the dimension change").
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..models.blocks import SharedTwiceSkip
from ..models.ie_skip import IESkip


def find_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[(name, module)]`` of the stages in forward order."""
    for name, module in model.named_modules():
        if (name == "blocks" or name.endswith(".blocks")) and isinstance(module, nn.Sequential):
            return [(f"block{i}", m) for i, m in enumerate(module)]
    skips = [m for m in model.modules() if isinstance(m, IESkip)]
    nested = {id(inner) for m in skips for inner in m.residual.modules()}
    return [(f"block{i}", m) for i, m in enumerate(m for m in skips if id(m) not in nested)]


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Every module in eval mode for the block; each module's own mode restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


@dataclass(frozen=True)
class Unit:
    """One application of Alg. 1 (or of the solver in force) as it ran in the forward."""

    name: str
    skip: IESkip
    x_prev: torch.Tensor
    x: torch.Tensor
    steps: int
    implicit: bool  # K > 0, or an exact solver set (ImplicitModel sets it only during its forward)


def run_recorded(model: nn.Module, images: torch.Tensor, stages, units: list | None = None):
    """One no-grad forward; returns the logits and ``{name: (input, output)}`` per stage, and appends
    the IE-Skip applications to ``units`` when given.

    Units are taken inside the forward, so that settings a wrapper changes only for its forward
    (``SolverVariant``, ``ImplicitModel``) are the ones recorded.
    """
    records = {}

    def hook(name):
        def record(module, inputs, output):
            records[name] = (inputs[0].detach(), output.detach())
            if units is not None and isinstance(module, IESkip):
                units.extend(applications(name, module, *records[name]))
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in stages]
    try:
        with torch.no_grad():
            logits = model(images)
    finally:
        for handle in handles:
            handle.remove()
    return logits, records


def applications(name: str, skip: IESkip, x_prev: torch.Tensor, x_out: torch.Tensor) -> list[Unit]:
    """The units of one IE-Skip call. A SwResNet block applies the same IE-Skip twice; its
    intermediate point is recomputed and the second application is a unit of its own, ``<name>_2``."""
    implicit = skip.steps > 0 or getattr(skip, "solver", None) is not None
    if not isinstance(skip, SharedTwiceSkip):
        return [Unit(name, skip, x_prev, x_out, skip.steps, implicit)]
    with torch.no_grad():
        middle = IESkip.forward(skip, x_prev)
    return [Unit(name, skip, x_prev, middle, skip.steps, implicit),
            Unit(f"{name}_2", skip, middle, x_out, skip.steps, implicit)]
