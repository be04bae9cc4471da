"""The gradient-masking audit (Carlini et al. 2019, "On Evaluating Adversarial Robustness",
https://arxiv.org/abs/1902.06705; Athalye, Carlini & Wagner 2018, https://arxiv.org/abs/1802.00420).

An IE-Skip forward runs gradient descent inside every block: exactly the kind of model whose
robustness can be an artefact of gradients that do not describe it. Each check below is one of the
literature's sanity tests, reported as pass/flag with its numbers; the credible robust accuracy is
the per-example worst case over every attack that ran (white-box in both gradient modes, Square,
transfer), never the best-looking single number.

For a model that solves something in its forward (IE-Skips) the audit adds: the unrolled input
gradient against a float64 finite difference (``gradient_exact``), the same logits however the model
is called (``forward_consistent``), adaptive attacks through other solvers and the exact implicit
step (``adaptive_not_better``), robustness and inner residuals under other test-time solvers
(``solver_robustness``, ``adversarial_residual``) and AutoAttack's own sanity flags
(``autoattack_flags``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attacks import FGSM, IFTPGD, PGD, SPSA, FeatureSpace, SolverPGD, Square, Transfer
from .attacks.feature import _Features
from .errors import ConfigError
from .evaluation import accuracies, correct_masks
from .models.ie_skip import ExplicitEuler, IESkip, has_ie_skips
from .audit_probes import (Check, autoattack_flags, forward_consistency, gradient_exactness, probe_batch,
                           solver_sensitivity, static_comparison)


@dataclass(frozen=True)
class AuditReport:
    checks: list
    accuracies: dict  # every attack's robust accuracy, natural_acc, and credible_robust_acc
    credible: str  # which number to report, and why

    @property
    def flagged(self) -> list:
        return [c for c in self.checks if c.passed is False]

    def lines(self) -> list[str]:
        out = [f"{'PASS' if c.passed else 'n/a ' if c.passed is None else 'FLAG'}  {c.name}: {c.detail}"
               for c in self.checks]
        # An unanswered flag (AutoAttack's included) makes the number provisional (RobustBench's rule).
        state = f"PROVISIONAL until these flags are answered: {', '.join(c.name for c in self.flagged)}; " \
            if self.flagged else ""
        return out + [f"credible robust accuracy: {self.accuracies['credible_robust_acc']:.4f} ({state}{self.credible})"]


def audit(model: nn.Module, loader, device="cpu", *, eps: float = 8 / 255, steps=(10, 20, 50, 100),
          restarts: int = 5, square_queries: int = 1000, surrogate: nn.Module | None = None,
          large_eps: float = 0.5, tol: float = 0.02, progress: bool | None = None, adaptive: bool = True,
          solvers: bool = True, spsa_iters: int = 0, probe_examples: int = 8) -> AuditReport:
    """Run the checks on ``loader``'s examples. ``tol`` is the accuracy slack (fraction) of each check.

    ``adaptive``: for an IE model, also PGD through the exact implicit step and through 2K inner
    steps, and the feature-space attack. ``solvers``: robustness under other test-time solvers.
    ``spsa_iters`` > 0 adds SPSA (128 queries per iteration and example; off by default for its cost).
    ``probe_examples``: how many examples of the first batch the gradient and forward probes use.
    """
    ie = has_ie_skips(model)
    if surrogate is None and ie:
        surrogate = ExplicitEuler(model)
    pgd = {k: PGD(eps, 2.5 * eps / k, k) for k in steps}
    k_ref = 20 if 20 in pgd else steps[0]
    fractions = (0.25, 0.5, 1.0, 2.0, 4.0)
    attacks = {"fgsm": FGSM(eps), **{f"pgd{k}": a for k, a in pgd.items()},
               f"pgd{k_ref}_restarts{restarts}": PGD(eps, 2.5 * eps / k_ref, k_ref, restarts=restarts),
               f"pgd{k_ref}_cw": PGD(eps, 2.5 * eps / k_ref, k_ref, loss="cw"),
               **{f"pgd{k_ref}_eps{f:g}x": PGD(min(1.0, f * eps), 2.5 * min(1.0, f * eps) / k_ref, k_ref)
                  for f in fractions if f != 1.0},
               "pgd_large_eps": PGD(large_eps, 2.5 * large_eps / k_ref, k_ref),
               "square": Square(eps, queries=square_queries)}
    if ie:
        attacks[f"pgd{k_ref}_unrolled"] = PGD(eps, 2.5 * eps / k_ref, k_ref, inner_grad="unrolled")
    if surrogate is not None:
        attacks["transfer"] = Transfer(surrogate.to(device), PGD(eps, 2.5 * eps / k_ref, k_ref))
    extra = _adaptive_attacks(model, eps, k_ref) if adaptive and ie else {}
    if spsa_iters:
        extra["spsa"] = SPSA(eps, iters=spsa_iters)
    attacks.update(extra)
    masks = correct_masks(model, loader, attacks, device, progress)
    acc = accuracies(masks)
    at_eps = [n for n in masks if n not in ("natural", "pgd_large_eps") and "eps" not in n]
    whitebox = [n for n in at_eps if n not in ("square", "transfer", "spsa")]
    credible = torch.stack([masks[n] for n in at_eps]).all(0).float().mean().item()
    acc["credible_robust_acc"] = credible
    checks = _checks(masks, acc, whitebox, k_ref, restarts, fractions, steps, ie, tol)
    checks.append(_adaptive_check(masks, whitebox, list(extra), tol))
    images, labels = probe_batch(loader, device, probe_examples)
    if ie:
        standard = {n: attacks[n] for n in at_eps if n not in extra and n not in ("transfer", f"pgd{k_ref}_unrolled")}
        checks.append(static_comparison(model, loader, device, standard, credible, images, tol=tol, progress=progress))
        acc["twin_credible_robust_acc"] = checks[-1].numbers["twin_credible_robust_acc"]
    adv = PGD(eps, 2.5 * eps / k_ref, k_ref)(model, images, labels)
    checks += [gradient_exactness(model, images, labels, adversarial=adv), forward_consistency(model, images),
               autoattack_flags(model, images, labels)]
    if solvers and ie:
        solver_checks, solver_acc = solver_sensitivity(model, loader, device, eps=eps, steps=k_ref, tol=tol,
                                                       probe=(images, adv), progress=progress)
        checks += solver_checks
        acc.update(solver_acc)
    else:
        checks += [Check(n, None, "the model has no IE-Skips" if not ie else "solver checks not asked for", {})
                   for n in ("solver_robustness", "adversarial_residual")]
    return AuditReport(checks, acc, "per-example worst case over " + ", ".join(at_eps) + f" at eps {eps:.4g}")


def _adaptive_attacks(model, eps, k) -> dict:
    """The attacks aimed at an IE forward: the exact implicit step's gradient, a better inner solve
    and the features before the IE stages (when the model has a ``stem``)."""
    skip = next(m for m in model.modules() if isinstance(m, IESkip) and m.steps > 0)
    alpha = 2.5 * eps / k
    out = {f"pgd{k}_ift": IFTPGD(eps, alpha, k),
           f"pgd{k}_solver_k{2 * skip.steps}": SolverPGD(eps, alpha, k, ie_steps=2 * skip.steps, keep="target")}
    try:
        _Features(model, "stem")
        out[f"feature{k}"] = FeatureSpace(eps, alpha, k)
    except ConfigError:
        pass
    return out


def _adaptive_check(masks, whitebox, adaptive, tol) -> Check:
    if not adaptive:
        return Check("adaptive_not_better", None, "no adaptive attacks ran (no IE-Skips, no SPSA)", {})
    standard = [n for n in whitebox if n not in adaptive]
    right = torch.stack([masks[n] for n in standard]).all(0)
    broken = {n: int((right & ~masks[n]).sum()) for n in adaptive}
    n = len(right)
    return Check("adaptive_not_better", max(broken.values()) <= tol * n,
                 f"examples that an adaptive attack breaks but no standard white-box attack does: {broken} of {n} "
                 "(many: the model's own gradients hide its weakness; report the worst case)", broken)


def _checks(masks, acc, whitebox, k, restarts, fractions, steps, ie, tol) -> list:
    a = lambda name: acc[f"robust_acc/{name}"]  # noqa: E731
    n = len(masks["natural"])
    curve = [acc["natural_acc"]] + [a(f"pgd{k}_eps{f:g}x") if f != 1.0 else a(f"pgd{k}") for f in fractions]
    rises = max(b - c for b, c in zip(curve[1:], curve[:-1]))
    wb_right = torch.stack([masks[w] for w in whitebox]).all(0)
    square_only = int((wb_right & ~masks["square"]).sum())
    checks = [
        Check("eps_monotone", rises <= tol and a("pgd_large_eps") <= 0.05,
              f"PGD accuracy over eps x {(0,) + fractions} is {_fmt(curve)}; at eps 0.5 it is "
              f"{a('pgd_large_eps'):.3f} (should fall steadily and reach about 0)",
              {"curve": curve, "large_eps_acc": a("pgd_large_eps")}),
        Check("pgd_beats_fgsm", a(f"pgd{k}") <= a("fgsm") + tol,
              f"PGD-{k} {a(f'pgd{k}'):.3f} vs FGSM {a('fgsm'):.3f} (iterative must not do worse)",
              {"pgd": a(f"pgd{k}"), "fgsm": a("fgsm")}),
        Check("steps_converge", a(f"pgd{steps[-2]}") - a(f"pgd{steps[-1]}") <= tol,
              "PGD accuracy by steps " + ", ".join(f"{s}: {a(f'pgd{s}'):.3f}" for s in steps)
              + " (more steps must change little at the end)",
              {f"pgd{s}": a(f"pgd{s}") for s in steps}),
        Check("restarts_change_little", a(f"pgd{k}") - a(f"pgd{k}_restarts{restarts}") <= tol,
              f"PGD-{k} with 1 start {a(f'pgd{k}'):.3f}, with {restarts} restarts "
              f"{a(f'pgd{k}_restarts{restarts}'):.3f}", {}),
        Check("square_not_better", square_only <= 0.002 * n,
              f"Square (gradient-free) fools {square_only} of {n} examples that every white-box attack "
              "missed (must be about none)", {"square_only": square_only, "square": a("square")}),
    ]
    if "transfer" in masks:
        checks.append(Check("transfer_weaker", a("transfer") >= min(a(w) for w in whitebox) - tol,
                            f"transfer {a('transfer'):.3f} vs best white-box {min(a(w) for w in whitebox):.3f} "
                            "(black-box must do worse)", {"transfer": a("transfer")}))
    else:
        checks.append(Check("transfer_weaker", None, "no surrogate model given", {}))
    if ie:
        gap = a(f"pgd{k}") - a(f"pgd{k}_unrolled")
        checks.append(Check("unrolled_gradients", gap <= tol,
                            f"PGD-{k} through the model's own inner gradient {a(f'pgd{k}'):.3f} vs through "
                            f"the unrolled inner steps {a(f'pgd{k}_unrolled'):.3f} (a large gap means the "
                            "trained mode masks gradients)", {"gap": gap}))
    else:
        checks.append(Check("unrolled_gradients", None, "the model has no IE-Skips", {}))
    return checks


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"
