"""TrialConfig: everything that decides one trial, typed, validated and frozen.

A YAML file sets it, ``--set key=value`` overrides it, and the resolved config is saved with every
run and inside every checkpoint. A trial's behaviour is decided by its TrialConfig alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError, check_choice

# The paper's natural-training schedules (Section 5.2): CIFAR 180 epochs, lr 0.05 divided by 5 after
# epochs 80, 120 and 160. The paper does not state the optimiser or the batch size: SGD with momentum 0.9
# and weight decay 5e-4 (TrialConfig's defaults) and batch 128 come from the authors' code
# (github.com/homles11/IE-Skips train.py:146,176). The paper sweeps (sweeps/*.yaml) spell every value
# out with its source instead of using a preset.
PRESETS: dict[str, dict[str, Any]] = {
    "cifar": {"epochs": 180, "lr": 0.05, "milestones": [80, 120, 160], "lr_factor": 0.2, "batch_size": 128},
    # MNIST: 35 epochs (Section 5.2); the paper gives no lr or milestones for it, these are ours.
    "mnist": {"epochs": 35, "lr": 0.05, "milestones": [15, 25, 30], "lr_factor": 0.2, "batch_size": 128},
}


class TrialConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    # --- model
    model: str = "preact_resnet18"  # registry name (ieskips.models.list_models())
    width: Optional[int] = Field(8, ge=1)  # initial width: 8 MNIST/digits, 16 CIFAR, 160 WRN-34-10
    ie_steps: int = Field(0, ge=0)  # K, inner gradient steps per IE-Skip; 0 = vanilla ResNet
    ie_step_size: float = Field(0.05, ge=0)  # gamma, the inner step size (paper: 0.05 or 0.1)
    inner_grad: Literal["detached", "unrolled"] = "detached"  # how backprop treats the inner steps
    norm: Literal["group", "batch"] = "group"  # GroupNorm(1, C) keeps samples independent
    stem: Literal["conv", "conv_norm_relu"] = "conv"  # conv_norm_relu: the authors' stem (sirResNet.py conv1)
    input_norm: bool = True  # normalise by the data set's mean/std inside the model; the authors feed raw [0, 1]
    # --- data
    dataset: Literal["digits", "mnist", "cifar10", "cifar100", "fake"] = "digits"  # digits ships with sklearn
    data_dir: Optional[str] = None  # where the files are (or go, with download); None: ieskips.data.default_root()
    download: bool = False  # fetch missing files; off, because most cluster nodes have no internet
    train_subset: Optional[int] = Field(None, ge=1)  # seeded subset for smoke runs; None = all
    test_subset: Optional[int] = Field(None, ge=1)  # seeded subset of the test set for the final evaluation
    eval_subset: Optional[int] = Field(256, ge=1)  # test examples attacked after each epoch (attacks are slow)
    augment: bool = True  # CIFAR: random crop (padding 4) and flip, as the authors' code and TRADES (paper: silent)
    rotate: float = Field(0.0, ge=0, le=180)  # CIFAR, with augment: RandomRotation(degrees); authors' utils.py: 15
    val_size: int = Field(0, ge=0)  # training examples held out (fixed draw) to select a checkpoint; 0: none
    # --- training method
    method: Literal["natural", "fgsm", "pgd", "trades"] = "natural"  # the paper's four regimes
    train_eps: float = Field(8 / 255, ge=0, le=1)  # L-inf radius of training attacks (MNIST FGSM: 0.15)
    train_alpha: float = Field(2 / 255, gt=0, le=1)  # PGD / TRADES step during training
    train_steps: int = Field(10, ge=1)  # PGD-k / TRADES inner steps (paper: 3 or 10)
    trades_beta: float = Field(6.0, ge=0)  # TRADES 1/lambda (Zhang et al. 2019 use 6)
    clean_loss_weight: float = Field(0.0, ge=0)  # fgsm/pgd: + w * CE(clean); authors' code: CE(adv) + CE(clean)
    warmup_epochs: int = Field(0, ge=0)  # first epochs: clean training, lr ramped per step (authors: -warm 1)
    # --- optimisation (defaults: the paper's CIFAR lr schedule; SGD momentum and weight decay from the
    # authors' code, which the paper does not state; see PRESETS)
    epochs: int = Field(180, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    milestones: tuple[int, ...] = (80, 120, 160)  # epochs after which lr is multiplied by lr_factor
    lr_factor: float = Field(0.2, gt=0, le=1)  # the paper divides by 5
    # --- evaluation
    eval_attacks: tuple[dict, ...] = (  # attack specs for ieskips.attacks.build_attack
        {"name": "fgsm", "eps": 8 / 255},
        {"name": "pgd", "eps": 8 / 255, "alpha": 1 / 255, "steps": 20},
    )
    # Per-epoch monitoring, on eval_subset test examples: None = the cheapest gradient attack of
    # eval_attacks (one FGSM on 1,000 MNIST examples costs ~1% of an epoch of 59,000; every Table 1 attack,
    # Square included, costed six epochs'). The whole eval_attacks suite runs once, at the end, on the test
    # set (and on the selected checkpoint). () monitors clean accuracy only.
    monitor_attacks: Optional[tuple[dict, ...]] = None
    # --- checkpoint selection on the held-out split (val_size > 0): reported as ``selected/...``
    select_after: int = Field(0, ge=0)  # epochs after this one compete (authors: after 125 of 150); the last always
    select_attack: dict = {"name": "pgd", "eps": 8 / 255, "alpha": 2 / 255, "steps": 10}  # scores the split
    # --- stability diagnostics (ieskips.diagnostics): is the paper's mechanism why a model is robust?
    diagnostics: bool = False  # log Props. 2/3 fractions, residuals, stage gains each epoch (costly on tiny sets)
    diagnostics_examples: int = Field(64, ge=1)  # test examples they use (a fixed draw); cost grows linearly
    # --- run
    seed: int = 0  # seeds torch, the data order and the attacks' random starts
    device: str = "auto"  # "auto" = the GPU when one is visible (Ray sets which), else CPU
    # bf16 autocast for training (GPU or CPU); the IE inner steps always run in fp32 (their residual
    # x - x_prev - f(x) cancels: in bf16 the input gradient drifts), so the input gradient keeps a cosine
    # >= 0.99 with the fp32 one in both inner_grad modes (tests/models/test_precision.py). Off: exact fp32.
    bf16: bool = False
    # memory format of the model's weights: on this CPU 1.19x the training step of Table 1's models
    # (benchmarks/cpu_paths.py, which --local follows); on a GPU see benchmarks/gpu_throughput.py
    channels_last: bool = False
    checkpoint_every: int = Field(1, ge=1)  # epochs between checkpoints
    num_workers: int = Field(0, ge=0)  # DataLoader processes (data_on_device: false); 0 keeps runs reproducible
    data_on_device: bool = True  # data set on the trial's device as stored (uint8), crop/flip there; false: DataLoader
    paper_table: Optional[str] = None  # which table/figure of the paper the run belongs to (a tag)

    @model_validator(mode="after")
    def _names_exist(self):
        from .attacks import build_attack, list_attacks
        from .models import list_models

        check_choice("model", self.model, list_models())
        for spec in (*self.eval_attacks, *(self.monitor_attacks or ())):
            check_choice("attack", spec.get("name"), list_attacks())
            if spec["name"] == "transfer":
                build_attack(spec.get("attack", {"name": "fgsm"}))
                _check_source(spec.get("source"))
            else:
                build_attack(spec)  # validates keys and ranges now, not after an epoch of training
        check_choice("select_attack", self.select_attack.get("name"), sorted(set(list_attacks()) - {"transfer"}))
        build_attack(self.select_attack)
        if self.clean_loss_weight and self.method not in ("fgsm", "pgd"):
            raise ConfigError(f"clean_loss_weight adds CE on clean examples to fgsm/pgd training; method "
                              f"{self.method!r} has its own clean term (trades) or none to add to: set it to 0")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        return self

    @classmethod
    def from_dict(cls, values: dict) -> "TrialConfig":
        """Validate ``values`` (a ``preset`` key fills in that schedule first); one-line ConfigError."""
        values = dict(values)
        preset = values.pop("preset", None)
        if preset is not None:
            check_choice("preset", preset, PRESETS)
            values = {**PRESETS[preset], **values}
        try:
            return cls(**values)
        except ValidationError as err:
            first = err.errors()[0]
            if not first["loc"] and "error" in first.get("ctx", {}):  # raised by _names_exist
                raise ConfigError(f"trial config: {first['ctx']['error']}") from None
            where = ".".join(str(p) for p in first["loc"]) or "config"
            extra = f"; valid keys: {', '.join(cls.model_fields)}" if first["type"] == "extra_forbidden" else ""
            raise ConfigError(f"trial config key {where!r}: {first['msg']} (got {first.get('input')!r}){extra}") from None

    def monitors(self) -> tuple[dict, ...]:
        """The attack specs of the per-epoch monitoring (see ``monitor_attacks``)."""
        if self.monitor_attacks is not None:
            return self.monitor_attacks
        from .attacks.cost import cheapest_gradient_attack

        cheapest = cheapest_gradient_attack(self.eval_attacks)
        return () if cheapest is None else (cheapest,)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


SOURCE_KEYS = {"sweep", "match", "seed", "experiment"}


def _check_source(source) -> None:
    """A transfer source: 'explicit', a checkpoint path, or another sweep's run by sweep and match."""
    if isinstance(source, str) and source:
        return
    if not isinstance(source, dict):
        raise ConfigError("a transfer attack needs 'source': 'explicit', a checkpoint path, or "
                          "{sweep: NAME, match: {key: value}, seed: same}")
    unknown = sorted(set(source) - SOURCE_KEYS)
    if unknown or not isinstance(source.get("sweep"), str) or not isinstance(source.get("match", {}), dict):
        raise ConfigError(f"transfer source {source}: give 'sweep' (a name), optional 'match' (config values), "
                          f"'seed' (a number or 'same') and 'experiment'; unknown keys {unknown}")
    seed = source.get("seed", "same")
    if seed != "same" and not isinstance(seed, int):
        raise ConfigError(f"transfer source seed must be a number or 'same', got {seed!r}")


def parse_overrides(pairs) -> dict:
    """``["ie_steps=2", "lr=0.1"]`` -> ``{"ie_steps": 2, "lr": 0.1}``; values are read as YAML scalars."""
    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def load_config(path: str | Path | None, overrides=()) -> TrialConfig:
    """A YAML file (optional) plus ``key=value`` overrides -> a validated TrialConfig."""
    values = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return TrialConfig.from_dict({**values, **parse_overrides(overrides)})
