"""Metric labels of the adaptive attacks: from the spec with the attack's defaults filled in, so
that one attack has one label however its spec is written, and specs that differ get different ones."""
from __future__ import annotations

import inspect


def _resolved(cls, spec: dict) -> dict:
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **{k: v for k, v in spec.items() if k != "name"}}


def adaptive_label(cls, spec: dict) -> str:
    """``pgd20_solver_k0``, ``pgd20_solver_gamma0.5x``, ``pgd20_ift_tol0.0001``, ``pgd20_best``,
    ``feature50``, ``spsa100``; suffixes for non-default loss, restarts, keep, inner_grad, layer."""
    s = _resolved(cls, spec)
    name = spec["name"]
    if name == "spsa":
        label = f"spsa{s['iters']}_n{s['samples']}" if s["samples"] != 128 else f"spsa{s['iters']}"
        return label + ("_ce" if s["loss"] == "ce" else "")
    if name == "feature":
        return f"feature{s['steps']}" + (f"_{s['layer']}" if s["layer"] != "stem" else "")
    label = f"pgd{s['steps']}_" + name.removeprefix("pgd_")
    if name == "pgd_solver":
        label += (f"_k{s['ie_steps']}" if s["ie_steps"] is not None else "") + (
            f"_gamma{s['ie_step_size_scale']:g}x" if s["ie_step_size_scale"] is not None else "")
    if name == "pgd_ift":
        label += f"_tol{s['tol']:g}" + (f"_it{s['max_iter']}" if s["max_iter"] != 30 else "")
    if s.get("restarts", 1) != 1:
        label += f"_r{s['restarts']}"
    if s.get("keep", "last") not in ("last",) and name != "pgd_best":
        label += f"_keep{s['keep']}"
    if s.get("loss", "ce") != "ce":
        label += f"_{s['loss']}"
    if s.get("inner_grad"):
        label += f"_{s['inner_grad']}"
    return label
