"""``ieskips sweep plan FILE``: the trials, their epochs and an estimate of device-hours, before
anything is started or written.

A trial's time is counted phase by phase, in seconds per example: the training step (its method's
attack included; natural during warm-up epochs), the per-epoch monitoring (a clean forward and the
monitor attacks on ``eval_subset`` examples), the checkpoint selection on the held-out split, and the
final evaluation (every attack on the test set, or on its ``subset``; twice with a selected checkpoint).
Each distinct model of the sweep is calibrated here on random inputs at the trial's own batch size
(no data needed): the training step itself, a forward, and each attack run for two of its steps and
scaled by its steps (a query attack: a forward per query on the examples it has not broken yet, of
which it is assumed half survive: ``ieskips.attacks.cost.SURVIVING``). With ``--images-per-sec``
instead, each phase is counted in forward+backward passes at that rate (``ieskips.attacks.cost``).
It knows nothing of data loading or a device's warm-up; ``benchmarks/plan_accuracy.py`` checks it
against a measured trial.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import torch

from ieskips.attacks import attack_label, build_attack
from ieskips.attacks.cost import FORWARD, SURVIVING, attack_passes
from ieskips.config import TrialConfig
from ieskips.data import INFO

TRAIN_SIZE = {"digits": 1437, "mnist": 60000, "cifar10": 50000, "cifar100": 50000, "fake": 512}
TEST_SIZE = {"digits": 360, "mnist": 10000, "cifar10": 10000, "cifar100": 10000, "fake": 512}
CALIBRATION_STEPS = 2  # an attack with steps is timed at this many and scaled linearly


@dataclass(frozen=True)
class Costs:
    """Seconds per example of each phase of a trial, on one device."""

    train: float  # one training step of the trial's method
    warmup: float  # one natural training step (the warm-up epochs)
    forward: float  # a clean forward in eval mode
    attacks: dict  # attack label -> seconds per attacked example


def method_passes(config: TrialConfig) -> float:
    """Forward+backward passes per training example: the update, plus the training attack's steps."""
    extra = {"natural": 0, "fgsm": 1, "pgd": config.train_steps, "trades": config.train_steps + FORWARD * 2}
    return 1 + extra.get(config.method, config.train_steps + 1) + (FORWARD if config.clean_loss_weight else 0)


def _specs(config: TrialConfig) -> list[dict]:
    return [*config.eval_attacks, *config.monitors(), *([config.select_attack] if config.val_size else [])]


def costs_at_rate(config: TrialConfig, rate: float) -> Costs:
    """Each phase counted in forward+backward passes at ``rate`` images per second."""
    return Costs(method_passes(config) / rate, 1 / rate, FORWARD / rate,
                 {attack_label(s): attack_passes(s) / rate for s in _specs(config)})


