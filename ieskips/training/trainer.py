"""One trial: TrialConfig -> trained model, per-epoch metrics through a callback, checkpoints.

A plain function of its config, so that it runs alone (``ieskips train``) and inside a Ray Tune
trial alike. Resuming from a checkpoint continues exactly: model, optimizer, scheduler, the global
RNG and the data order's RNG are all restored, so on CPU a resumed run ends with the same metrics.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from tqdm.auto import tqdm

from ..attacks import attack_label, build_attack
from ..config import TrialConfig
from ..data import INFO, ScoredExamples, make_loader, scored_examples, subset
from ..device_loader import DeviceLoader
from ..diagnostics import diagnose
from ..evaluation import ExampleResults, evaluate, evaluate_examples
from ..errors import ConfigError
from ..models import ExplicitEuler, build_model
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, read_model_file, save_checkpoint
from .methods import LinearWarmup, method_for
from .selection import Selection, training_sets

EpochCallback = Callable[[int, dict, Optional[Path]], None]
Loader = Union[torch.utils.data.DataLoader, DeviceLoader]  # config.data_on_device picks
FINAL_EVAL_TIME = "final_eval_time"  # seconds of the final evaluation, read by orchestration.sweep.budget
TIMINGS = ("epoch_time", "images_per_sec", FINAL_EVAL_TIME)  # metrics of the machine: equal runs differ in them


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite (a large ie_step_size or lr can do this)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Trial:
    """Everything a running trial holds; built from the config alone."""

    config: TrialConfig
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: Loader
    eval_loader: Loader
    test_loader: Loader
    test: ScoredExamples
    attacks: dict  # eval_attacks by label: the final evaluation (and the selected checkpoint's)
    monitors: dict  # the per-epoch monitoring's attacks by label (config.monitors())
    epoch: int = 0
    results: ExampleResults | None = None  # the final evaluation's per-example results
    diagnostics_loader: Loader | None = None  # config.diagnostics: its test examples
    selection: Selection | None = None  # config.val_size: the best checkpoint on the held-out split
    selected_results: ExampleResults | None = None  # the selected checkpoint's per-example results
    # Once the last epoch is trained: its metrics and the final evaluation's finished passes (checkpointed).
    final_stage: dict | None = None

    @classmethod
    def build(cls, config: TrialConfig, oracles: dict | None = None) -> "Trial":
        """``oracles``: local model files for transfer sources that name another sweep's run
        (resolved by the orchestration layer; see ``make_attack``)."""
        torch.manual_seed(config.seed)
        device = resolve_device(config.device)
        data = dict(root=config.data_dir, download=config.download)
        # On the device the loader augments; otherwise the data set's own transform does.
        augment = config.augment and not config.data_on_device
        train_set, val_set = training_sets(config, augment, **data)  # val_set: None unless config.val_size
        test = scored_examples(config.dataset, config.test_subset, **data)
        eval_set = subset(test.dataset, config.eval_subset, 0)
        model = model_for(config).to(device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.milestones), config.lr_factor)
        on = device if config.data_on_device else None
        loader = lambda ds, shuffle, augment=False: make_loader(  # noqa: E731
            ds, config.batch_size, shuffle=shuffle, seed=config.seed, num_workers=config.num_workers, device=on,
            augment=augment, rotate=config.rotate if augment else 0.0)
        attacks = {attack_label(spec): make_attack(spec, model, device, oracles) for spec in config.eval_attacks}
        monitors = {attack_label(spec): attacks.get(attack_label(spec)) or make_attack(spec, model, device, oracles)
                    for spec in config.monitors()}
        diagnosed = loader(subset(test.dataset, config.diagnostics_examples, 0), False) if config.diagnostics else None
        crops = config.augment and config.dataset.startswith("cifar")  # as the torchvision path (data.py)
        selection = Selection.build(config, loader(val_set, False), device) if val_set is not None else None
        return cls(config, device, model, optimizer, scheduler, loader(train_set, True, crops), loader(eval_set, False),
                   loader(test.dataset, False), test, attacks, monitors, diagnostics_loader=diagnosed,
                   selection=selection)

    def state(self) -> dict:
        state = {"epoch": self.epoch, "config": self.config.to_dict(), "model": self.model.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "rng": torch.get_rng_state(), "data_rng": self.train_loader.generator.get_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if self.selection is not None:
            state["selection"] = self.selection.state_dict()
        if self.final_stage is not None:
            state["final_stage"] = self.final_stage
        return state

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        self.train_loader.generator.set_state(state["data_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        if self.selection is not None and "selection" in state:
            self.selection.load_state_dict(state["selection"])
        self.epoch = int(state["epoch"])
        self.final_stage = state.get("final_stage")

    def train_epoch(self, show: bool) -> dict:
        config, model = self.config, self.model
        step = method_for(config, self.epoch)  # natural during the warm-up epochs
        warmup = LinearWarmup(self.optimizer, config.warmup_epochs, self.epoch, len(self.train_loader))
        autocast = torch.autocast(self.device.type, torch.bfloat16, enabled=config.bf16)  # CPU too: same policy
        model.train()
        loss_sum, correct, seen, start = 0.0, 0, 0, time.perf_counter()
        for images, labels in tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}", disable=not show, leave=False):
            images, labels = images.to(self.device), labels.to(self.device)
            warmup.next_batch()
            with autocast:
                loss, logits = step(model, images, labels, config)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"diverged at epoch {self.epoch + 1}: training loss is {loss.item()} "
                                       f"(ie_step_size={config.ie_step_size}, lr={config.lr}; try smaller values)")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.item() * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
        seconds = time.perf_counter() - start
        warmup.finish()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.epoch += 1
        return {"train_loss": loss_sum / seen, "train_acc": correct / seen, "lr": lr, "epoch_time": seconds,
                "images_per_sec": seen / seconds}

    def final_evaluation(self, show: bool, save: Callable[[], Path] | None = None) -> dict:
        """The last epoch's model, and with a selection the selected checkpoint, scored on the test examples
        with ``attacks``: the ``final/...`` and ``selected/...`` metrics; per-example results on ``results``
        and ``selected_results``. Each finished pass is kept in ``final_stage`` and saved (``save``), so a
        trial resumed from that checkpoint makes only the passes still missing, with the same results; the
        passes' seconds add up in ``final_stage["seconds"]``."""
        stage = self.final_stage = self.final_stage or {"metrics": {}, "final": {}, "selected": {}}
        began, before = time.perf_counter(), stage.get("seconds", 0.0)  # earlier attempts' passes

        def keep(part):
            def on_pass(masks):
                stage[part], stage["seconds"] = masks, before + time.perf_counter() - began
                if save is not None:
                    save()
            return on_pass

        self.results = evaluate_examples(self.model, self.test_loader, self.attacks, self.device,
                                         identity=self.test.identity, indices=self.test.indices, progress=show,
                                         seed=self.config.seed, done=stage["final"], on_pass=keep("final"))
        final = {f"final/{k}": v for k, v in self.results.accuracies().items()}
        final.update({f"final/{k}": v for k, v in stage["metrics"].items() if k.startswith("diag/")})
        if self.selection is not None:  # the selected checkpoint on the same test examples: selected/...
            self.selected_results, selected = self.selection.evaluate_selected(self, show, stage["selected"],
                                                                               keep("selected"))
            final.update(selected)
        return final


