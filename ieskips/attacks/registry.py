"""Attack registry: ``@register_attack(name)`` classes and ``build_attack(spec)``."""
from __future__ import annotations

import inspect
import warnings

from ..errors import ConfigError, check_choice
from .labels import adaptive_label

_ATTACKS: dict[str, type] = {}
ADAPTIVE = ("pgd_solver", "pgd_ift", "pgd_best", "feature", "spsa")  # labelled by labels.py


def register_attack(name: str):
    def decorate(cls):
        if name in _ATTACKS:
            warnings.warn(f"attack {name!r} registered twice; the later class wins", stacklevel=2)
        _ATTACKS[name] = cls
        return cls
    return decorate


def list_attacks() -> list[str]:
    return sorted(_ATTACKS)


def build_attack(spec: dict, **objects):
    """Build an attack from a plain dict such as ``{"name": "pgd", "eps": 8/255, "steps": 20}``.

    ``objects`` supplies what a dict cannot hold (``source_model`` for ``transfer``, whose inner attack
    is itself a spec under ``"attack"``). A spec's ``subset`` (a number of examples) is kept on the attack:
    an evaluation runs it on that fixed draw of its examples only (``ieskips.evaluation.fixed_draw``).
    """
    attack = _build(spec, **objects)
    subset = spec.get("subset")
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 1):
        raise ConfigError(f"attack {spec.get('name')!r}: subset must be a number of examples >= 1, got {subset!r}")
    attack.subset = subset
    return attack


def _build(spec: dict, **objects):
    spec = {k: v for k, v in spec.items() if k not in ("label", "source", "subset")}  # naming, loading, evaluation
    name = spec.pop("name", None)
    check_choice("attack", name, _ATTACKS)
    cls = _ATTACKS[name]
    if name == "transfer":
        if "source_model" not in objects:
            raise ConfigError("a transfer attack needs a source model: set its 'source' to a checkpoint path "
                              "or to 'explicit' (the model's own weights run as a vanilla ResNet)")
        return cls(objects["source_model"], build_attack(spec.pop("attack", {"name": "fgsm"})))
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} for attack {name!r}; valid keys: {', '.join(allowed)}")
    return cls(**spec)


def attack_label(spec: dict) -> str:
    """A short metric name for an attack spec: ``fgsm``, ``pgd20``, ``pgd20_cw_unrolled``, ``cw_l2``,
    ``transfer_fgsm``; a spec's own ``label`` wins."""
    if "label" in spec:
        return spec["label"]
    if spec["name"] in ADAPTIVE:  # pgd_solver, pgd_ift, pgd_best, feature, spsa: see labels.py
        return adaptive_label(_ATTACKS[spec["name"]], spec)
    if spec["name"] == "transfer":
        return "transfer_" + attack_label(spec.get("attack", {"name": "fgsm"}))
    label = spec["name"] + (str(spec["steps"]) if "steps" in spec and spec["name"] == "pgd" else "")
    if spec.get("loss", "ce") != "ce":
        label += f"_{spec['loss']}"
    if spec.get("inner_grad"):
        label += f"_{spec['inner_grad']}"
    return label
