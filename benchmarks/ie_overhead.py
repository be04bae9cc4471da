"""IE-Skip cost relative to the vanilla network, measured in one run (issue 2).

For PreAct ResNet-18 at width 8 (1x28x28) and 16 (3x32x32), batch 128: forward (no_grad), train step
(forward + backward + SGD step) and input-gradient step (what an attack does) for vanilla and for IE
with K = 1, 2, 3 in both gradient modes. Variants are timed round-robin (one call each per round,
median over rounds) so that drift on a shared machine hits all of them alike. Peak memory of a train
step: the CUDA allocator's peak on GPU; on CPU the peak RSS growth of a fresh child process.

    python benchmarks/ie_overhead.py [--device cpu|cuda] [--rounds 7] [--batch 128]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ieskips.models import build_model

SETTINGS = {"width8_mnist": (8, (1, 28, 28)), "width16_cifar": (16, (3, 32, 32))}
VARIANTS = {"vanilla": (0, "detached"),
            **{f"{m}_K{k}": (k, m) for m in ("detached", "unrolled") for k in (1, 2, 3)}}
TASKS = ("forward", "train_step", "input_grad")


def make_tasks(setting, variant, batch, device):
    width, shape = SETTINGS[setting]
    k, mode = VARIANTS[variant]
    torch.manual_seed(0)
    model = build_model("preact_resnet18", in_channels=shape[0], width=width, ie_steps=k,
                        ie_step_size=0.05, inner_grad=mode).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.rand(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def forward():
        with torch.no_grad():
            model(x)

    def train_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def input_grad():
        xa = x.clone().requires_grad_()
        torch.autograd.grad(F.cross_entropy(model(xa), y), xa)

    return {"forward": forward, "train_step": train_step, "input_grad": input_grad}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(tasks, device, rounds):
    """tasks: {name: fn}. One warm-up call each, then ``rounds`` rounds of one call each."""
    for fn in tasks.values():
        fn()
    samples = {name: [] for name in tasks}
    for _ in range(rounds):
        for name, fn in tasks.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def _status_kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _child_peak_rss(setting, variant, batch, queue):
    """Peak RSS growth of one train step in a fresh process (VmHWM reset just before it)."""
    train = make_tasks(setting, variant, batch, torch.device("cpu"))["train_step"]
    base = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)
    train()
    queue.put((_status_kb("VmHWM") - base) / 1024)


def peak_train_mb(setting, variant, batch, device):
    if device.type == "cuda":
        train = make_tasks(setting, variant, batch, device)["train_step"]
        train()
        torch.cuda.reset_peak_memory_stats(device)
        train()
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_peak_rss, args=(setting, variant, batch, queue))
    proc.start()
    result = queue.get(timeout=300)
    proc.join()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    device = torch.device(args.device)
    results = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "batch": args.batch, "rounds": args.rounds, "settings": {}}
    for setting, (width, shape) in SETTINGS.items():
        all_tasks = {(v, t): fn for v in VARIANTS for t, fn in make_tasks(setting, v, args.batch, device).items()}
        times = time_round_robin(all_tasks, device, args.rounds)
        rows = {v: {t: times[(v, t)] for t in TASKS} for v in VARIANTS}
        print(f"\n{setting}: PreAct ResNet-18, width {width}, input {shape}, batch {args.batch}, {device}")
        print(f"{'variant':<13}{'forward':>9}{'train':>9}{'in-grad':>9}{'train s':>9}{'peak MB':>9}")
        for variant, row in rows.items():
            row.update({f"{t}_ratio": row[t] / rows["vanilla"][t] for t in TASKS})
            row["train_peak_mb"] = peak_train_mb(setting, variant, args.batch, device)
            print(f"{variant:<13}" + "".join(f"{row[t + '_ratio']:>8.2f}x" for t in TASKS)
                  + f"{row['train_step']:>9.3f}{row['train_peak_mb']:>9.0f}")
        results["settings"][setting] = rows
    w16 = results["settings"]["width16_cifar"]
    print(f"\ntargets (width 16, train step): detached K=1 {w16['detached_K1']['train_step_ratio']:.2f}x "
          f"(<= 1.6), unrolled K=1 {w16['unrolled_K1']['train_step_ratio']:.2f}x (<= 3.5)")
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    (out / f"ie_overhead_{device.type}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
