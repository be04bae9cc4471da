"""Implicit Euler skip connection: Alg. 1 of Li, He & Lin (ICML 2020).

The explicit step ``x = x_prev + f(x_prev)`` is corrected by ``steps`` gradient-descent steps on the
implicit-Euler residual ``r(x) = ||x - x_prev - f(x)||^2`` (summed over all elements, so each
sample's update is its own gradient, independent of the batch size):

    grad r(x) = 2 (e - J_f(x)^T e),   e = x - x_prev - f(x)

``J_f(x)^T e`` is one vector-Jacobian product of the residual branch, so a step costs one forward
and one input-gradient backward of ``f``; no parameter gradient is computed inside the loop.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..errors import check_choice, check_range

INNER_GRAD_MODES = ("detached", "unrolled")


class IESkip(nn.Module):
    """Alg. 1 around any residual branch ``f``; ``steps=0`` is the vanilla skip ``x + f(x)``.

    inner_grad:
        ``"detached"``: the inner gradient is a constant for backprop (what the authors' public code
        does), so the block back-propagates like ``x_prev + f(x_prev)`` evaluated at the corrected
        output. ``"unrolled"``: backprop differentiates through every inner step (second order).
    The forward values are identical in both modes; only gradients differ. Works under
    ``torch.no_grad()`` (the inner loop turns autograd on locally), under ``torch.inference_mode()``
    (the block runs outside it on a copy of its input, since the inner gradient needs autograd) and in
    eval mode. With BatchNorm inside ``f``, running statistics are updated once per forward, by the
    explicit step only.

    ``solver``: None runs Alg. 1; a callable ``solver(skip, x_prev) -> x`` replaces it (set it for a
    block of code with ``ieskips.models.solver``: the exact implicit step, residual recording).
    """

    solver = None  # class default, so that it is never a module attribute saved with the weights

    def __init__(self, residual: nn.Module, steps: int, step_size: float, inner_grad: str = "detached"):
        super().__init__()
        check_range("ie_steps", steps, 0)
        check_range("ie_step_size", step_size, 0)
        check_choice("inner_grad", inner_grad, INNER_GRAD_MODES)
        self.residual = residual
        self.steps = int(steps)
        self.step_size = float(step_size)
        self.inner_grad = inner_grad

    def extra_repr(self) -> str:
        return f"steps={self.steps}, step_size={self.step_size}, inner_grad={self.inner_grad!r}"

    def forward(self, x_prev: torch.Tensor) -> torch.Tensor:
        if torch.is_inference_mode_enabled() and (self.steps > 0 or self.solver is not None):
            # Inference tensors cannot enter autograd, which the inner gradient needs: run the block
            # on a normal copy of its input; the (normal) result joins the inference-mode forward.
            with torch.inference_mode(False), torch.no_grad():
                return IESkip.forward(self, x_prev.clone())
        if self.solver is not None:
            return self.solver(self, x_prev)
        return self.algorithm1(x_prev)

    def algorithm1(self, x_prev: torch.Tensor) -> torch.Tensor:
        """Alg. 1 with this block's ``steps``, ``step_size`` and ``inner_grad``."""
        x = x_prev + self.residual(x_prev)
        if self.steps == 0:
            return x
        with _running_stats_frozen(self.residual), _full_precision(x):
            x, x_prev = _at_least_fp32(x), _at_least_fp32(x_prev)  # see _full_precision
            if self.inner_grad == "unrolled" and torch.is_grad_enabled() and x.requires_grad:
                for _ in range(self.steps):
                    x = x - self.step_size * self._unrolled_gradient(x, x_prev)
                return x
            # Detached: the correction is a constant for backprop, so iterate on plain tensors
            # (in place, no graph kept) and subtract the total correction from the explicit step.
            corrected, x_prev = x.detach().clone(), x_prev.detach()
            for _ in range(self.steps):
                self._detached_step_(corrected, x_prev)
        if not x.requires_grad:  # no graph to keep (no_grad, eval): the corrected value is the output
            return corrected
        return x - (x.detach() - corrected)

    def _unrolled_gradient(self, x: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
        """grad_x ||x - x_prev - f(x)||^2 with its graph (create_graph), so backprop unrolls it."""
        fx = self.residual(x)
        err = x - x_prev - fx
        (jt_err,) = torch.autograd.grad(fx, x, grad_outputs=err, create_graph=True)
        return 2 * (err - jt_err)

    def _detached_step_(self, x: torch.Tensor, x_prev: torch.Tensor) -> None:
        """One step of Alg. 1 on ``x`` in place; only the input-gradient of ``f`` is computed."""
        x_in = x.detach().requires_grad_()
        with torch.enable_grad():
            fx = self.residual(x_in)
        with torch.no_grad():
            err = torch.sub(x, x_prev).sub_(fx)
        (jt_err,) = torch.autograd.grad(fx, x_in, grad_outputs=err)
        with torch.no_grad():
            x.sub_(err.sub_(jt_err), alpha=2 * self.step_size)


def _full_precision(x: torch.Tensor):
    """The inner steps in fp32 even under autocast: their residual ``x - x_prev - f(x)`` is a small
    difference of large terms, which bf16's 8-bit mantissa would mostly round away (the explicit
    step and every other layer keep autocast's precision)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))  # bf16/fp16 up, fp32/fp64 as they are


@contextlib.contextmanager
def _running_stats_frozen(module: nn.Module):
    """Inner-step forwards in train mode use batch statistics without updating the running ones.

    Switching tracking off (rather than restoring the buffers afterwards) matters: an in-place
    update would bump the version of buffers the explicit step saved for backward.
    """
    norms = [m for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


@contextlib.contextmanager
def _skips_set(model: nn.Module, name: str, value):
    """Set attribute ``name`` of every IE-Skip in ``model`` to ``value`` for the block, then restore."""
    skips = [m for m in model.modules() if isinstance(m, IESkip)]
    saved = [getattr(m, name) for m in skips]
    for m in skips:
        setattr(m, name, value)
    try:
        yield model
    finally:
        for m, old in zip(skips, saved):
            setattr(m, name, old)


def inner_grad_mode(model: nn.Module, mode: str):
    """Switch every IE-Skip in ``model`` to ``mode`` for the length of the block, weights untouched.

    Forward values are the same in both modes; only gradients differ. An attack run under
    ``inner_grad_mode(model, "unrolled")`` differentiates through the inner steps even when the model
    was trained detached: a large gap between the two is the sign of masked gradients.
    """
    check_choice("inner_grad", mode, INNER_GRAD_MODES)
    return _skips_set(model, "inner_grad", mode)


def has_ie_skips(model: nn.Module) -> bool:
    return any(isinstance(m, IESkip) and m.steps > 0 for m in model.modules())


class ExplicitEuler(nn.Module):
    """The wrapped model run as its explicit-Euler (vanilla) twin: every IE-Skip with 0 inner steps,
    the same weights, always current. A natural transfer-attack source for an IE model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        with _skips_set(self.model, "steps", 0):
            return self.model(x)
