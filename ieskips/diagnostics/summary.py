"""Per-example diagnostics -> flat ``{metric name: float}`` for MLflow (names in the package doc)."""
from __future__ import annotations

import math

import torch

QUANTITIES = ("residual", "residual_explicit", "prop2_norm", "prop3_smin")
# Prop. 2 holds at a vanilla block when ||I + J||_2 <= 1, Prop. 3 at an IE block when sigma_min(I - J) >= 1.
CONDITIONS = {"prop2": ("prop2_norm", lambda s: s <= 1), "prop3": ("prop3_smin", lambda s: s >= 1)}


def _mean(values: torch.Tensor) -> float:
    return values.double().nanmean().item() if values.numel() else math.nan


def _quantities(blocks: dict) -> dict:
    out = {}
    for key in QUANTITIES:
        per_unit = {unit: q[key] for unit, q in blocks.items() if key in q}
        if per_unit:
            out[f"diag/{key}/mean"] = _mean(torch.cat(list(per_unit.values())))
            out.update({f"diag/{key}/{unit}": _mean(v) for unit, v in per_unit.items()})
    return out


def _fractions(blocks: dict) -> dict:
    """Per unit the fraction of examples meeting its condition; ``/all``: every unit meets it
    (the events of Theorem 1). ``<cond>_undecided/all``: examples counted in ``/all`` on an
    unconverged estimate. Ritz values err towards meeting a condition, never away from it, so the
    fractions are upper bounds and the true ``/all`` is about ``[all - undecided, all]``."""
    out = {}
    for cond, (key, holds) in CONDITIONS.items():
        units = {unit: q for unit, q in blocks.items() if key in q}
        if not units:
            continue
        masks = {unit: holds(q[key]) for unit, q in units.items()}
        every = torch.stack(list(masks.values())).all(0)
        out[f"diag/{cond}_frac/all"] = _mean(every.float())
        out.update({f"diag/{cond}_frac/{unit}": _mean(m.float()) for unit, m in masks.items()})
        unsure = [~q[f"{cond}_converged"] for q in units.values() if f"{cond}_converged" in q]
        if unsure:
            out[f"diag/{cond}_undecided/all"] = _mean((every & torch.stack(unsure).any(0)).float())
    return out


def _own_condition(blocks: dict) -> dict:
    """``diag/stable_frac/all``: examples meeting, at every unit, the condition of that unit's own scheme
    (Prop. 2 at vanilla units, Prop. 3 at IE ones): one number for a vanilla and an IE model alike."""
    masks = []
    for q in blocks.values():
        cond = "prop3" if "prop3_smin" in q and (q.get("steps", 0) > 0 or "prop2_norm" not in q) else "prop2"
        key, holds = CONDITIONS[cond]
        if key in q:
            masks.append(holds(q[key]))
    return {"diag/stable_frac/all": _mean(torch.stack(masks).all(0).float())} if masks else {}


def _convergence(blocks: dict) -> dict:
    iters = [q[f"{c}_iters"] for q in blocks.values() for c in CONDITIONS if f"{c}_iters" in q]
    if not iters:
        return {}
    done = [q[f"{c}_converged"] for q in blocks.values() for c in CONDITIONS if f"{c}_converged" in q]
    iters = torch.cat(iters)
    return {"diag/iters/max": float(iters.max()), "diag/iters/mean": _mean(iters.float()),
            "diag/converged_frac": _mean(torch.cat(done).float())}


def _gains(gains: dict) -> dict:
    if not gains:
        return {}
    out = {f"diag/stage_gain/{stage}": _mean(g) for stage, g in gains.items()}
    blocks = torch.stack([g for stage, g in gains.items() if stage != "stem"])
    out["diag/stage_gain/mean"] = _mean(blocks)
    out["diag/stage_gain/total"] = _mean(blocks.prod(0))
    defined = ~blocks.isnan().any(0)
    out["diag/c_stable_frac"] = _mean((blocks[:, defined] <= 1).all(0).float())
    return out


def summary(result: dict) -> dict[str, float]:
    """Scalar metrics of a diagnostics result; a metric with no defined value (nan) is left out."""
    out = {}
    if result.get("correct") is not None:
        out["diag/natural_acc"] = _mean(result["correct"].float())
    out.update(_quantities(result["blocks"]))
    out.update(_fractions(result["blocks"]))
    out.update(_own_condition(result["blocks"]))
    out.update(_convergence(result["blocks"]))
    out.update(_gains(result["stage_gain"]))
    tensors = [v for q in result["blocks"].values() for v in q.values() if torch.is_tensor(v)]
    tensors += list(result["stage_gain"].values())
    if tensors:
        out["diag/examples"] = float(len(tensors[0]))
    return {name: value for name, value in out.items() if not math.isnan(value)}
