"""Training: methods (natural, FGSM-AT, PGD-AT, TRADES), checkpoints and the trial loop."""
from .checkpoint import load_checkpoint, save_checkpoint
from .methods import METHODS
from .trainer import (Trial, TrainingDiverged, cap_gpu_memory, load_model, make_attack, model_for, resolve_device, source_key,
                      train)

__all__ = ["METHODS", "Trial", "TrainingDiverged", "cap_gpu_memory", "load_checkpoint", "load_model", "make_attack", "model_for",
           "resolve_device", "save_checkpoint", "source_key", "train"]
