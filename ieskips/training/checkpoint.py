"""Checkpoints: written atomically (temp file + rename), read with ``weights_only=True``."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from ..errors import ConfigError

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` so that a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict:
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def read_model_file(path: str | Path) -> dict:
    """A checkpoint or stored model's dict (it must hold ``config`` and ``model``). Anything else, garbage,
    a truncated file or a pickle that would run code (``weights_only`` never runs it), is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist")
    try:
        state = load_checkpoint(path)
    except Exception as err:  # noqa: BLE001  (torch raises many types for a file that is not its format)
        raise ConfigError(f"{path} is not a readable ieskips model file (torch.load with weights_only: "
                          f"{type(err).__name__})") from None
    if not isinstance(state, dict) or not {"config", "model"} <= set(state):
        raise ConfigError(f"{path} is not an ieskips model file (it needs the keys 'config' and 'model')")
    return state
