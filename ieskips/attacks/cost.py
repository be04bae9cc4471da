"""What an attack costs, counted in forward+backward passes per example: enough to pick the cheapest
gradient attack for per-epoch monitoring and to plan a sweep where no calibration is at hand (``ieskips
sweep plan --images-per-sec``; a calibration measures the attacks themselves)."""
from __future__ import annotations

FORWARD = 1 / 3  # a forward pass, in forward+backward passes
GRADIENT_FREE = ("square", "spsa")
UNROLLED = 2.0  # a backward through the unrolled inner steps is second order: about twice a plain one
SURVIVING = 0.5  # a query-based attack stops on the examples it has broken: assume half survive it all


def attack_passes(spec: dict) -> float:
    """Passes per example of one attack (approximate; IE solvers cost more, see the attacks' benchmark)."""
    name, restarts = spec["name"], spec.get("restarts", 1)
    if name == "transfer":
        return attack_passes(spec.get("attack", {"name": "fgsm"})) + FORWARD
    if name == "square":
        return spec.get("queries", 5000) * FORWARD * restarts * SURVIVING
    if name == "spsa":
        return spec.get("iters", 100) * spec.get("samples", 128) * FORWARD
    if name == "autoattack":
        return 4 * 100 + 5000 * FORWARD * SURVIVING  # APGD-CE, APGD-T (x9 targets in the worst case), FAB, Square
    steps = 1 if name == "fgsm" else spec.get("steps", 20) * restarts
    per_step = (15 if name == "pgd_ift" else 1) * (UNROLLED if spec.get("inner_grad") == "unrolled" else 1)
    return steps * per_step + FORWARD


def cheapest_gradient_attack(specs) -> dict | None:
    """The spec with the fewest passes among gradient attacks on the model itself (no transfer, no
    gradient-free attack); None when there is none."""
    candidates = [s for s in specs if s["name"] not in (*GRADIENT_FREE, "transfer", "autoattack")]
    return min(candidates, key=attack_passes, default=None)
