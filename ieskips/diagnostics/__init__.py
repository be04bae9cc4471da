"""Stability diagnostics of Li, He & Lin (ICML 2020): Props. 2/3, Theorem 1, Definition 1.

Per IE-Skip (a "unit"; a SwResNet block is two units, ``blockN`` and ``blockN_2``) and per example:

- ``residual``: ``||x - x_prev - f(x)|| / ||x||`` at the block's output x (after its K inner steps);
  ``residual_explicit``: the same at the explicit step ``x_prev + f(x_prev)`` (equal when K = 0).
  How far from the exact implicit scheme Alg. 1 gets (Sec. 6.1).
- ``prop2_norm``: ``||I + J_f(x_prev)||_2`` at vanilla units (K = 0); Prop. 2 holds when <= 1.
- ``prop3_smin``: ``sigma_min(I - J_f(x))`` at the output x of IE units (K > 0, or an exact solver
  as under ``ieskips.models.solver.ImplicitModel``); Prop. 3 holds when >= 1.
  ``conditions="both"`` computes both at every unit (vanilla vs IE on the same footing, ~1.4x cost). ``J_f`` is the Jacobian of one example's residual branch with
  respect to that example's input; estimated matrix-free by batched Lanczos (``spectral``), with
  ``*_iters`` (steps until converged) and ``*_converged`` (relative change below ``tol``).
  Unconverged estimates err optimistically: the norm too small, sigma_min too large.
- ``stage_gain`` (given adversarial inputs x'): per stage ``||s_i(x') - s_i(x)|| / ||x' - x||`` with x,
  x' the stage's clean and adversarial inputs (Definition 1's C); stages are ``stem`` (image ->
  first block input) and every block, projection blocks included. Nan where x' = x at that stage.

Projection (shape-changing) blocks have no identity skip and are left out of Props. 2/3 (see
``capture``). Metrics (``summary``), each a mean over examples; ``<unit>`` is e.g. ``block3``:

- ``diag/examples``, ``diag/natural_acc`` (when labels are given)
- ``diag/{residual,residual_explicit,prop2_norm,prop3_smin}/{mean,<unit>}``
- ``diag/prop2_frac/{<unit>,all}``, ``diag/prop3_frac/{<unit>,all}``: fraction meeting the condition
  at that unit / at every unit at once (Theorem 1's events); ``diag/{prop2,prop3}_undecided/all``:
  examples in ``/all`` on an unconverged estimate (the true ``/all`` is about ``[all - undecided, all]``)
- ``diag/stable_frac/all``: examples meeting the condition of each unit's own scheme (Prop. 2 at
  vanilla units, Prop. 3 at IE units) at every unit: one number comparable across models
- ``diag/iters/{max,mean}``, ``diag/converged_frac``: Lanczos steps and convergence, all estimates
- ``diag/stage_gain/{stem,<block>,mean,total}`` (mean: over blocks; total: product over blocks) and
  ``diag/c_stable_frac``: examples whose every block gain is <= 1 (Definition 1 with C = 1, along x')

A metric without a defined value (e.g. stage gains when x' = x) is left out, never logged as nan.

Cost (``benchmarks/diagnostics_cost.py``, defaults: 64 examples, 50 Lanczos steps, tol 1e-3): about
5% of a natural-training CIFAR epoch at width 16, but more than a whole digits epoch (0.3 s against
0.26 s): run it with the evaluation, not every epoch.
"""
from .capture import find_stages
from .spectral import Estimate, norm_i_plus_j, smin_i_minus_j
from .stability import (DEFAULT_EXAMPLES, DEFAULT_ITERS, DEFAULT_TOL, diagnose, loader_diagnostics,
                        stability_diagnostics, unit_diagnostics)
from .summary import summary

__all__ = ["DEFAULT_EXAMPLES", "DEFAULT_ITERS", "DEFAULT_TOL", "Estimate", "diagnose", "find_stages", "loader_diagnostics",
           "norm_i_plus_j", "smin_i_minus_j", "stability_diagnostics", "summary", "unit_diagnostics"]
