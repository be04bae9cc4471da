"""PGD-20 speed against torchattacks and against the floor, measured in one run (issue 3).

PreAct ResNet-18 (width 16, CIFAR-sized input, batch 128, eval mode): our ``PGD`` over torchattacks'
``PGD`` on the same model and batch, and over 20 x (forward + input-gradient backward), the work any
PGD-20 must do. Calls are interleaved round-robin and the median of each is taken.

    python benchmarks/pgd_speed.py [--device cpu|cuda] [--rounds 5] [--ie-steps 0]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
import torchattacks

from ieskips.attacks import PGD
from ieskips.models import build_model
from ie_overhead import time_round_robin  # benchmarks/ is run as a script directory


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ie-steps", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model("preact_resnet18", width=16, ie_steps=args.ie_steps).to(device).eval()
    x, y = torch.rand(128, 3, 32, 32, device=device), torch.randint(0, 10, (128,), device=device)
    ours = PGD(8 / 255, 1 / 255, 20)
    theirs = torchattacks.PGD(model, eps=8 / 255, alpha=1 / 255, steps=20, random_start=True)

    def floor():
        for _ in range(20):
            xa = x.clone().requires_grad_()
            torch.autograd.grad(F.cross_entropy(model(xa), y), xa)

    times = time_round_robin({"ours": lambda: ours(model, x, y), "torchattacks": lambda: theirs(x, y),
                              "floor": floor}, device, args.rounds)
    result = {"device": str(device), "ie_steps": args.ie_steps, "seconds": times,
              "ours_over_torchattacks": times["ours"] / times["torchattacks"],
              "ours_over_floor": times["ours"] / times["floor"]}
    print(f"PGD-20, PreAct ResNet-18 width 16, batch 128, ie_steps {args.ie_steps}, {device}")
    for name, t in times.items():
        print(f"  {name:<13}{t:8.3f} s")
    print(f"ours / torchattacks: {result['ours_over_torchattacks']:.3f} (target <= 1.05)")
    print(f"ours / floor (20 x forward+backward): {result['ours_over_floor']:.3f}")
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    (out / f"pgd_speed_{device.type}_k{args.ie_steps}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
