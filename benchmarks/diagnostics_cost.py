"""Cost of the stability diagnostics relative to one training epoch, measured in one run (issue 13).

PreAct ResNet-18 IE-1 (gamma 0.05, detached), on digits-sized input (width 8, 1x8x8) and CIFAR-sized
input (width 16, 3x32x32). Diagnostics: ``stability_diagnostics`` on ``--examples`` test examples
with adversarial inputs given (the attack is the evaluation's cost, not counted here), at the
default ``iters``/``tol``, with ``conditions="both"``, and in the worst case (``tol=0``: every
Lanczos step runs). Epoch: a bare natural-training SGD loop (the cheapest method, so the ratio is
an upper bound for adversarial training). Digits: the full epoch, 1437 images in batches of 64 (23
steps). CIFAR-10: the median train step at batch 128, times 391 steps (50000 images). Variants are
timed round-robin (median over rounds) so that drift on a shared machine hits all alike.

    python benchmarks/diagnostics_cost.py [--device cpu|cuda] [--rounds 3] [--examples 64] [--iters 50]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ieskips.diagnostics import DEFAULT_EXAMPLES, DEFAULT_ITERS, DEFAULT_TOL, stability_diagnostics
from ieskips.models import build_model

# name: (width, input shape, train batch, images per epoch, steps timed per round)
SETTINGS = {"digits": (8, (1, 8, 8), 64, 1437, 23), "cifar": (16, (3, 32, 32), 128, 50000, 3)}
VARIANTS = {"default": {}, "both": {"conditions": "both"}, "worst": {"tol": 0.0}}  # beside --iters


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_setting(name, examples, iters, device):
    width, shape, batch, _, steps = SETTINGS[name]
    torch.manual_seed(0)
    model = build_model("preact_resnet18", num_classes=10, in_channels=shape[0], width=width,
                        ie_steps=1, ie_step_size=0.05).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xs, ys = torch.rand(steps, batch, *shape, device=device), torch.randint(0, 10, (steps, batch), device=device)
    xt = torch.rand(examples, *shape, device=device)
    yt = torch.randint(0, 10, (examples,), device=device)
    adv = (xt + 0.03 * torch.randn_like(xt).sign()).clamp(0, 1)
    last_batch = batch if name != "digits" else 1437 - 22 * 64  # the digits epoch ends on a short batch

    def train():
        model.train()
        for i in range(steps):
            n = last_batch if i == steps - 1 else batch
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xs[i, :n]), ys[i, :n]).backward()
            opt.step()

    def diagnose(options):
        return lambda: stability_diagnostics(model, xt, yt, adv, iters=iters, **options)

    return train, {v: diagnose(o) for v, o in VARIANTS.items()}


def time_round_robin(tasks, device, rounds):
    """One warm-up call each, then ``rounds`` rounds of one call each; median seconds and last result."""
    last = {name: fn() for name, fn in tasks.items()}
    samples = {name: [] for name in tasks}
    for _ in range(rounds):
        for name, fn in tasks.items():
            _sync(device)
            start = time.perf_counter()
            last[name] = fn()
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}, last


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES)
    parser.add_argument("--iters", type=int, default=DEFAULT_ITERS)
    args = parser.parse_args()
    device = torch.device(args.device)
    results = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "examples": args.examples, "iters": args.iters, "tol": DEFAULT_TOL, "rounds": args.rounds,
               "settings": {}}
    print(f"diagnostics on {args.examples} examples (iters {args.iters}, tol {DEFAULT_TOL}) vs one epoch, {device}")
    print(f"{'setting':<8}{'epoch s':>9}" + "".join(f"{v + ' s':>11}{'ratio':>7}" for v in VARIANTS)
          + f"{'iters':>7}{'conv':>6}")
    for name, (_, _, batch, images, steps) in SETTINGS.items():
        train, diagnose = make_setting(name, args.examples, args.iters, device)
        times, last = time_round_robin({"train": train, **diagnose}, device, args.rounds)
        epoch = times["train"] * (-(-images // batch)) / steps
        row = {"epoch_s": epoch, "epoch_steps_timed": steps, "epoch_steps": -(-images // batch)}
        for variant in VARIANTS:
            row[f"{variant}_s"] = times[variant]
            row[f"{variant}_ratio"] = times[variant] / epoch
        row["iters_mean"] = last["default"]["metrics"]["diag/iters/mean"]
        row["converged_frac"] = last["default"]["metrics"]["diag/converged_frac"]
        results["settings"][name] = row
        print(f"{name:<8}{epoch:>9.2f}" + "".join(f"{row[v + '_s']:>11.2f}{row[v + '_ratio']:>7.1%}" for v in VARIANTS)
              + f"{row['iters_mean']:>7.1f}{row['converged_frac']:>6.2f}")
    print("target: default ratio <= 10%")
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    (out / "diagnostics_cost.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
