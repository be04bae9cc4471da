"""Model registry: ``@register_model`` factories, ``build_model(name, ...)``, ``list_models()``."""
from __future__ import annotations

import warnings
from typing import Callable

from torch import nn

from ..errors import check_choice

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    name = factory.__name__
    if name in _MODELS:
        warnings.warn(f"model {name!r} registered twice; the later factory wins", stacklevel=2)
    _MODELS[name] = factory
    return factory


def list_models() -> list[str]:
    return sorted(_MODELS)


def build_model(name: str, *, num_classes: int = 10, in_channels: int = 3, width: int | None = None,
                ie_steps: int = 0, ie_step_size: float = 0.05, inner_grad: str = "detached",
                norm: str = "group", **kwargs) -> nn.Module:
    """Build a registered model. ``ie_steps=0`` is the vanilla network with identical parameters.

    ``width`` is the initial width (8 for MNIST, 16 for CIFAR, 160 for WRN-34-10); ``None`` takes the
    model's default. Inputs are in [0, 1]; the model normalises them (``input_norm=False``: it does not,
    as the authors' code). ``stem="conv_norm_relu"`` gives the authors' stem (see ``ieskips.models.resnet``).
    """
    check_choice("model", name, _MODELS)
    if width is not None:
        kwargs["width"] = width
    return _MODELS[name](num_classes=num_classes, in_channels=in_channels, ie_steps=ie_steps,
                         ie_step_size=ie_step_size, inner_grad=inner_grad, norm=norm, **kwargs)