def calibrate(config: TrialConfig, device: str, repeats: int = 2) -> Costs:
    """Each phase measured on ``device`` at the trial's batch size (random inputs, a fresh model)."""
    from ieskips.training import model_for
    from ieskips.training.methods import METHODS

    info, batch = INFO[config.dataset], config.batch_size
    model = model_for(config).to(device)
    images = torch.rand(batch, info.in_channels, info.image_size, info.image_size, device=device)
    labels = torch.randint(0, info.num_classes, (batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)  # what is timed is the step, not the values

    def step(method):
        def run():
            model.train()
            with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=config.bf16):
                loss, _ = method(model, images, labels, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return _per_example(run, batch, device, repeats)

    def forward():
        model.eval()
        with torch.no_grad():
            model(images)

    train = step(METHODS[config.method])
    warmup = step(METHODS["natural"]) if config.warmup_epochs and config.method != "natural" else train
    ahead = _per_example(forward, batch, device, repeats)
    attacks = {attack_label(s): _attack_cost(s, model, images, labels, device, ahead, repeats) for s in _specs(config)}
    return Costs(train, warmup, ahead, attacks)


def _attack_cost(spec: dict, model, images, labels, device: str, forward: float, repeats: int) -> float:
    """Seconds per example of one attack: query attacks by their forwards, attacks with steps at a few
    steps scaled, the rest (transfer, AutoAttack) counted in passes of a timed forward."""
    name = spec["name"]
    if name == "square":
        return forward * (1 + spec.get("queries", 5000) * spec.get("restarts", 1) * SURVIVING)
    if name in ("transfer", "autoattack", "spsa"):
        return attack_passes(spec) * forward / FORWARD
    steps = spec.get("steps", 1 if name == "fgsm" else 20) * spec.get("restarts", 1)
    short = {k: v for k, v in spec.items() if k not in ("subset", "label")}
    if name != "fgsm":
        short.update(steps=min(steps, CALIBRATION_STEPS), **({"restarts": 1} if "restarts" in spec else {}))
    attack = build_attack(short)
    seconds = _per_example(lambda: attack(model, images, labels), len(labels), device, repeats)
    return seconds * steps / (1 if name == "fgsm" else min(steps, CALIBRATION_STEPS))


def _per_example(fn, batch: int, device: str, repeats: int) -> float:
    """The median seconds of ``fn`` (after one warm-up call) divided by the batch."""
    seconds = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        fn()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    timed = sorted(seconds[1:])
    return timed[len(timed) // 2] / batch


def phases(config: TrialConfig, costs: Costs) -> dict[str, float]:
    """Estimated seconds of each phase of one trial."""
    train = (config.train_subset or TRAIN_SIZE[config.dataset]) - config.val_size
    test = config.test_subset or TEST_SIZE[config.dataset]
    scored = min(config.eval_subset or test, test)
    warm = min(config.warmup_epochs, config.epochs)
    out = {"train": train * ((config.epochs - warm) * costs.train + warm * costs.warmup),
           "monitor": config.epochs * scored * (costs.forward + sum(costs.attacks[attack_label(s)]
                                                                    for s in config.monitors()))}
    if config.val_size:
        competing = config.epochs - min(config.select_after, config.epochs - 1)
        out["select"] = competing * config.val_size * (costs.forward + costs.attacks[attack_label(config.select_attack)])
    final = test * costs.forward + sum(min(s.get("subset") or test, test) * costs.attacks[attack_label(s)]
                                       for s in config.eval_attacks)
    out["final"] = final * (2 if config.val_size else 1)  # the selected checkpoint is scored the same way
    return out


def trial_seconds(config: TrialConfig, costs: Costs) -> float:
    return sum(phases(config, costs).values())


def model_key(config: TrialConfig) -> tuple:
    return (config.model, config.width, config.ie_steps, config.inner_grad, config.norm, config.dataset,
            config.bf16, config.batch_size, config.method, tuple(map(attack_label, _specs(config))))


def plan(spec, device: str, images_per_sec: float | None = None) -> dict:
    """Per distinct model: trials, epochs, hours per trial and their phases; and the sweep's
    device-hours (trial hours times the GPUs, or else the CPUs, each trial holds)."""
    configs = spec.trial_configs()
    samples = max(spec.search.samples, len(configs)) if spec.search else len(configs)
    groups = defaultdict(list)
    for config in configs:
        groups[model_key(config)].append(config)
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(int(spec.resources.cpu), threads)))  # as many as a trial gets
    try:
        costs_by = {key: costs_at_rate(members[0], images_per_sec) if images_per_sec else calibrate(members[0], device)
                 for key, members in groups.items()}
    finally:
        torch.set_num_threads(threads)
    for key, members in groups.items():
        costs = costs_by[key]
        split = [phases(c, costs) for c in members]
        hours = [sum(p.values()) / 3600 for p in split]
        rows.append({"model": "/".join(map(str, key[:4])), "trials": len(members),
                     "epochs": sorted({c.epochs for c in members}), "images_per_sec": 1 / costs.train,
                     "hours_per_trial": sum(hours) / len(hours), "hours": sum(hours),
                     "phases": {k: sum(p[k] for p in split) / len(split) / 3600 for k in split[0]}})
    per_trial = sum(r["hours"] for r in rows) / len(configs)
    hours = per_trial * samples  # a search runs `samples` trials drawn around the grid's points
    unit, amount = ("gpu", spec.resources.gpu) if spec.resources.gpu else ("cpu", spec.resources.cpu)
    return {"rows": rows, "trials": samples, "trial_hours": hours, "device": unit,
            "device_hours": hours * amount, "wall_hours": hours / min(spec.max_concurrent, samples)}


def lines(result: dict, spec, source: str) -> list[str]:
    out = [f"sweep {spec.name}: {result['trials']} trials; costs from {source}",
           f"{'model':<44}{'trials':>7}{'epochs':>8}{'train img/s':>12}{'h/trial':>9}  phases (h/trial)"]
    out += [f"{r['model']:<44}{r['trials']:>7}{','.join(map(str, r['epochs'])):>8}{r['images_per_sec']:>12.0f}"
            f"{r['hours_per_trial']:>9.3f}  " + ", ".join(f"{k} {v:.3f}" for k, v in r["phases"].items())
            for r in result["rows"]]
    out.append(f"total: {result['trial_hours']:.3g} trial-hours = {result['device_hours']:.3g} "
               f"{result['device']}-hours ({spec.resources.gpu or spec.resources.cpu:g} {result['device']} per trial), "
               f"about {result['wall_hours']:.3g} h of wall time at {spec.max_concurrent} trials at once")
    return out
