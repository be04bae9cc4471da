"""Cost of each adaptive attack relative to PGD-20 on the same model and batch, in one run (issue 12).

PreAct ResNet-18 with IE-Skips (K = 1 by default, eval mode). Every attack runs 20 iterations (SPSA:
20 iterations of 128 queries), so a ratio is the price of its gradient (or query) source per step.
Labels are the model's own predictions (all clean examples right). SPSA stops querying an example
once it is misclassified, so its cost also depends on how fast it succeeds. Calls are interleaved
round-robin and the median of each is taken (see ie_overhead.py).

    python benchmarks/adaptive_attacks.py [--device cpu|cuda] [--setting digits|cifar] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ieskips.attacks import PGD, build_attack
from ieskips.models import build_model
from ie_overhead import time_round_robin  # benchmarks/ is run as a script directory

SETTINGS = {"digits": (4, (1, 8, 8), 64), "mnist": (8, (1, 28, 28), 128), "cifar": (16, (3, 32, 32), 128)}
EPS = 8 / 255
COMMON = {"eps": EPS, "alpha": 1 / 255, "steps": 20}


def attacks(k: int) -> dict:
    return {
        "pgd20": PGD(EPS, 1 / 255, 20),
        "pgd20_unrolled": PGD(EPS, 1 / 255, 20, inner_grad="unrolled"),
        "pgd20_solver_k0": build_attack({"name": "pgd_solver", **COMMON, "ie_steps": 0}),
        f"pgd20_solver_k{2 * k}": build_attack({"name": "pgd_solver", **COMMON, "ie_steps": 2 * k}),
        "pgd20_solver_gamma0.5x": build_attack({"name": "pgd_solver", **COMMON, "ie_step_size_scale": 0.5}),
        "pgd20_solver_k0_keeptarget": build_attack({"name": "pgd_solver", **COMMON, "ie_steps": 0, "keep": "target"}),
        "pgd20_ift_tol0.0001": build_attack({"name": "pgd_ift", **COMMON}),
        "pgd20_best": build_attack({"name": "pgd_best", **COMMON}),
        "feature20": build_attack({"name": "feature", **COMMON}),
        "spsa20": build_attack({"name": "spsa", "eps": EPS, "iters": 20}),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--setting", choices=list(SETTINGS), default="digits")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--ie-steps", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    width, shape, batch = SETTINGS[args.setting]
    batch = args.batch or batch
    torch.manual_seed(0)
    model = build_model("preact_resnet18", num_classes=10, in_channels=shape[0], width=width,
                        ie_steps=args.ie_steps).to(device).eval()
    x = torch.rand(batch, *shape, device=device)
    with torch.no_grad():
        y = model(x).argmax(1)  # every example right at first, so SPSA's early stop cannot flatter it
    tasks = {name: (lambda a=a: a(model, x, y)) for name, a in attacks(args.ie_steps).items()}
    times = time_round_robin(tasks, device, args.rounds)
    ratios = {name: t / times["pgd20"] for name, t in times.items()}
    result = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "setting": args.setting, "width": width, "shape": shape, "batch": batch, "ie_steps": args.ie_steps,
              "rounds": args.rounds, "seconds": times, "over_pgd20": ratios}
    print(f"adaptive attacks, PreAct ResNet-18 width {width}, {shape}, batch {batch}, K {args.ie_steps}, {device}")
    for name, t in times.items():
        print(f"  {name:<28}{t:8.3f} s  x{ratios[name]:6.2f}")
    out = Path(__file__).with_name("results") / "adaptive_attacks.json"
    out.parent.mkdir(exist_ok=True)
    runs = json.loads(out.read_text()) if out.exists() else {}  # one entry per setting, device and K
    runs[f"{args.setting}_{device.type}_k{args.ie_steps}"] = result
    out.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
