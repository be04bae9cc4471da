"""``ieskips sweep plan FILE``: the trials, their epochs and an estimate of device-hours, before
anything is started or written.

Each distinct model of the sweep (architecture, width, K, gradient mode, norm, input shape, precision)
is calibrated once on the local device: the seconds of one forward+backward pass of a small batch of
random inputs (no data needed), or ``--images-per-sec`` instead of measuring. A trial's time is then
counted in such passes per image: its training method's passes per example and epoch, the per-epoch
evaluation on ``eval_subset`` examples and the final one on the test set, each attack costing its
gradient steps (a forward-only query of a gradient-free attack counted as a third of a pass).
A planning estimate, good to a small factor: it knows nothing of data loading or of a device's
warm-up, and a calibration on a CPU says little about a GPU (give the GPU's rate there).
"""
from __future__ import annotations

import time
from collections import defaultdict

import torch

from ieskips.config import TrialConfig
from ieskips.data import INFO

TRAIN_SIZE = {"digits": 1437, "mnist": 60000, "cifar10": 50000, "cifar100": 50000, "fake": 512}
TEST_SIZE = {"digits": 360, "mnist": 10000, "cifar10": 10000, "cifar100": 10000, "fake": 512}
FORWARD = 1 / 3  # a forward pass, in forward+backward passes


def method_passes(config: TrialConfig) -> float:
    """Forward+backward passes per training example: the update, plus the training attack's steps."""
    extra = {"natural": 0, "fgsm": 1, "pgd": config.train_steps, "trades": config.train_steps + FORWARD * 2}
    return 1 + extra.get(config.method, config.train_steps + 1)


def attack_passes(spec: dict) -> float:
    """Passes per example of one attack (approximate; IE solvers cost more, see the attacks' benchmark)."""
    name, restarts = spec["name"], spec.get("restarts", 1)
    if name == "transfer":
        return attack_passes(spec.get("attack", {"name": "fgsm"})) + FORWARD
    if name == "fgsm":
        return 1 + FORWARD
    if name == "square":
        return spec.get("queries", 5000) * FORWARD * restarts
    if name == "spsa":
        return spec.get("iters", 100) * spec.get("samples", 128) * FORWARD
    if name == "autoattack":
        return 4 * 100 + 5000 * FORWARD  # APGD-CE, APGD-T (x9 targets in the worst case), FAB, Square
    steps = spec.get("steps", 20) * restarts
    return steps * (15 if name == "pgd_ift" else 1) + FORWARD


def model_key(config: TrialConfig) -> tuple:
    return (config.model, config.width, config.ie_steps, config.inner_grad, config.norm, config.dataset,
            config.bf16)


def calibrate(config: TrialConfig, device: str, batch: int = 8, repeats: int = 3) -> float:
    """Images per second of one forward+backward pass of the config's model on ``device``."""
    from ieskips.training import model_for

    info = INFO[config.dataset]
    model = model_for(config).to(device)
    images = torch.rand(batch, info.in_channels, info.image_size, info.image_size, device=device)
    labels = torch.randint(0, info.num_classes, (batch,), device=device)
    seconds = []
    for _ in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=config.bf16):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return batch / sorted(seconds[1:])[len(seconds[1:]) // 2]


def trial_seconds(config: TrialConfig, rate: float) -> float:
    """Estimated seconds of one trial at ``rate`` images per second of a forward+backward pass."""
    train = config.train_subset or TRAIN_SIZE[config.dataset]
    test = config.test_subset or TEST_SIZE[config.dataset]
    scored = min(config.eval_subset or test, test)
    per_example = 1 + sum(attack_passes(s) for s in config.eval_attacks)
    passes = config.epochs * (train * method_passes(config) + scored * per_example) + test * per_example
    return passes / rate


def plan(spec, device: str, images_per_sec: float | None = None) -> dict:
    """Per distinct model: trials, epochs, images/s, hours per trial; and the sweep's device-hours
    (trial hours times the GPUs, or else the CPUs, each trial holds)."""
    configs = spec.trial_configs()
    samples = max(spec.search.samples, len(configs)) if spec.search else len(configs)
    groups = defaultdict(list)
    for config in configs:
        groups[model_key(config)].append(config)
    rows = []
    for key, members in groups.items():
        rate = images_per_sec or calibrate(members[0], device)
        hours = [trial_seconds(c, rate) / 3600 for c in members]
        rows.append({"model": "/".join(map(str, key[:4])), "trials": len(members),
                     "epochs": sorted({c.epochs for c in members}), "images_per_sec": rate,
                     "hours_per_trial": sum(hours) / len(hours), "hours": sum(hours)})
    per_trial = sum(r["hours"] for r in rows) / len(configs)
    hours = per_trial * samples  # a search runs `samples` trials drawn around the grid's points
    unit, amount = ("gpu", spec.resources.gpu) if spec.resources.gpu else ("cpu", spec.resources.cpu)
    return {"rows": rows, "trials": samples, "trial_hours": hours, "device": unit,
            "device_hours": hours * amount, "wall_hours": hours / min(spec.max_concurrent, samples)}


def lines(result: dict, spec, source: str) -> list[str]:
    out = [f"sweep {spec.name}: {result['trials']} trials; images/s from {source}",
           f"{'model':<44}{'trials':>7}{'epochs':>10}{'img/s':>10}{'h/trial':>10}"]
    out += [f"{r['model']:<44}{r['trials']:>7}{','.join(map(str, r['epochs'])):>10}{r['images_per_sec']:>10.0f}"
            f"{r['hours_per_trial']:>10.3f}" for r in result["rows"]]
    out.append(f"total: {result['trial_hours']:.3g} trial-hours = {result['device_hours']:.3g} "
               f"{result['device']}-hours ({spec.resources.gpu or spec.resources.cpu:g} {result['device']} per trial), "
               f"about {result['wall_hours']:.3g} h of wall time at {spec.max_concurrent} trials at once")
    return out
