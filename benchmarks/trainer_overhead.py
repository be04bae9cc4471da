"""Trainer overhead: one training epoch through ``Trial.train_epoch`` over the same epoch as a bare
loop (same model, optimizer, data, loss), timed round-robin in one run (issue 4; target <= 1.05).

    python benchmarks/trainer_overhead.py [--rounds 11] [--dataset fake] [--ie-steps 1]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch.nn.functional as F

from ieskips.config import TrialConfig
from ieskips.training import Trial
from ie_overhead import time_round_robin  # benchmarks/ is run as a script directory


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--dataset", default="fake")
    parser.add_argument("--ie-steps", type=int, default=1)
    args = parser.parse_args()
    config = TrialConfig.from_dict({"dataset": args.dataset, "width": 16, "ie_steps": args.ie_steps,
                                    "epochs": 1000, "milestones": [], "eval_attacks": []})
    trial = Trial.build(config)
    bare = Trial.build(config)  # its own copy of model, optimizer and loader

    def bare_epoch():
        bare.model.train()
        for images, labels in bare.train_loader:
            loss = F.cross_entropy(bare.model(images.to(bare.device)), labels.to(bare.device))
            bare.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            bare.optimizer.step()

    times = time_round_robin({"trainer": lambda: trial.train_epoch(False), "bare": bare_epoch},
                             trial.device, args.rounds)
    ratio = times["trainer"] / times["bare"]
    images = len(trial.train_loader.dataset)
    print(f"one epoch, {images} images of {args.dataset}, PreAct ResNet-18 width 16, K={args.ie_steps}, "
          f"{trial.device}: trainer {times['trainer']:.3f} s, bare loop {times['bare']:.3f} s, "
          f"ratio {ratio:.3f} (target <= 1.05)")
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    (out / "trainer_overhead.json").write_text(json.dumps({"seconds": times, "ratio": ratio, "images": images}))


if __name__ == "__main__":
    main()
