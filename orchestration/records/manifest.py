"""A trial's reproducibility manifest: code version, packages, seed, config, host and device."""
from __future__ import annotations

import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("ieskips", "torch", "torchvision", "numpy", "ray", "mlflow", "optuna", "pandas", "pydantic")
SOURCE = Path(__file__).resolve().parents[2]  # the repository


def git_state(path: Path = SOURCE) -> dict:
    def git(*args):
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": "unknown", "dirty": None}
        return {"commit": head.stdout.strip(), "dirty": bool(git("status", "--porcelain").stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": "unknown", "dirty": None}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def manifest(config: dict, device: torch.device, extra: dict | None = None) -> dict:
    return {"git": git_state(), "packages": versions(), "seed": config.get("seed"), "config": config,
            "host": socket.gethostname(), "device": str(device), "device_name": device_name(device),
            "cuda_visible_devices": torch.cuda.device_count(), **(extra or {})}
