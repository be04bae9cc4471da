"""Other solvers for a model's IE-Skips: test-time K and step size, and the exact implicit step.

Alg. 1 only approximates the implicit-Euler step ``x = x_prev + f(x)`` with ``K`` gradient steps.
Whether a model's robustness belongs to the implicit scheme or to that approximation (and to the
gradients it gives an attacker) is a question about solvers, answered by swapping them:

- ``SolverVariant(model, steps=..., step_size_scale=...)``: the same weights with other inner settings
  (``steps=0`` is the explicit twin, ``steps > K`` solves better, a smaller step size solves worse).
- ``ImplicitModel(model, tol)``: every IE-Skip solved to a tolerance by Anderson acceleration on
  ``x = x_prev + f(x)``, differentiated by the implicit function theorem (the backward solves the
  adjoint fixed point ``u = v + J_f(x*)^T u`` with one VJP per iteration), residuals kept in ``stats``.
- ``inner_residual(net, images)``: per example, the relative implicit residual
  ``||x - x_prev - f(x)|| / ||x||`` averaged over the IE-Skip applications of one forward.

Every solve here is per example (a converged example is frozen, the rest run on), so one example's
output never depends on the rest of its batch (except through BatchNorm in train mode).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import check_range
from .ie_skip import IESkip, _running_stats_frozen, _skips_set


@contextlib.contextmanager
def solver_settings(model: nn.Module, *, steps: int | None = None, step_size_scale: float | None = None):
    """Every IE-Skip with ``steps`` inner steps and its step size times ``step_size_scale`` for the
    block (None leaves a setting alone); the exact previous values are restored afterwards."""
    skips = [m for m in model.modules() if isinstance(m, IESkip)]
    sizes = [m.step_size for m in skips]
    switch = _skips_set(model, "steps", int(steps)) if steps is not None else contextlib.nullcontext()
    try:
        with switch:
            if step_size_scale is not None:
                for m, size in zip(skips, sizes):
                    m.step_size = size * step_size_scale
            yield model
    finally:
        for m, size in zip(skips, sizes):
            m.step_size = size


@contextlib.contextmanager
def solver_set(model: nn.Module, solver):
    """Every IE-Skip in ``model`` solved by ``solver(skip, x_prev)`` for the block (see ``IESkip.solver``)."""
    skips = [m for m in model.modules() if isinstance(m, IESkip)]
    saved = [m.__dict__.get("solver", _ABSENT) for m in skips]
    for m in skips:
        m.solver = solver
    try:
        yield model
    finally:
        for m, old in zip(skips, saved):
            if old is _ABSENT:
                del m.solver
            else:
                m.solver = old


_ABSENT = object()


class SolverVariant(nn.Module):
    """``model`` run with other IE-Skip settings (see ``solver_settings``); weights shared, always current."""

    def __init__(self, model: nn.Module, steps: int | None = None, step_size_scale: float | None = None):
        super().__init__()
        if steps is not None:
            check_range("ie_steps", steps, 0)
        if step_size_scale is not None:
            check_range("ie_step_size_scale", step_size_scale, 0)
        self.model, self.steps, self.step_size_scale = model, steps, step_size_scale

    def forward(self, x):
        with solver_settings(self.model, steps=self.steps, step_size_scale=self.step_size_scale):
            return self.model(x)


@dataclass(frozen=True)
class Solve:
    x: torch.Tensor  # per example the first iterate within tolerance, else the lowest-residual one
    residual: torch.Tensor  # (N,) ||g(x) - x|| / ||x|| at the returned x
    iterations: torch.Tensor  # (N,) evaluations of g until the returned x
    converged: torch.Tensor  # (N,) residual <= tol


def relative_residual(x: torch.Tensor, gx: torch.Tensor) -> torch.Tensor:
    """Per example ``||g(x) - x|| / ||x||`` (0 where both vanish)."""
    x, gx = x.flatten(1), gx.flatten(1)
    return (gx - x).norm(dim=1) / x.norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny)


def anderson(g, x0: torch.Tensor, *, tol: float = 1e-4, max_iter: int = 50, memory: int = 5,
             damping: float = 1.0, ridge: float = 1e-6) -> Solve:
    """Solve ``x = g(x)`` per example (dim 0) by Anderson acceleration (Walker & Ni 2011) from ``x0``.

    The mixing weights minimise ``||sum_i a_i (g(x_i) - x_i)||`` with ``sum_i a_i = 1`` over the last
    ``memory`` iterates (a ridge-regularised bordered system); ``damping`` mixes ``g`` and ``x``.
    """
    n, shape = x0.shape[0], x0.shape
    xs, gs = [], []
    x = x0
    best, best_res = x0.clone(), torch.full((n,), float("inf"), device=x0.device, dtype=x0.dtype)
    iters = torch.zeros(n, dtype=torch.long, device=x0.device)
    done = torch.zeros(n, dtype=torch.bool, device=x0.device)
    for k in range(max_iter):
        gx = g(x)
        res = relative_residual(x, gx)
        better = ~done & (res < best_res)
        best[better], best_res = x[better], torch.where(better, res, best_res)
        iters = torch.where(better, torch.full_like(iters, k + 1), iters)
        done = done | (best_res <= tol)
        if bool(done.all()) or k == max_iter - 1:
            break
        xs, gs = (xs + [x.reshape(n, -1)])[-memory:], (gs + [gx.reshape(n, -1)])[-memory:]
        x = _mix(xs, gs, damping, ridge).view(shape)
        x = torch.where(done.view(-1, *[1] * (x.dim() - 1)), best, x)  # frozen: no NaN from a spent history
    return Solve(best, best_res, iters, best_res <= tol)


def _mix(xs, gs, damping, ridge):
    X, G = torch.stack(xs, 1), torch.stack(gs, 1)  # (N, m, D)
    if X.shape[1] == 1:
        return (1 - damping) * X[:, 0] + damping * G[:, 0]
    F = G - X
    gram = F @ F.transpose(1, 2)
    m = gram.shape[1]
    scale = gram.diagonal(dim1=1, dim2=2).mean(1).clamp_min(torch.finfo(F.dtype).tiny)
    system = torch.zeros(F.shape[0], m + 1, m + 1, dtype=F.dtype, device=F.device)
    system[:, 0, 1:], system[:, 1:, 0] = 1, 1
    system[:, 1:, 1:] = gram + ridge * scale[:, None, None] * torch.eye(m, dtype=F.dtype, device=F.device)
    rhs = torch.zeros(F.shape[0], m + 1, dtype=F.dtype, device=F.device)
    rhs[:, 0] = 1
    alpha = torch.linalg.solve(system, rhs)[:, 1:]
    mixed = damping * (alpha[:, None] @ G)[:, 0] + (1 - damping) * (alpha[:, None] @ X)[:, 0]
    plain = (1 - damping) * X[:, -1] + damping * G[:, -1]
    return torch.where(torch.isfinite(mixed).all(1, keepdim=True), mixed, plain)


class ImplicitModel(nn.Module):
    """``model`` with every IE-Skip the exact implicit step ``x = x_prev + f(x)``, solved to ``tol``.

    Forward: Anderson acceleration from the explicit step ``x_prev + f(x_prev)``. Backward: the
    implicit function theorem, ``dL/dx_prev = u`` with ``u = v + J_f(x*)^T u`` (``v = dL/dx*``) solved
    the same way; parameters get ``u^T df/dtheta``. ``stats`` holds, per IE-Skip application of the
    last forward, the forward ``Solve`` (``"forward"``) and, once a backward ran, the adjoint one
    (``"backward"``). Weights are shared with ``model``; its IE-Skips are restored after each forward.
    Solves that miss their tolerance return the lowest-residual iterate (see ``stats``).
    """

    def __init__(self, model: nn.Module, tol: float = 1e-4, max_iter: int = 50, memory: int = 5,
                 backward_tol: float | None = None, backward_max_iter: int | None = None):
        super().__init__()
        check_range("tol", tol, 0, low_open=True)
        check_range("max_iter", max_iter, 0, low_open=True)
        check_range("memory", memory, 0, low_open=True)
        self.model, self.tol, self.max_iter, self.memory = model, tol, int(max_iter), int(memory)
        self.backward_tol = tol if backward_tol is None else backward_tol
        self.backward_max_iter = self.max_iter if backward_max_iter is None else int(backward_max_iter)
        self.stats: list[dict] = []

    def forward(self, x):
        self.stats = []
        with solver_set(self.model, self._step):
            return self.model(x)

    def _step(self, skip: IESkip, x_prev: torch.Tensor) -> torch.Tensor:
        f, record = skip.residual, {}
        self.stats.append(record)
        with torch.no_grad(), _running_stats_frozen(f):
            record["forward"] = solve = anderson(lambda z: x_prev + f(z), x_prev + f(x_prev), tol=self.tol,
                                                 max_iter=self.max_iter, memory=self.memory)
        if not torch.is_grad_enabled():
            return solve.x
        z = solve.x.detach()
        out = x_prev + f(z)  # x* held constant: backprop reaches x_prev and the weights once, scaled by u
        z_in = z.clone().requires_grad_()
        with _running_stats_frozen(f):
            f_z = f(z_in)

        def adjoint(v):
            if v is None:  # an undefined gradient stays undefined
                return v
            vjp = lambda u: v + torch.autograd.grad(f_z, z_in, u, retain_graph=True)[0]  # noqa: E731
            record["backward"] = back = anderson(vjp, v, tol=self.backward_tol, max_iter=self.backward_max_iter,
                                                 memory=self.memory)
            return back.x

        if out.requires_grad:
            out.register_hook(adjoint)
        return out + (z - out.detach())  # the value is the solution itself, as without a graph


@contextlib.contextmanager
def recorded_residuals(model: nn.Module):
    """Alg. 1 as usual; the list yielded gets, per IE-Skip application, the per-example residual."""
    records: list[torch.Tensor] = []

    def solver(skip, x_prev):
        x = skip.algorithm1(x_prev)
        with torch.no_grad(), _running_stats_frozen(skip.residual):
            records.append(relative_residual(x, x_prev + skip.residual(x)))
        return x

    with solver_set(model, solver):
        yield records


def inner_residual(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Per example, the relative implicit residual ``||x - x_prev - f(x)|| / ||x||`` averaged over the
    IE-Skip applications of one forward of ``net`` (a model, ``SolverVariant`` or ``ImplicitModel``);
    zeros for a model without IE-Skips."""
    with torch.no_grad():
        if isinstance(net, ImplicitModel):
            net(images)
            records = [s["forward"].residual for s in net.stats]
        else:
            with recorded_residuals(net) as records:
                net(images)
    if not records:
        return torch.zeros(len(images), device=images.device)
    return torch.stack(records).mean(0)