def cap_gpu_memory(share: float) -> bool:
    """Hold this process to ``share`` of its GPU's memory: Ray's fractional GPUs are logical only, so four
    0.25-GPU trials on one device must each keep to a quarter themselves. False where nothing was capped."""
    if not 0 < share < 1 or not torch.cuda.is_available():
        return False
    torch.cuda.set_per_process_memory_fraction(share, torch.cuda.current_device())
    return True


def model_for(config: TrialConfig) -> torch.nn.Module:
    """The config's model, shaped for its data set (classes, channels)."""
    info = INFO[config.dataset]
    return build_model(config.model, num_classes=info.num_classes, in_channels=info.in_channels,
                       width=config.width, ie_steps=config.ie_steps, ie_step_size=config.ie_step_size,
                       inner_grad=config.inner_grad, norm=config.norm, stem=config.stem, input_norm=config.input_norm)


def load_model(path: str | Path, device: torch.device | str) -> torch.nn.Module:
    """A trained model from a checkpoint or stored-model file: built from the config saved inside it."""
    return model_from_state(read_model_file(path), device)


def model_from_state(state: dict, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The model a ``{"config", "model"}`` dict describes, in eval mode on ``device``."""
    model = model_for(TrialConfig.from_dict(state["config"]))
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"stored weights do not fit the stored config: {str(err).splitlines()[0][:160]}") from None
    return model.to(device).eval()


def make_attack(spec: dict, model: torch.nn.Module, device: torch.device, oracles: dict | None = None):
    """A transfer attack's ``source`` is ``explicit`` (this model's weights, run as a vanilla ResNet),
    a checkpoint path (an oracle trained elsewhere), or a mapping naming another sweep's run
    (``{sweep: table3, match: {...}, seed: same}``), which ``oracles`` maps to a local model file."""
    if spec["name"] != "transfer":
        return build_attack(spec)
    source = spec["source"]
    if isinstance(source, dict):
        path = (oracles or {}).get(source_key(source))
        if path is None:
            raise ConfigError(f"transfer source {source} names a sweep's run: only `ieskips sweep run` and "
                              "`ieskips evaluate --run/--sweep` resolve it (or give a checkpoint path)")
        return build_attack(spec, source_model=load_model(path, device))
    oracle = ExplicitEuler(model) if source == "explicit" else load_model(source, device)
    return build_attack(spec, source_model=oracle)


def source_key(source: dict) -> str:
    """A transfer source mapping as a stable string, the key of ``oracles``."""
    return json.dumps(source, sort_keys=True)


def train(config: TrialConfig, *, on_epoch: EpochCallback | None = None, checkpoint_dir: str | Path | None = None,
          resume_from: str | Path | None = None, progress: bool | None = None, trial: Trial | None = None,
          on_checkpoint: Callable[[Path], None] | None = None) -> dict:
    """Train one trial; returns the final metrics (``final/...``) on the whole (or ``test_subset``) test set,
    and with ``val_size`` those of the checkpoint selected on the held-out split (``selected/...``,
    per-example results on ``trial.selected_results``; see ``selection.py``).

    After each epoch ``on_epoch(epoch, metrics, checkpoint_path_or_None)`` is called with train loss
    and accuracy, natural and robust accuracy on ``eval_subset`` test examples, lr and speed; the
    last epoch's metrics also hold the final ones, so a caller can report everything at once; the final
    evaluation's per-example results are then on ``trial.results`` (pass ``trial`` to keep a handle).
    ``trial`` may be built beforehand (``Trial.build(config)``) so that a caller fails on missing data
    before it opens a run anywhere. With ``checkpoint_dir`` a checkpoint is written every
    ``checkpoint_every`` epochs, after the last epoch and after each pass of the final evaluation
    (``Trial.final_evaluation``), each then given to ``on_checkpoint``.
    """
    show = sys.stderr.isatty() if progress is None else progress
    trial = trial or Trial.build(config)
    if resume_from is not None:
        trial.load_state(load_checkpoint(resume_from))

    def save() -> Path | None:
        if checkpoint_dir is None:
            return None
        path = save_checkpoint(trial.state(), Path(checkpoint_dir) / CHECKPOINT_NAME)
        if on_checkpoint is not None:
            on_checkpoint(path)
        return path

    while trial.epoch < config.epochs:
        metrics = _epoch(trial, show)
        last = trial.epoch == config.epochs  # its report waits for the final evaluation and travels with it
        if last:
            trial.final_stage = {"metrics": metrics, "final": {}, "selected": {}}
        path = save() if last or trial.epoch % config.checkpoint_every == 0 else None
        if on_epoch is not None and not last:
            on_epoch(trial.epoch, metrics, path)
    final = trial.final_evaluation(show, save)
    path = save()  # the finished state, even where every pass was made before a resume
    if on_epoch is not None:  # with the seconds the final evaluation took (sweep status counts them)
        on_epoch(config.epochs, {**trial.final_stage["metrics"], **final,
                                 FINAL_EVAL_TIME: trial.final_stage.get("seconds", 0.0)}, path)
    return final


def _epoch(trial: Trial, show: bool) -> dict:
    """One epoch trained, then monitored on ``eval_subset`` test examples, a selection candidate and diagnosed."""
    config = trial.config
    metrics = trial.train_epoch(show)
    metrics.update(evaluate(trial.model, trial.eval_loader, trial.monitors, trial.device, progress=False))
    if trial.selection is not None:
        metrics.update(trial.selection.observe(trial.model, trial.epoch))
    if config.diagnostics:
        metrics.update(diagnose(trial.model, trial.diagnostics_loader, trial.monitors, metrics, device=trial.device,
                                max_examples=None))
    return metrics
