"""Training: methods (natural, FGSM-AT, PGD-AT, TRADES), checkpoints and the trial loop."""
from .checkpoint import load_checkpoint, save_checkpoint
from .methods import METHODS
from .trainer import Trial, TrainingDiverged, load_model, make_attack, resolve_device, train

__all__ = ["METHODS", "Trial", "TrainingDiverged", "load_checkpoint", "load_model", "make_attack", "resolve_device", "save_checkpoint", "train"]
