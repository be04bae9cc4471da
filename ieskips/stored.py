"""A stored model: its resolved config and weights in one file that loads with
``torch.load(weights_only=True)``, and its evaluation on its own test examples.

The file has the keys of a training checkpoint that a model needs (``config``, ``model``), so a
checkpoint, a stored model and ``ieskips evaluate --checkpoint`` are interchangeable. Evaluating a
stored model goes through ``ieskips.evaluation.evaluate_examples``, the path of a trial's final
evaluation, on the same test examples (the config's ``test_subset``, drawn with the same fixed seed).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .attacks import attack_label
from .config import TrialConfig
from .data import make_loader, scored_examples, subset
from .diagnostics import diagnose
from .evaluation import ExampleResults, evaluate_examples
from .training import make_attack, resolve_device, save_checkpoint
from .training.trainer import model_from_state
from .training.checkpoint import read_model_file

MODEL_FILE = "weights.pt"


def model_state(config: TrialConfig, model: torch.nn.Module) -> dict:
    return {"config": config.to_dict(), "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def save_model(config: TrialConfig, model: torch.nn.Module, path: str | Path) -> Path:
    return save_checkpoint(model_state(config, model), path)


def read_model(path: str | Path) -> dict:
    """The ``config`` and ``model`` of a stored model or checkpoint; ConfigError when the file is not one."""
    state = read_model_file(path)
    build(state)  # the weights fit the model the config describes
    return state


def build(state: dict, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The stored model, in eval mode on ``device``."""
    return model_from_state(state, device)


def evaluate_stored(state: dict, specs, *, device: str | None = None, oracles: dict | None = None,
                    subset: int | None = None, progress: bool | None = False) -> ExampleResults:
    """Attack a stored model with the attack ``specs`` on its test examples (``subset``: a smaller
    draw of them). ``oracles``: local files for transfer sources that name a sweep's run."""
    config, model, where, test, loader = _prepared(state, device, subset)
    attacks = {attack_label(spec): make_attack(spec, model, where, oracles) for spec in specs}
    return evaluate_examples(model, loader, attacks, where, identity=test.identity, indices=test.indices,
                             progress=progress)


def diagnose_stored(state: dict, spec: dict | None, *, device: str | None = None,
                    oracles: dict | None = None) -> dict[str, float]:
    """The stability diagnostics of a stored model on its config's ``diagnostics_examples`` test
    examples (the draw a trial with ``diagnostics: true`` uses), stage gains along ``spec``'s attack
    (the strongest the run has faced; None: no stage gains)."""
    config, model, where, test, _ = _prepared(state, device, None)
    loader = make_loader(subset(test.dataset, config.diagnostics_examples, 0), config.batch_size, shuffle=False,
                         seed=config.seed, device=where if config.data_on_device else None)
    attacks = {"x": make_attack(spec, model, where, oracles)} if spec else {}
    return diagnose(model, loader, attacks, {}, device=where, max_examples=None)


def _prepared(state: dict, device: str | None, size: int | None):
    config = TrialConfig.from_dict({**state["config"], **({"test_subset": size} if size else {})})
    where = resolve_device(device or config.device)
    model = build(state, where)
    test = scored_examples(config.dataset, config.test_subset, root=config.data_dir, download=config.download)
    loader = make_loader(test.dataset, config.batch_size, shuffle=False, seed=config.seed,
                         device=where if config.data_on_device else None)
    torch.manual_seed(config.seed)  # the attacks' random starts, repeatable
    return config, model, where, test, loader
