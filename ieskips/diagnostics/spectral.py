"""Matrix-free extreme singular values of ``I + s J_f(x)`` per example, for a whole batch at once.

``J_f(x)`` is the Jacobian of the residual branch for one example with respect to that example's
input. In eval mode the branches of this library treat samples independently (GroupNorm(1, C), or
BatchNorm with running statistics), so the batch Jacobian is block diagonal and one batched
Jacobian-vector product is one product per example; inner products and norms are taken per example.

The singular values of ``A = I + s J`` are the square roots of the eigenvalues of ``A^T A``, found
by batched Lanczos on ``A^T A`` (one JVP and one VJP per step). Lanczos rather than plain power
iteration: its Krylov space contains the power iterate, so with the same products its largest Ritz
value is at least as close, and its smallest Ritz value gives ``sigma_min`` without a shift
``c I - A^T A`` whose convergence ratio is close to 1 in thousands of dimensions. The largest Ritz
value never exceeds the true ``lambda_max`` and the smallest is never below the true
``lambda_min``: an unconverged ``||I + J||_2`` is too small and ``sigma_min(I - J)`` too large.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

Operator = Callable[[torch.Tensor], torch.Tensor]
# sigma_max converges in ~30 steps at CIFAR size; sigma_min is ~7% high after 50 and needs ~120.
DEFAULT_ITERS = 50
DEFAULT_TOL = 1e-3


@dataclass(frozen=True)
class Estimate:
    """Per example: the singular value, Lanczos steps taken until converged, and whether it did."""

    sigma: torch.Tensor
    iters: torch.Tensor
    converged: torch.Tensor


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-example inner product of two batches, shape (B,)."""
    return (a * b).flatten(1).sum(1)


def per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape (B,) to broadcast over a batch shaped like ``like``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def jacobian_products(f: Callable, x: torch.Tensor) -> tuple[Operator, Operator]:
    """``(v -> J v, u -> J^T u)`` of ``f`` at ``x`` from one forward.

    The JVP is the double-backward trick: ``g(u) = J^T u`` is linear in ``u``, so the gradient of
    ``<g(u), v>`` with respect to ``u`` is ``J v``; both graphs are built once and reused.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        fx = f(x)
        u0 = torch.zeros_like(fx, requires_grad=True)
        (g,) = torch.autograd.grad(fx, x, u0, create_graph=True)

    def jvp(v):
        return torch.autograd.grad(g, u0, v, retain_graph=True)[0]

    def vjp(u):
        return torch.autograd.grad(fx, x, u, retain_graph=True)[0]

    return jvp, vjp


def gram_operator(f: Callable, x: torch.Tensor, sign: float) -> Operator:
    """``v -> A^T A v`` with ``A = I + sign * J_f(x)``."""
    jvp, vjp = jacobian_products(f, x)

    def matvec(v):
        av = v + sign * jvp(v)
        return av + sign * vjp(av)

    return matvec


def _tridiagonal(alphas: list, betas: list) -> torch.Tensor:
    t = torch.diag_embed(torch.stack(alphas, 1))
    if betas:
        off = torch.diag_embed(torch.stack(betas, 1), offset=1)
        t = t + off + off.transpose(1, 2)
    return t


def lanczos_extreme(matvec: Operator, start: torch.Tensor, *, which: str, iters: int, tol: float) -> Estimate:
    """Square root of the largest (``which="max"``) or smallest (``"min"``) eigenvalue of the
    per-example symmetric PSD operator ``matvec``, by Lanczos from ``start``.

    An example converges when its estimate changes by at most ``tol`` (relative) in one step, or
    when its Krylov space is invariant (then the estimate is exact); the loop stops when all have.
    """
    eps = torch.finfo(start.dtype).eps
    q = start / per_example(dot(start, start).sqrt(), start)
    q_prev, beta = torch.zeros_like(q), torch.zeros(len(q), dtype=q.dtype, device=q.device)
    alive = torch.ones(len(q), dtype=torch.bool, device=q.device)
    converged, steps = torch.zeros_like(alive), torch.full_like(alive, iters, dtype=torch.long)
    alphas, betas, previous = [], [], None
    for step in range(iters):
        w = matvec(q) - per_example(beta, q) * q_prev
        alpha = dot(w, q)
        w = w - per_example(alpha, q) * q
        w = w - per_example(dot(w, q), q) * q  # once more: float32 cancellation loses orthogonality
        # An example whose Krylov space closed adds a decoupled copy of its first Rayleigh quotient,
        # a value inside its spectrum, so its extreme Ritz values stay those of the closed space.
        alphas.append(torch.where(alive, alpha, alphas[0]) if alphas else alpha)
        ritz = torch.linalg.eigvalsh(_tridiagonal(alphas, betas))
        estimate = (ritz[:, -1] if which == "max" else ritz[:, 0]).clamp_min(0).sqrt()
        beta = dot(w, w).sqrt()
        closed = alive & (beta <= 1e3 * eps * ritz[:, -1].abs().clamp_min(eps))
        alive &= ~closed
        done = closed | ~alive
        if previous is not None:
            done |= (estimate - previous).abs() <= tol * estimate.abs()
        steps = torch.where(done & ~converged, step + 1, steps)
        converged |= done
        if bool(converged.all()):
            break
        beta = torch.where(alive, beta, torch.zeros_like(beta))
        betas.append(beta)
        q_prev, q = q, torch.where(per_example(alive, w), w / per_example(beta.clamp_min(eps), w), 0)
        previous = estimate
    return Estimate(estimate.detach(), steps, converged)


def _start(x: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator(device=x.device).manual_seed(seed)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def norm_i_plus_j(f: Callable, x: torch.Tensor, *, iters: int = DEFAULT_ITERS, tol: float = DEFAULT_TOL,
                  seed: int = 0) -> Estimate:
    """Per example ``||I + J_f(x)||_2`` (Prop. 2's quantity at the block input ``x``)."""
    return lanczos_extreme(gram_operator(f, x, 1.0), _start(x, seed), which="max", iters=iters, tol=tol)


def smin_i_minus_j(f: Callable, x: torch.Tensor, *, iters: int = DEFAULT_ITERS, tol: float = DEFAULT_TOL,
                   seed: int = 0) -> Estimate:
    """Per example ``sigma_min(I - J_f(x))`` (Prop. 3's quantity at the block output ``x``)."""
    return lanczos_extreme(gram_operator(f, x, -1.0), _start(x, seed), which="min", iters=iters, tol=tol)
